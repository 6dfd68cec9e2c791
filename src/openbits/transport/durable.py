"""Writing a temporary file so that durability overlaps the transfer.

Crash-consistency rule (DESIGN.md): the offset reported durable never exceeds
what fdatasync covered. Syncing only at the end stalls a 1 GiB file for
seconds, syncing on the hot path halves throughput; so every DURABLE_STEP
bytes a background thread starts writeback and runs fdatasync while the
event loop keeps receiving, and the offset advances when that sync returns.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
from collections.abc import Callable
from concurrent.futures import Executor

from ..enums import ErrorContext
from ..errors import ErrorCode, TransferError

#: Bytes between background syncs: large enough to amortise a disk flush, small enough that a crash loses little.
DURABLE_STEP = 8 * 1024 * 1024

_SYNC_FILE_RANGE_WRITE = 2
_libc = ctypes.CDLL(None, use_errno=True)
#: Starts writeback of a range without waiting; absent on some libcs (then fdatasync alone does the work).
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)

def _sync(fd: int, start: int, end: int) -> None:
    """Runs in a worker thread: push [start, end) to the disk, then make everything written durable."""
    if _sync_file_range is not None and end > start:
        _sync_file_range(fd, start, end - start, _SYNC_FILE_RANGE_WRITE)
    os.fdatasync(fd)


def local_error(exc: OSError, label: str) -> TransferError:
    """A failed write to the temporary file: someone has to free space or fix the disk, so not transient."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        code, advice = ErrorCode.ERROR_DISK_FULL, "Free disk space (or raise the quota) and resume the job."
    else:
        code, advice = ErrorCode.E_FAIL, "Check the disk holding the destination and resume the job."
    return TransferError(
        code,
        f"Writing the temporary file for {label} failed: {exc.strerror or exc}. {advice}",
        ErrorContext.LOCAL_FILE,
        transient=False,
    )


class DurableWriter:
    """pwrite at absolute offsets into `fd`; calls `on_durable(offset)` on the loop as syncs complete.

    At most one sync is in flight. `close()` must be awaited whatever happens, so
    no worker thread touches `fd` after the caller gets it back. Failures raise
    TransferError (LOCAL_FILE) naming `label`, the file as the user knows it.
    """

    def __init__(
        self, fd: int, offset: int, on_durable: Callable[[int], None], *, label: str, pool: Executor,
        step: int = DURABLE_STEP, defer_sync_below: int = 0,
    ) -> None:
        self.fd = fd
        #: where the fdatasyncs run (Pools.sync: a slow disk never starves the loop's default executor)
        self._pool = pool
        self._defer_sync_below = defer_sync_below
        self.label = label
        self.offset = offset
        self.durable = offset
        self._on_durable = on_durable
        self._step = step
        self._pending: asyncio.Future[None] | None = None
        self._error: OSError | None = None

    def write(self, data: bytes | memoryview) -> None:
        """Write all of `data` at the current offset; a full step starts a background sync."""
        self._raise_error()
        view = memoryview(data)
        while view:
            try:
                n = os.pwrite(self.fd, view, self.offset)
            except OSError as exc:
                raise self.failed(exc) from exc
            self.advance(n)
            view = view[n:]

    def advance(self, nbytes: int) -> None:
        """`nbytes` more are written at `offset` (by `write`, or spliced into `fd` by the caller);
        a full step starts a background sync."""
        self.offset += nbytes
        if self._pending is None and self.offset - self.durable >= self._step:
            self._start_sync()

    def failed(self, exc: OSError) -> TransferError:
        """A write into `fd` failed: no flush on close, and the error to raise."""
        self._error = exc
        return local_error(exc, self.label)

    def restart(self) -> None:
        """Drop everything written: the remote file changed or cannot resume."""
        if self._pending is not None:
            raise RuntimeError("restart() while a sync is in flight")
        try:
            os.ftruncate(self.fd, 0)
        except OSError as exc:
            raise local_error(exc, self.label) from exc
        self.offset = self.durable = 0

    async def flush(self) -> None:
        """Make every written byte durable and report it (a small file is left to the caller's batch)."""
        await self._wait_pending()
        if self.durable == 0 and self.offset <= self._defer_sync_below:
            self._raise_error()
            return
        if self.offset > self.durable:
            self._start_sync()
            await self._wait_pending()
        self._raise_error()

    async def close(self) -> None:
        """Best effort flush on the way out (error or cancellation), so a resume loses as little as possible."""
        try:
            if self._error is None and self.offset > self._defer_sync_below:
                await self.flush()
        except TransferError:
            pass  # the error that brought us here matters more
        finally:
            await self._wait_pending()

    def _start_sync(self) -> None:
        target = self.offset
        loop = asyncio.get_running_loop()
        self._pending = loop.run_in_executor(self._pool, _sync, self.fd, self.durable, target)
        self._pending.add_done_callback(lambda fut: self._synced(fut, target))

    def _synced(self, fut: asyncio.Future[None], target: int) -> None:
        self._pending = None
        exc = fut.exception()
        if exc is not None:
            self._error = exc if isinstance(exc, OSError) else OSError(str(exc))
            return
        self.durable = target
        self._on_durable(target)
        if self.offset - self.durable >= self._step:
            self._start_sync()

    async def _wait_pending(self) -> None:
        """Wait out the in-flight sync even if cancelled meanwhile (the thread cannot be stopped)."""
        cancelled = False
        while self._pending is not None:
            try:
                await asyncio.wait([self._pending])
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError

    def _raise_error(self) -> None:
        if self._error is not None:
            raise local_error(self._error, self.label) from self._error
