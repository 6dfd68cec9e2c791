"""One keep-alive HTTP/1.1 connection of the lean GET client: requests, pipelined fetches, the body ring."""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import Callable, Sequence

from .httphead import Broken, FastGetError, ResponseHead, StaleConnection, Unsupported, parse_head

#: Per connection: a response head, and a small body behind it without a copy.
HEAD_BUFSIZE = 64 * 1024
_END_OF_HEAD = b"\r\n\r\n"
_IDLE, _HEAD, _BODY, _DONE, _PIPELINE = range(5)


class Connection(asyncio.BufferedProtocol):
    """One keep-alive connection: the head is read into a buffer of its own, the body into a ring
    that the consumer empties chunk by chunk (reading pauses while the ring is full)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float) -> None:
        self._loop = loop
        self.read_timeout = read_timeout
        self._head = bytearray(HEAD_BUFSIZE)
        self._head_view = memoryview(self._head)
        self._scratch = memoryview(bytearray(1024))
        self.transport: asyncio.Transport | None = None
        self.reusable = True
        self.idle_timer: asyncio.TimerHandle | None = None
        self._state = _IDLE
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0
        self._paused = False
        #: the body's reading was handed over to splice: never resume, never reuse
        self._handed = False
        self._hfill = 0
        self._ring_size = 0
        self.head: ResponseHead | None = None
        # body: counters grow over the whole body; ring positions are taken modulo the ring's size
        self._ring = self._scratch
        self._size = 0
        self._filled = self._taken = self._released = self._remaining = 0
        #: `fetch`es in flight, oldest first: the descriptor each body goes to and who hears the outcome
        self._fetches: collections.deque[tuple[int, Callable[[ResponseHead | None], None]]] = collections.deque()
        #: where the search for the end of the next answer's head goes on (pipelined answers)
        self._scan = 0

    # -- protocol callbacks (event loop) --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed, self.reusable = True, False
        if self._error is None and exc is not None:
            self._error = exc
        self._stop_timer()
        self._wake()
        self._end_fetches()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._state == _PIPELINE:
            return self._head_view[self._hfill:]
        if self._state == _BODY and self._remaining:
            pos = self._filled % self._size
            free = self._size - (self._filled - self._released)
            return self._ring[pos:pos + min(self._size - pos, free, self._remaining)]
        if self._state == _HEAD:
            return self._head_view[self._hfill:]
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        self._last = self._loop.time()
        if self._state == _PIPELINE:
            self._hfill += nbytes
            self._fetched()
        elif self._state == _BODY and self._remaining:
            self._filled += nbytes
            self._remaining -= nbytes
            if not self._remaining:
                self._stop_timer()
            elif self._filled - self._released == self._size:
                self._pause()
            self._wake()
        elif self._state == _HEAD:
            start = max(0, self._hfill - 3)
            self._hfill += nbytes
            end = self._head.find(_END_OF_HEAD, start, self._hfill)
            if end >= 0:
                self._head_done(end)
            elif self._hfill == HEAD_BUFSIZE:
                self._fail(Unsupported("response head larger than 64 KiB"))
        else:  # bytes nobody asked for: this connection is out of step
            self._fail(Broken("the server sent bytes beyond the response"))

    def _head_done(self, end: int) -> None:
        try:
            self.head = head = parse_head(bytes(self._head_view[:end]))
        except FastGetError as exc:
            self._fail(exc)
            return
        start = end + 4
        if head.status not in (200, 206):
            self._state, self.reusable = _DONE, False  # the caller reports it and closes
            self._pause()
            self._wake()
            return
        length = head.content_length or 0
        leftover = min(self._hfill - start, length)
        if self._hfill - start > length:
            self.reusable = False
        if length <= HEAD_BUFSIZE - start:
            self._ring, self._size = self._head_view[start:start + length], max(length, 1)
        else:
            self._size = min(self._ring_size, length)
            self._ring = memoryview(bytearray(self._size))
            self._ring[:leftover] = self._head_view[start:start + leftover]
        self._state = _BODY
        self._filled, self._taken, self._released, self._remaining = leftover, 0, 0, length - leftover
        if not self._remaining:
            self._stop_timer()
        elif leftover == self._size:
            self._pause()
        self._wake()

    # -- fetch: small bodies straight into files, no coroutine (event loop) --

    def fetch(self, requests: Sequence[tuple[bytes, int, Callable[[ResponseHead | None], None]]]) -> None:
        """Send GETs in one write (pipelined); as each whole body (a 200 that fits the head buffer) is written
        at offset 0 of its descriptor, call its `on_done(head)`. Anything else calls `on_done(None)` for it
        and every later one, once, with the connection closed (the caller asks again the general way). Per
        file this is a share of a send and of a receive, and a pwrite, from callbacks, with no task, future
        or stream layer (10,000 x 4 KiB in batches: the loop thread spent ~110 us a file with one request
        at a time, ~290 us with a task, `request` and `chunk` per file)."""
        assert self.transport is not None and self._state in (_IDLE, _PIPELINE)
        if self._state != _PIPELINE:
            self._state, self._hfill, self._scan, self.head = _PIPELINE, 0, 0, None
        self._fetches.extend((fd, on_done) for _, fd, on_done in requests)
        self.transport.write(b"".join(data for data, _, _ in requests))
        self._last = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(self._last + self.read_timeout, self._check_timeout)

    def _fetched(self) -> None:
        """Every whole answer in the head buffer, in order: its body to its file, its caller told."""
        while self._fetches:
            end = self._head.find(_END_OF_HEAD, self._scan, self._hfill)
            if end < 0:
                if self._hfill == HEAD_BUFSIZE:
                    self._fail(Unsupported("response head larger than 64 KiB"))
                self._scan = max(0, self._hfill - 3)
                return
            head = self.head  # parsed already when the head came before the rest of its body
            if head is None:
                try:
                    head = self.head = parse_head(bytes(self._head_view[:end]))
                except FastGetError as exc:
                    self._fail(exc)
                    return
            start = end + 4
            length = head.content_length or 0
            if head.status != 200 or start + length > HEAD_BUFSIZE:
                self._fail(Unsupported(f"HTTP {head.status}, or a body that is not small"))
                return
            if self._hfill < start + length:
                self._scan = end  # the head is found again at once when the rest of the body is in
                return
            fd, on_done = self._fetches.popleft()
            try:
                os.pwrite(fd, self._head_view[start:start + length], 0)
            except OSError:
                self._fetches.appendleft((fd, on_done))
                self._fail(Broken("the file could not be written"))  # the general way meets it again
                return
            rest = self._hfill - start - length
            self._head[:rest] = self._head[start + length:self._hfill]
            self._hfill, self._scan, self.head = rest, 0, None
            if not head.keep_alive:
                self.close()
            on_done(head)
            if self._closed or not self.reusable:
                self._end_fetches()
                return
        self._stop_timer()
        if self._hfill:
            self._fail(Broken("the server sent bytes beyond the response"))
        else:
            self._state = _IDLE

    def _end_fetches(self) -> None:
        """Fetches that will get no answer here: their callers hear None (and ask the general way)."""
        while self._fetches:
            _, on_done = self._fetches.popleft()
            on_done(None)

    # -- the consumer's side (a coroutine) --

    async def request(self, data: bytes, ring_size: int, reused: bool) -> ResponseHead:
        """Send one request; the head of its answer. `ring_size`: most body bytes read ahead of the consumer."""
        assert self.transport is not None
        self._state, self._hfill, self._ring_size, self.head = _HEAD, 0, ring_size, None
        self.transport.write(data)
        self._last = self._loop.time()
        self._timer = self._loop.call_at(self._last + self.read_timeout, self._check_timeout)
        while self.head is None:
            if self._closed or self._error is not None:
                if reused and self._hfill == 0 and not isinstance(self._error, TimeoutError):
                    raise StaleConnection
                raise self._failure("before the response head")
            await self._wait()
        return self.head

    async def chunk(self, limit: int) -> memoryview:
        """The next body bytes (at most `limit`), valid until the next call; empty at the end of the body
        or when the server closed the connection early (the caller compares the sizes)."""
        self._released = self._taken
        if self._paused and not self._handed and self._filled - self._released < self._size:
            self._resume()
        while self._filled == self._taken:
            if self._handed or not self._remaining or self._closed and self._error is None:
                return self._scratch[:0]
            if self._error is not None:
                raise self._failure("in the body")
            await self._wait()
        pos = self._taken % self._size
        n = min(self._filled - self._taken, self._size - pos, limit)
        self._taken += n
        return self._ring[pos:pos + n]

    def hand_over(self, at_least: int) -> int:
        """With at least `at_least` body bytes still to come: stop reading here (chunk() hands out what the
        ring holds, then ends) and return how many the caller takes from the socket itself; else 0."""
        if self._state != _BODY or self._remaining < at_least or self._closed:
            return 0
        self._pause()
        self._handed, self.reusable = True, False
        self._stop_timer()
        return self._remaining

    def complete(self) -> bool:
        """Whether the whole body was handed out and the connection may carry another request."""
        return self.reusable and not self._closed and self._state == _BODY and not self._remaining \
            and self._taken == self._filled and self.head is not None and self.head.keep_alive

    def idle(self) -> bool:
        """Whether no request is under way and the connection may carry one (after `fetch`, or never used)."""
        return self._state == _IDLE and self.reusable and not self._closed and not self._fetches

    def park(self) -> None:
        """Between requests: the head buffer is free again, the body ring is dropped."""
        self._state, self._ring, self.head = _IDLE, self._scratch, None

    def close(self) -> None:
        self.reusable = False
        self._stop_timer()
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.transport is not None:
            self.transport.close()

    # -- helpers --

    def _failure(self, where: str) -> BaseException:
        error = self._error
        if isinstance(error, (TimeoutError, FastGetError)):
            return error
        detail = f"{type(error).__name__}: {error}" if error is not None else "the server closed the connection"
        return Broken(f"{detail} {where}".strip())

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self.close()
        self._wake()
        self._end_fetches()

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        self._paused = False
        self._last = self._loop.time()  # a paused read is our doing, not the server's silence
        if self.transport is not None:
            self.transport.resume_reading()

    def _check_timeout(self) -> None:
        """Nothing arrived for read_timeout while we wanted to read: the server stalls."""
        now = self._loop.time()
        if self._paused or now - self._last < self.read_timeout:
            since = now if self._paused else self._last
            self._timer = self._loop.call_at(since + self.read_timeout, self._check_timeout)
            return
        self._timer = None
        self._fail(TimeoutError())

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
