"""Moves one job's bytes: its files in order, each into its hidden temporary file.

The runner owns the crash-consistency rule: the offset it hands the store is
always one the transport has reported fsync'ed, and on restart the temporary
file is cut back to that offset before the range request continues it.
"""

from __future__ import annotations

import asyncio
import os
import time
from urllib.parse import unquote, urlsplit

from ..enums import ErrorContext, JobState
from ..errors import BitsError, ErrorCode, TransferError
from ..transport.base import DownloadSpec, RemoteValidator, Throttle
from ..transport.file import copy_local
from ..transport.http import HttpTransport
from .job import Job, JobFile
from .service import JobService


class _FileSink:
    """DownloadSink for one file: progress in memory, durable offsets to the store."""

    def __init__(self, service: JobService, job: Job, index: int) -> None:
        self._service, self._job, self._index = service, job, index
        self._file = job.files[index]
        self._saving: asyncio.Task[None] | None = None
        self._dirty = False

    def started(self, validator: RemoteValidator, offset: int) -> None:
        f = self._file
        if offset == 0:
            f.restart()
        f.validator = validator.to_dict()
        f.bytes_total = validator.size
        self._job.state = JobState.TRANSFERRING
        self._save()

    def received(self, offset: int) -> None:
        if offset > self._file.bytes_transferred:
            self._job.last_progress_time = time.time()
        self._file.bytes_transferred = offset

    def durable(self, offset: int) -> None:
        self._file.durable_offset = offset
        self._save()

    def _save(self) -> None:
        """Queue a save; saves of one file never overlap and the newest offset always wins."""
        if self._saving is None or self._saving.done():
            self._saving = asyncio.get_running_loop().create_task(self._save_loop())
        else:
            self._dirty = True

    async def _save_loop(self) -> None:
        while True:
            self._dirty = False
            await self._service.commit(self._job, (self._index,))
            if not self._dirty:
                return

    async def flush(self) -> None:
        """Wait for the last queued save (the runner owns the save task)."""
        if self._saving is not None:
            await self._saving


class JobRunner:
    """Runs the transfer of one job until it is TRANSFERRED, failed, or cancelled by the scheduler."""

    def __init__(self, service: JobService, transport: HttpTransport, job: Job, throttle: Throttle | None) -> None:
        self._service, self._transport, self._job, self._throttle = service, transport, job, throttle

    async def run(self) -> None:
        job = self._job
        started = time.monotonic()
        try:
            budget = job.max_download_time - job.active_seconds if job.max_download_time else None
            if budget is not None and budget <= 0:
                raise _max_download_time_error(job)
            try:
                async with asyncio.timeout(budget):
                    for index, f in enumerate(job.files):
                        if not f.completed:
                            await self._transfer(index, f)
            except TimeoutError:
                raise _max_download_time_error(job) from None
        except TransferError as exc:
            job.set_error(exc, transient=exc.transient, retry_after=exc.retry_after)
        except BitsError as exc:
            job.set_error(exc, transient=False)
        else:
            job.state = JobState.TRANSFERRED
            job.transfer_completion_time = time.time()
            job.error = None
            job.touch()
        finally:
            job.active_seconds += time.monotonic() - started
        await self._service.commit(job)

    async def _transfer(self, index: int, f: JobFile) -> None:
        job = self._job
        job.state = JobState.CONNECTING
        files = self._service.files_of(job)
        fd = await self._open_temp(index, f)
        sink = _FileSink(self._service, job, index)
        try:
            os.ftruncate(fd, f.durable_offset)
            if urlsplit(f.remote_url).scheme.lower() == "file":
                source = await files.open_read(unquote(urlsplit(f.remote_url).path))
                try:
                    validator = await copy_local(source, fd, f.durable_offset, sink, self._throttle)
                finally:
                    os.close(source)
            else:
                previous = RemoteValidator.from_dict(f.validator) if f.validator else None
                spec = DownloadSpec(f.remote_url, f.durable_offset, previous, _headers(job.custom_headers),
                                    job.dynamic_content)
                validator = await self._transport.download(spec, fd, sink, self._throttle)
        finally:
            os.close(fd)
            await sink.flush()
        size = validator.size if validator.size >= 0 else f.bytes_transferred
        f.bytes_total = f.bytes_transferred = f.durable_offset = size
        f.completed = True
        await self._service.commit(job, (index,))

    async def _open_temp(self, index: int, f: JobFile) -> int:
        """Reopen the temporary file at its durable offset, or start it afresh."""
        files = self._service.files_of(self._job)
        if f.temp_created and f.durable_offset > 0:
            try:
                fd = await files.open_temp(f.temp_path, create=False)
            except BitsError:
                pass  # gone or replaced: start over below
            else:
                if os.fstat(fd).st_size >= f.durable_offset:
                    return fd
                os.close(fd)
        f.restart()
        fd = await files.open_temp(f.temp_path, create=True)
        if not f.temp_created:
            f.temp_created = True
            await self._service.commit(self._job, (index,))
        return fd


def _headers(lines: list[str]) -> dict[str, str]:
    """BITS custom headers are "Name: value" lines."""
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    return headers


def _max_download_time_error(job: Job) -> BitsError:
    return BitsError(
        ErrorCode.BG_E_MAXDOWNLOAD_TIMEOUT,
        f"the job spent its maximum download time of {job.max_download_time} s; raise it with "
        "setmaxdownloadtime and resume the job",
        ErrorContext.GENERAL_TRANSPORT,
    )
