"""Moves one job's bytes: its files in order, each into its hidden temporary file.

The runner owns the crash-consistency rule: the offset it hands the store is
always one the transport has reported fsync'ed, and on restart the temporary
file is cut back to that offset before the range request continues it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable

from yarl import URL

from ..enums import LENGTH_TO_EOF, SIZE_UNKNOWN, ErrorContext, JobState
from ..errors import BitsError, ErrorCode, TransferError
from ..transport.base import DownloadSpec, RemoteValidator, Throttle, VersionChanged
from ..transport.syncbatch import SyncBatch
from ..transport.router import Transport
from ..model.job import Job
from ..model.jobfile import JobFile
from ..model.ranges import first_gap, merged
from ..transport.tls import TlsSettings
from .attempt import run_attempt
from .certificates import tls_settings
from .digests import Verification
from .pieces import from_first_bad, keep_good_pieces
from .progress import SavedProgress
from .sinks import FileSink, PlacedSink, RangesSink, keep_remote_time
from .access import JobAccess
from .proxy import proxy_route
from .service import JobService

log = logging.getLogger("openbits.runner")


#: Files started side by side within one job, when they are small (per-file latency dominates).
FILE_WINDOW = 64
#: A file at most this large lets the next file of the job start beside it.
SMALL_FILE = 256 * 1024
#: Fresh plain-http files of one origin go as one batch once a file of the job proved small, over this many
#: connections (curl -Z --parallel-max 16, aria2c -j16). A task per file cost the loop ~300 us a file
#: (10,000 x 4 KiB: ~3,200 files/s); a batch opens, fetches, syncs and completes its files together
#: (~5,200-5,750 files/s). Measured: 16, 32 or 48 connections, batches of 64 to 512: the same within noise.
BATCH_FILES = 128
BATCH_LANES = 16
#: Under a bandwidth throttle a batch is paid for before the next may start: smaller, so bursts stay small.
THROTTLED_BATCH_FILES = 8


class DownloadRunner:
    """Runs the transfer of one job until it is TRANSFERRED, failed, or cancelled by the scheduler.

    Files go in order. A large file (or one of unknown size) runs alone; while the files in
    flight are small, up to FILE_WINDOW of them run at once, because then the cost is per
    file (request, create, fsync) rather than per byte. Files are marked completed in order.
    """

    def __init__(self, service: JobService, transport: Transport, job: Job, throttle: Throttle | None) -> None:
        self._service, self._transport, self._job, self._throttle = service, transport, job, throttle
        self._in_flight: dict[int, JobFile] = {}
        self._finished: set[int] = set()
        #: files before this index are all completed (so completing in order is not a scan per file)
        self._next = 0
        self._completing: asyncio.Future[None] | None = None
        self._access = JobAccess(service, job)
        self._syncs = SyncBatch(transport.pools.sync)
        self._changed = asyncio.Event()
        #: files in flight whose response has not told their size yet
        self._unsized: set[int] = set()
        #: a file of this run proved small: files of unknown size may start beside others
        self._small_seen = False
        #: the job's custom headers as the transport takes them
        self._headers = job.request_headers()
        #: batch tasks running, and how many files a batch takes
        self._batches = 0
        self._batch_files = BATCH_FILES if throttle is None else THROTTLED_BATCH_FILES
        #: security flags, CA file and client certificate, read as the network identity when the run starts
        self._tls = TlsSettings()

    async def run(self) -> None:
        await run_attempt(self._service, self._job, self._transfer_files)

    async def _transfer_files(self) -> None:
        """Start files in order; after a failure start no more, let earlier ones finish, report the first."""
        job = self._job
        if job.state == JobState.QUEUED:
            job.state = JobState.CONNECTING
        self._tls = await tls_settings(self._service, job)
        failures: dict[int, BitsError] = {}
        files, index = job.files, 0
        async with asyncio.TaskGroup() as group:
            while index < len(files):
                if files[index].completed:
                    index += 1
                    continue
                while self._in_flight and not self._room_beside() and not failures:
                    self._changed.clear()
                    await self._changed.wait()
                if failures:
                    break
                batch = self._batch_from(index)
                for i in [i for i, _ in batch] or [index]:
                    self._in_flight[i] = files[i]
                    self._unsized.add(i)
                if batch:
                    self._batches += 1
                    group.create_task(self._batch_noting_failure(batch, failures))
                    index = batch[-1][0] + 1
                else:
                    group.create_task(self._transfer_noting_failure(index, files[index], failures))
                    index += 1
        if failures:
            raise failures[min(failures)]

    def _batch_from(self, index: int) -> list[tuple[int, URL]]:
        """The files from `index` on that go as one batch: fresh, plain http, one origin; once a file of
        this run proved small (a job's files tend to be alike). Fewer than two: none."""
        files, job = self._job.files, self._job
        first = files[index]
        if (not self._small_seen or first.durable_offset or first.remote_url[:5].lower() != "http:" or job.own_method
                or first.ranges is not None or first.checksums):
            return []
        try:
            proxy = proxy_route(job, self._access.preconfigured, first.remote_url)
        except BitsError:
            return []  # the per-file way reports it
        url = self._transport.batchable(first.remote_url, self._headers, None if proxy is None else str(proxy.url))
        if url is None:
            return []
        batch, origin = [(index, url)], (url.raw_host, url.port)
        for i in range(index + 1, min(len(files), index + self._batch_files)):
            f = files[i]
            if f.completed or f.durable_offset or f.ranges is not None or f.checksums:
                break
            url = self._transport.batchable(f.remote_url, self._headers, None)
            if url is None or (url.raw_host, url.port) != origin:
                break
            batch.append((i, url))
        return batch if len(batch) > 1 else []

    async def _batch_noting_failure(self, batch: list[tuple[int, URL]], failures: dict[int, BitsError]) -> None:
        try:
            await self._transfer_batch(batch, failures)
        except BitsError as exc:
            first = self._job.files[batch[0][0]]
            failures[batch[0][0]] = exc.of_file(batch[0][0], first.remote_url, first.local_path)
            self._out_of_flight(index for index, _ in batch)
        finally:
            self._batches -= 1

    async def _transfer_batch(self, batch: list[tuple[int, URL]], failures: dict[int, BitsError]) -> None:
        """Open, fetch, sync and complete a batch together; a file the batch could not fetch (not a small
        200, a broken connection, ...) then goes the per-file way, which reports its error."""
        job, files = self._job, self._job.files
        local = self._service.files_of(job)
        opened = await local.open_temps([files[i].temp_path for i, _ in batch])
        fds = [fd for fd in opened if isinstance(fd, int)]
        fetched: list[int] = []
        try:
            ready = [(i, url, fd) for (i, url), fd in zip(batch, opened) if isinstance(fd, int)]
            for i, _, _ in ready:
                files[i].restart()
            if job.state != JobState.TRANSFERRING:
                job.state = JobState.TRANSFERRING
                await self._service.commit(job)
            answers = await self._transport.fetch_small([(url, fd) for _, url, fd in ready], self._headers,
                                                        BATCH_LANES, self._throttle) if ready else []
            written, told = [], self._service.events.hears_exchanges()
            for (i, _, fd), answer in zip(ready, answers):
                if answer is not None:
                    validator, f = answer.validator, files[i]
                    if told:
                        SavedProgress(self._service, job, i).exchanged(*answer.exchange(), answer.headers)
                    f.validator, f.bytes_total = validator.to_dict(), validator.size
                    f.bytes_transferred, f.response_headers = validator.size, validator.headers
                    keep_remote_time(fd, validator)
                    fetched.append(i)
                    written.append(fd)
            if fetched:
                job.last_progress_time = time.time()
                if self._throttle is not None:  # paid for before the next batch may start
                    await self._throttle.consume(sum(files[i].bytes_total for i in fetched))
                self._out_of_flight(fetched)
                await self._syncs.sync(written, files[fetched[0]].local_path)
        finally:
            for fd in fds:
                os.close(fd)
        for i in fetched:
            files[i].durable_offset = files[i].bytes_total
        self._finished.update(fetched)
        for i, _ in batch:
            if i in self._in_flight:  # not fetched: the per-file way, one at a time (the rare case)
                if failures:
                    self._out_of_flight((i,))
                else:
                    await self._transfer_noting_failure(i, files[i], failures)
        await self._complete_in_order()

    async def _transfer_noting_failure(self, index: int, f: JobFile, failures: dict[int, BitsError]) -> None:
        tried = {f.remote_url}
        try:
            while True:
                try:
                    await self._transfer(index, f)
                    return
                except BitsError as exc:
                    mirror = f.next_mirror(tried) if _mirrors_fault(exc) else None
                    if mirror is None:
                        raise
                    log.info("job %s file %d: %s failed (%s: %s); trying mirror %s", self._job.id, index,
                             f.remote_url, exc.name, exc.description, mirror)
                    tried.add(mirror)
                    f.fail_over(mirror)
                    self._job.touch()
                    self._service.events.modified(self._job)
                    await self._service.commit(self._job, (index,))
        except BitsError as exc:
            failures[index] = exc.of_file(index, f.remote_url, f.local_path)
            self._out_of_flight((index,))
        except Exception as exc:  # a bug: it costs this file, and the files beside it still finish
            failures[index] = _internal_error(f, exc)
            self._out_of_flight((index,))

    def _out_of_flight(self, indexes: Iterable[int]) -> None:
        """These files no longer hold the window (written, or failed): the next files may start."""
        for index in indexes:
            self._in_flight.pop(index, None)
            self._unsized.discard(index)
        self._changed.set()

    def _room_beside(self) -> bool:
        """Files whose size is not known yet count as small once a file of this run proved small (a job's
        files tend to be alike): waiting for each file's size serialised a broker and an HTTP round trip
        per file (10,000 x 4 KiB: ~600 files/s with the main thread a third idle). A file known to be
        large, or that turned out to have no size, runs alone."""
        # while batches run, two at a time: the next one opens its files while the one before fetches
        window = 2 * self._batch_files if self._batches else FILE_WINDOW
        return len(self._in_flight) < window and all(
            0 <= f.bytes_total <= SMALL_FILE or (index in self._unsized and self._small_seen)
            for index, f in self._in_flight.items()
        )

    def _file_started(self, index: int, size: int) -> None:
        self._unsized.discard(index)
        self._small_seen = self._small_seen or 0 <= size <= SMALL_FILE
        self._changed.set()

    async def _transfer(self, index: int, f: JobFile) -> None:
        if self._job.on_demand:
            return await self._transfer_on_demand(index, f)
        if f.ranges is not None:
            return await self._transfer_ranges(index, f)
        job = self._job
        fd = await self._open_temp(f)
        verification = Verification(fd, f.checksums, self._transport.pools.digests)
        sink = FileSink(self._service, job, index, self._file_started, verification)
        try:
            # Metalink pieces that failed their hashes: those alone, then the whole file hashed again
            validator = await self._repair(index, f, fd) if f.repair else None
            if validator is not None:
                verification.rehash()
            else:
                previous = RemoteValidator.from_dict(f.validator) if f.validator else None
                spec = DownloadSpec(f.remote_url, f.durable_offset, previous, self._headers, job.dynamic_content,
                                    defer_sync_below=SMALL_FILE, tls=self._tls, method=job.http_method)
                validator = await self._transport.download(spec, fd, sink, self._throttle, self._access)
            size = validator.size if validator.size >= 0 else f.bytes_transferred
            failed = await verification.check(size, f.local_path)
            if failed is None and f.expected_size is not None and size != f.expected_size:
                failed = BitsError(ErrorCode.BG_E_VALIDATION_FAILED, f"{f.local_path}: {f.remote_url} served "
                                   f"{size} bytes, the Metalink says {f.expected_size}", ErrorContext.REMOTE_FILE)
            if failed is not None:
                failed = await keep_good_pieces(f, fd, size, failed, self._transport.pools.digests,
                                                lambda: self._syncs.sync([fd], f.local_path))
                await self._service.commit(job, (index,))
                raise failed
            f.validation_state = verification.checked
            keep_remote_time(fd, validator)
            # The bytes are written: the next file may start while these become durable.
            self._out_of_flight((index,))
            if f.durable_offset < size:  # a small file the transport left to our batch
                await self._syncs.sync([fd], f.local_path)
        finally:
            await verification.close()  # its thread reads fd
            os.close(fd)
            await sink.flush()
        f.bytes_total = f.bytes_transferred = f.durable_offset = size
        self._finished.add(index)
        await self._complete_in_order()

    async def _transfer_ranges(self, index: int, f: JobFile) -> None:
        """AddFileWithRanges: each range into the temporary file after the one before, in the order given.
        The remote file changing between two ranges starts the file again, once."""
        fd = await self._open_temp(f)
        sink = RangesSink(self._service, self._job, index)
        try:
            try:
                validator = await self._fetch_ranges(f, fd, sink)
            except VersionChanged:
                await sink.flush()
                f.restart()
                os.ftruncate(fd, 0)
                validator = await self._fetch_ranges(f, fd, sink)
            self._out_of_flight((index,))
            keep_remote_time(fd, validator)
        finally:
            os.close(fd)
            await sink.flush()
        f.bytes_transferred = f.durable_offset = f.bytes_total
        self._finished.add(index)
        await self._complete_in_order()

    async def _transfer_on_demand(self, index: int, f: JobFile) -> None:
        """BITS_JOB_PROPERTY_ON_DEMAND_MODE: the requested ranges, in the order asked, each byte at its own
        offset of the temporary file; FILE_RANGES_TRANSFERRED as each is in. The file completes when whole."""
        job, files = self._job, self._service.files_of(self._job)
        fd = None
        if f.filled:
            try:
                fd = await files.open_temp(f.temp_path, create=False)
            except BitsError:
                f.filled, f.validator = (), None  # gone or replaced: start over
        if fd is None:
            fd = await files.open_temp(f.temp_path, create=True)
        sink = PlacedSink(self._service, job, index)
        try:
            while f.requested:
                offset, length = f.requested[0]
                end = None if length == LENGTH_TO_EOF else offset + length
                if end is None and f.bytes_total != SIZE_UNKNOWN:
                    end = f.bytes_total
                gap = first_gap(f.filled, offset, end)
                if gap is None:
                    f.requested = f.requested[1:]
                    await self._service.commit(job, (index,), (index, [[offset, length]]))
                    continue
                validator = RemoteValidator.from_dict(f.validator) if f.validator else None
                spec = DownloadSpec(f.remote_url, gap[0], validator, self._headers)
                try:
                    validator = await self._transport.download_range(
                        spec, gap[0], None if gap[1] is None else gap[1] - 1, fd, sink, self._throttle, self._access)
                except VersionChanged:  # another version: what is in belongs to the old one
                    f.filled, f.validator = (), None
                    os.ftruncate(fd, 0)
                    continue
                f.bytes_total = validator.size
                f.filled = merged(f.filled, gap[0], validator.size if gap[1] is None else gap[1])
                f.bytes_transferred = sum(n for _, n in f.filled)
                await self._service.commit(job, (index,))
            whole = f.bytes_total != SIZE_UNKNOWN and f.bytes_transferred == f.bytes_total
            if whole:
                keep_remote_time(fd, RemoteValidator.from_dict(f.validator or {}))
        finally:
            os.close(fd)
            await sink.flush()
        self._out_of_flight((index,))
        if whole:
            f.durable_offset = f.bytes_total
            self._finished.add(index)
            await self._complete_in_order()

    async def _repair(self, index: int, f: JobFile, fd: int) -> RemoteValidator | None:
        """Fetch again only the runs of pieces that failed their hashes, each at its own offset; each is on
        record as done once durable. The version must keep the size the pieces were laid over. None: the
        source sends no ranges (file://, smb://, an http server without them), so the file goes on from its
        first bad piece (pieces.from_first_bad)."""
        if f.remote_url[:5].lower() not in ("http:", "https"):
            from_first_bad(f, fd)
            return None
        sink = PlacedSink(self._service, self._job, index)
        validator = RemoteValidator.from_dict(f.validator or {"size": f.bytes_total})
        try:
            while f.repair:
                at, length = f.repair[0]
                spec = DownloadSpec(f.remote_url, at, validator, self._headers, tls=self._tls)
                try:
                    validator = await self._transport.download_range(spec, at, at + length - 1, fd, sink,
                                                                     self._throttle, self._access)
                except TransferError as exc:  # raised before any byte of the answer is written
                    if exc.code != ErrorCode.BG_E_INSUFFICIENT_RANGE_SUPPORT:
                        raise
                    from_first_bad(f, fd)
                    return None
                f.repair = f.repair[1:]
                f.bytes_transferred += length
                await self._service.commit(self._job, (index,))
        finally:
            await sink.flush()
        return validator

    async def _fetch_ranges(self, f: JobFile, fd: int, sink: RangesSink) -> RemoteValidator:
        """The ranges from the first one not yet durable on (the bytes before it are: ranges are written in order)."""
        validator = RemoteValidator.from_dict(f.validator) if f.validator else None
        while True:
            size = SIZE_UNKNOWN if validator is None else validator.size
            ranges = f.local_ranges(size)  # BG_E_INVALID_RANGE once the size shows one outside the file
            if size != SIZE_UNKNOWN:
                first, last, at = ranges[-1]
                f.bytes_total = at + (last if last is not None else size - 1) - first + 1
            todo = next(((first, last, at) for first, last, at in ranges
                         if last is None or at + last - first + 1 > f.durable_offset), None)
            if todo is None:
                assert validator is not None, "a file has one range at least"
                return validator
            first, last, at = todo
            skip = f.durable_offset - at  # a range cut short before: continue it
            spec = DownloadSpec(f.remote_url, at + skip, validator, self._headers)
            validator = await self._transport.download_range(spec, first + skip, last, fd, sink, self._throttle,
                                                             self._access)

    async def _complete_in_order(self) -> None:
        """Mark finished files completed, but only the unbroken run from the first unfinished one.

        Files finishing while a completion commit is in flight ride on the next one, so a job of
        small files costs a commit per batch of files, not per file.
        """
        if self._completing is not None and not self._completing.done():
            await asyncio.shield(self._completing)
            if not self._finished:
                return
        while True:
            files, done = self._job.files, []
            while self._next < len(files) and (files[self._next].completed or self._next in self._finished):
                if not files[self._next].completed:
                    files[self._next].completed = True
                    done.append(self._next)
                self._finished.discard(self._next)
                self._next += 1
            if not done:
                return
            self._completing = asyncio.ensure_future(self._service.commit(self._job, done))
            await asyncio.shield(self._completing)

    async def _open_temp(self, f: JobFile) -> int:
        """Reopen the temporary file cut back to its durable offset, or create it (empty: the broker
        creates with O_EXCL, so no truncate, a syscall per small file)."""
        files = self._service.files_of(self._job)
        if f.durable_offset > 0:
            try:
                fd = await files.open_temp(f.temp_path, create=False)
            except BitsError:
                pass  # gone or replaced: start over below
            else:
                if os.fstat(fd).st_size >= f.durable_offset:
                    try:
                        os.ftruncate(fd, f.durable_offset)
                    except OSError:
                        os.close(fd)
                        raise
                    return fd
                os.close(fd)
        f.restart()
        return await files.open_temp(f.temp_path, create=True)


def _mirrors_fault(exc: BitsError) -> bool:
    """Whether another mirror may do better: the server's answer, its connection or its bytes were wrong,
    not our disk, our credentials' owner or the network as a whole."""
    return exc.code != ErrorCode.BG_E_NETWORK_DISCONNECTED and exc.context in (
        ErrorContext.REMOTE_FILE, ErrorContext.GENERAL_TRANSPORT)


def _internal_error(f: JobFile, exc: Exception) -> BitsError:
    log.exception("internal error transferring %s", f.remote_url)
    return BitsError(ErrorCode.E_FAIL, f"internal error in openbitsd transferring {f.remote_url} ({exc!r}); the "
                     "daemon log has the details - please report it", ErrorContext.REMOTE_FILE)
