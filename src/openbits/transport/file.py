"""file:// sources: a copy from a descriptor the file broker opened as the job's user.

The daemon never opens user paths itself (DESIGN.md, privilege separation),
so this transport only sees descriptors. The version of a local file is its
size and modification time, as BITS defines file consistency.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
from collections.abc import Awaitable, Callable

from ..enums import ErrorContext
from ..pools import Pools
from ..errors import ErrorCode, TransferError
from .base import DownloadSink, ProgressReporter, RemoteValidator, Throttle
from .durable import DurableWriter

#: Bytes per read: one worker-thread hop per MiB keeps the loop responsive and syscalls few.
READ_SIZE = 1024 * 1024


def file_validator(fd: int) -> RemoteValidator:
    """Size and mtime (HTTP date in last_modified, nanoseconds and inode in the etag, to see sub-second changes)."""
    st = os.fstat(fd)
    return RemoteValidator(
        st.st_size,
        f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"',
        email.utils.formatdate(st.st_mtime, usegmt=True),
    )


async def copy_local(
    src_fd: int,
    dst_fd: int,
    offset: int,
    sink: DownloadSink,
    throttle: Throttle | None = None,
    *,
    validator: RemoteValidator | None = None,
    label: str = "the local source file",
    pools: Pools,
) -> RemoteValidator:
    """Copy `src_fd` into `dst_fd` from `offset` on; returns the source's validator.

    `validator` is the one `started()` reported for the bytes already copied: a
    resume continues only if the source still matches it, otherwise (or without
    it) the copy restarts from zero. A source that changes during the copy is a
    transient error, so the next attempt starts over with the new version.
    """
    loop = asyncio.get_running_loop()
    writer = DurableWriter(dst_fd, offset, sink.durable, label=label, pool=pools.sync)
    try:
        current = _fstat(src_fd, label)
        start = offset if validator is not None and validator == current else 0
        sink.started(current, start)
        if start < offset:
            writer.restart()

        async def read(offset: int) -> bytes:
            try:
                return await loop.run_in_executor(pools.reads, os.pread, src_fd, READ_SIZE, offset)
            except OSError as exc:
                raise _source_error(f"Reading {label} failed: {exc.strerror or exc}.", transient=False) from exc

        await pump(read, writer, current.size, sink, throttle)
        if _fstat(src_fd, label) != current or writer.offset != current.size:
            raise _source_error(f"{label} changed while it was copied; the job copies it again.", transient=True)
        sink.received(writer.offset)
        await writer.flush()
        return current
    finally:
        await writer.close()


async def pump(read: Callable[[int], Awaitable[bytes]], writer: DurableWriter, size: int, sink: DownloadSink,
               throttle: Throttle | None) -> None:
    """The copy loop of file:// and SMB: `read(offset)` until `size` bytes are written or the source ends."""
    progress = ProgressReporter(sink)
    while writer.offset < size:
        chunk = await read(writer.offset)
        if not chunk:
            break
        writer.write(chunk)
        if throttle is not None:
            await throttle.consume(len(chunk))
        progress.update(writer.offset)


def _fstat(fd: int, label: str) -> RemoteValidator:
    try:
        return file_validator(fd)
    except OSError as exc:
        raise _source_error(f"Cannot read the attributes of {label}: {exc.strerror or exc}.", transient=False) from exc


def _source_error(description: str, *, transient: bool) -> TransferError:
    return TransferError(ErrorCode.E_FAIL, description, ErrorContext.REMOTE_FILE, transient=transient)
