"""Body bytes socket -> pipe -> file with splice(2), in a worker thread of the daemon's splice pool.

The received pages are not copied into our memory (recv) and out again (pwrite); those two copies
were three quarters of the loop thread's time on a 1 GiB download (perf: _copy_to_iter,
copy_folio_from_iter).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
from collections.abc import Callable
from concurrent.futures import Executor

from .httphead import Broken

_PIPE_SIZE = 1024 * 1024
#: Most bytes per worker-thread step: progress and durable offsets advance between steps.
_SPLICE_STEP = 8 * 1024 * 1024
#: Seconds a worker waits for the socket before handing back, so a cancellation is seen soon.
_SPLICE_POLL = 0.1


def splice_step(sock: int, pipe_r: int, pipe_w: int, fd: int, offset: int, want: int) -> tuple[int, bool]:
    """Runs in a worker thread: up to `want` bytes socket -> pipe -> `fd` at `offset`; (bytes moved, the
    server closed). Waits at most _SPLICE_POLL for the socket when nothing has moved yet."""
    moved = 0
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while moved < want:
        try:
            n = os.splice(sock, pipe_w, min(want - moved, _PIPE_SIZE), flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
        except BlockingIOError:
            if moved or not poller.poll(_SPLICE_POLL * 1000):
                return moved, False
            continue
        except OSError as exc:
            raise Broken(f"{type(exc).__name__}: {exc} in the body") from exc
        if n == 0:
            return moved, True
        while n:  # OSError here is the file's (ENOSPC, EIO)
            k = os.splice(pipe_r, fd, n, offset_dst=offset + moved)
            moved, n = moved + k, n - k
    return moved, False


async def outlast(work: asyncio.Future[tuple[int, bool]]) -> tuple[int, bool]:
    """A worker thread's result even if cancelled meanwhile (it still uses the descriptors);
    the cancellation is re-raised once the thread is done."""
    cancelled = False
    while not work.done():
        try:
            await asyncio.wait([work])
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return work.result()


async def splice_into(sock: int, fd: int, offset: int, count: int, moved: Callable[[int], None], read_timeout: float,
                      pool: Executor) -> None:
    """`count` bytes from the socket into `fd` from `offset` on, in steps on `pool`; `moved(n)` after each step.
    Returns early when the server closes (the caller compares sizes). Raises TimeoutError, Broken, or OSError
    for `fd`."""
    loop = asyncio.get_running_loop()
    pipe_r, pipe_w = os.pipe2(os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe_w, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        quiet_since = loop.time()
        while count:
            step = loop.run_in_executor(pool, splice_step, sock, pipe_r, pipe_w, fd, offset, min(count, _SPLICE_STEP))
            n, end = await outlast(step)
            if n:
                offset, count, quiet_since = offset + n, count - n, loop.time()
                moved(n)
            elif end:
                return
            elif loop.time() - quiet_since >= read_timeout:
                raise TimeoutError
    finally:
        os.close(pipe_r)
        os.close(pipe_w)
