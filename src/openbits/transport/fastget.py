"""A lean HTTP/1.1 GET client for the common download: plain http://, a body
framed by Content-Length, keep-alive connections per origin.

Why our own code next to aiohttp (DESIGN.md: large reads and few syscalls per
MiB matter more than the HTTP library): aiohttp copies every received piece
into a new bytes object and spends a few hundred microseconds of Python per
request (ClientSession._request, middlewares, timers). Here the socket is read
with recv_into straight into a buffer the caller writes to its file from; a
small file is one write and usually one read, and its body is never copied.

Everything else - https, 401 challenges, chunked or close-delimited bodies,
1xx, odd response heads - raises `Unsupported` before any body byte is handed
out, and the caller asks aiohttp instead.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import functools
import os
import select
import socket
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

#: Per connection: a response head, and a small body behind it without a copy.
HEAD_BUFSIZE = 64 * 1024
#: Most body bytes read ahead of the consumer when no bandwidth cap applies; chunks are a quarter of it.
#: Small enough that a chunk is still in the L2 cache when it is written to the file: an 8 MiB ring
#: cost ~2.1 CPU s per GiB on loopback nginx, a 2 MiB ring ~1.2 s (aiohttp: ~1.5 s).
READ_AHEAD = 2 * 1024 * 1024
#: A body with at least this much left (and no bandwidth cap) moves socket -> pipe -> file with splice(2):
#: the received pages are not copied into our memory (recv) and out again (pwrite). Those two copies were
#: three quarters of the loop thread's time on a 1 GiB download (perf: _copy_to_iter, copy_folio_from_iter).
SPLICE_MIN = 4 * 1024 * 1024
_PIPE_SIZE = 1024 * 1024
#: Most bytes per worker-thread step: progress and durable offsets advance between steps.
_SPLICE_STEP = 8 * 1024 * 1024
#: Seconds a worker waits for the socket before handing back, so a cancellation is seen soon.
_SPLICE_POLL = 0.1
_SPLICE = ThreadPoolExecutor(max_workers=4, thread_name_prefix="openbits-splice")
#: Idle connections close after this long (aiohttp's keep-alive default).
KEEPALIVE = 15.0
#: Request headers that change framing or the connection: such requests go to aiohttp.
_FOREIGN_HEADERS = frozenset({"host", "connection", "content-length", "transfer-encoding", "te", "upgrade",
                              "expect", "authorization", "cookie", "proxy-authorization"})
_END_OF_HEAD = b"\r\n\r\n"
_IDLE, _HEAD, _BODY, _DONE, _PIPELINE = range(5)
#: Requests a fetch lane sends in one write (HTTP/1.1 pipelining): the server answers them back to back,
#: and one receive often carries several small answers.
PIPELINE_DEPTH = 4


class FastGetError(Exception):
    """What `FastClient.get` and `Response.chunk` raise, besides TimeoutError (nothing arrived in time)."""


class Unsupported(FastGetError):
    """Not the common case: the general client must make this request (no body byte was consumed)."""


class ConnectFailed(FastGetError):
    """No connection: `cause` is the OSError (socket.gaierror, TimeoutError, ConnectionRefusedError, ...)."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Broken(FastGetError):
    """The connection broke, or the server answered something that is not HTTP/1.x."""


class _Stale(Exception):
    """A reused connection the server had closed before it saw the request."""


def plain_request(url: URL, headers: Mapping[str, str]) -> bool:
    """Whether `FastClient` can make this request at all (the response may still be Unsupported)."""
    return (url.scheme == "http" and url.user is None and url.password is None
            and not any(name.lower() in _FOREIGN_HEADERS or "\r" in name + value or "\n" in name + value
                        for name, value in headers.items()))


class ResponseHead:
    __slots__ = ("status", "reason", "headers", "content_length", "keep_alive")

    def __init__(self, status: int, reason: str, headers: CIMultiDictProxy[str], content_length: int | None,
                 keep_alive: bool) -> None:
        self.status, self.reason, self.headers = status, reason, headers
        self.content_length, self.keep_alive = content_length, keep_alive


def _parse_head(raw: bytes) -> ResponseHead:
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if version not in ("HTTP/1.1", "HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise Broken(f"the server did not answer in HTTP/1.1 ({lines[0][:80]!r})")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or line[0] in " \t":
            raise Unsupported(f"unusual header line {line[:80]!r}")
        headers.add(name, value.strip(" \t"))
    status = int(code)
    lengths = set(headers.getall("Content-Length", ()))
    length = None
    if lengths:
        value = lengths.pop()
        if lengths or not value.isascii() or not value.isdigit():
            raise Unsupported("unusual Content-Length")
        length = int(value)
    tokens = {t.strip().lower() for t in headers.get("Connection", "").split(",")}
    keep_alive = "close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens
    if status < 200 or (status in (200, 206) and (length is None or "Transfer-Encoding" in headers)):
        raise Unsupported(f"HTTP {status} without a Content-Length body")
    return ResponseHead(status, reason, CIMultiDictProxy(headers), length, keep_alive)


class _Connection(asyncio.BufferedProtocol):
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
            self.head = head = _parse_head(bytes(self._head_view[:end]))
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
                    head = self.head = _parse_head(bytes(self._head_view[:end]))
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
                    raise _Stale
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


def _splice_step(sock: int, pipe_r: int, pipe_w: int, fd: int, offset: int, want: int) -> tuple[int, bool]:
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


async def _outlast(work: asyncio.Future[tuple[int, bool]]) -> tuple[int, bool]:
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


class Response:
    """One answer: head fields like aiohttp's, and the body chunk by chunk. `release()` exactly once."""

    __slots__ = ("_client", "_conn", "_key", "status", "reason", "headers", "content_length")

    def __init__(self, client: FastClient, conn: _Connection, key: tuple[str, int], head: ResponseHead) -> None:
        self._client, self._conn, self._key = client, conn, key
        self.status, self.reason, self.headers = head.status, head.reason, head.headers
        self.content_length = head.content_length

    def socket(self) -> Any:
        return self._conn.transport.get_extra_info("socket") if self._conn.transport is not None else None

    async def chunk(self, limit: int | None = None) -> memoryview:
        """The next body bytes, at most `limit`; valid until the next call; empty at the end."""
        return await self._conn.chunk(READ_AHEAD // 4 if limit is None else limit)

    def hand_over(self, at_least: int) -> int:
        """See `_Connection.hand_over`; then `splice_rest` after chunk() has ended."""
        return self._conn.hand_over(at_least)

    async def splice_rest(self, fd: int, offset: int, count: int, moved: Callable[[int], None]) -> None:
        """The `count` body bytes `hand_over` left in the socket, into `fd` from `offset` on, by splice(2) in a
        worker thread; `moved(n)` after each step. Returns early when the server closes (the caller compares
        sizes). Raises TimeoutError, Broken, or OSError for `fd`."""
        conn = self._conn
        assert conn.transport is not None
        sock = conn.transport.get_extra_info("socket").fileno()
        loop = asyncio.get_running_loop()
        pipe_r, pipe_w = os.pipe2(os.O_CLOEXEC)
        try:
            with contextlib.suppress(OSError):
                fcntl.fcntl(pipe_w, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
            quiet_since = loop.time()
            while count:
                step = loop.run_in_executor(_SPLICE, _splice_step, sock, pipe_r, pipe_w, fd, offset,
                                            min(count, _SPLICE_STEP))
                n, end = await _outlast(step)
                if n:
                    offset, count, quiet_since = offset + n, count - n, loop.time()
                    moved(n)
                elif end:
                    return
                elif loop.time() - quiet_since >= conn.read_timeout:
                    raise TimeoutError
        finally:
            os.close(pipe_r)
            os.close(pipe_w)

    def release(self) -> None:
        """Back to the pool when the body was read to its end, else closed."""
        self._client._release(self._key, self._conn)


class FastClient:
    """Keep-alive pools per (host, port), at most `limit` requests at once."""

    def __init__(self, *, user_agent: str, read_timeout: float, connect_timeout: float, limit: int) -> None:
        self._user_agent = user_agent
        self._read_timeout = read_timeout
        self._connect_timeout = connect_timeout
        self._slots = asyncio.Semaphore(limit)
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    def _request(self, url: URL, headers: Mapping[str, str]) -> bytes:
        host = url.raw_host or ""
        authority = f"[{host}]" if ":" in host else host
        if not url.is_default_port():
            authority += f":{url.port}"
        lines = [f"GET {url.raw_path_qs} HTTP/1.1", f"Host: {authority}", f"User-Agent: {self._user_agent}",
                 "Accept: */*", "Accept-Encoding: identity"]
        lines += (f"{name}: {value}" for name, value in headers.items())
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def get(self, url: URL, headers: Mapping[str, str], ring_size: int) -> Response:
        """GET `url` (see `plain_request`); the response head. Raises FastGetError or TimeoutError."""
        host, port = url.raw_host or "", url.port or 80
        key = (host, port)
        data = self._request(url, headers)
        await self._slots.acquire()
        try:
            while True:
                conn = self._pop_idle(key)
                reused = conn is not None
                if conn is None:
                    conn = await self._connect(host, port)
                try:
                    head = await conn.request(data, ring_size, reused)
                except _Stale:
                    conn.close()
                    continue
                except BaseException:
                    conn.close()
                    raise
                return Response(self, conn, key, head)
        except BaseException:
            self._slots.release()
            raise

    async def fetch_all(self, files: Sequence[tuple[URL, int]], headers: Mapping[str, str], lanes: int,
                        watch: Callable[[Any], contextlib.AbstractContextManager[None]]) -> list[ResponseHead | None]:
        """GET small files of one origin (each `plain_request`) into their descriptors over up to `lanes`
        connections, each sending its next PIPELINE_DEPTH requests from the callback that finished the last
        of the ones before (see `_Connection.fetch`); `watch(socket)` holds each connection's socket
        meanwhile (the bandwidth sensor's, before the first request). Per file: its head, or None when it
        must be asked the general way (not a small 200, a broken or stale connection, a write error, no
        connection at all)."""
        host, port = files[0][0].raw_host or "", files[0][0].port or 80
        key = (host, port)
        results: list[ResponseHead | None] = [None] * len(files)
        loop = asyncio.get_running_loop()
        finished = loop.create_future()
        conns: list[_Connection] = []
        position = 0

        def start(conn: _Connection) -> None:
            nonlocal position
            if conn._fetches:
                return  # the lane's last requests are still under way
            if position < len(files) and conn.reusable:
                chunk = range(position, min(position + PIPELINE_DEPTH, len(files)))
                position = chunk.stop
                conn.fetch([(self._request(files[i][0], headers), files[i][1], functools.partial(done, conn, i))
                            for i in chunk])
            elif not any(c._fetches for c in conns) and not finished.done():
                finished.set_result(None)

        def done(conn: _Connection, index: int, head: ResponseHead | None) -> None:
            results[index] = head
            start(conn)

        for lane in range(min(lanes, len(files))):
            if lane and self._slots.locked():
                break  # more lanes only while free: waiting with lanes held could deadlock two batches
            await self._slots.acquire()
            try:
                conn = self._pop_idle(key) or await self._connect(host, port)
            except (ConnectFailed, TimeoutError):
                self._slots.release()
                break
            conns.append(conn)
        try:
            with contextlib.ExitStack() as watched:
                for conn in conns:
                    if conn.transport is not None:
                        watched.enter_context(watch(conn.transport.get_extra_info("socket")))
                for conn in list(conns):
                    start(conn)
                if conns:
                    await finished
        finally:
            for conn in conns:
                conn._fetches.clear()  # cancelled: no callback may touch the caller's descriptors any more
                self._release(key, conn)
        return results

    def _pop_idle(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.idle_timer is not None:
                conn.idle_timer.cancel()
                conn.idle_timer = None
            if conn.reusable:
                return conn
            conn.close()
        return None

    async def _connect(self, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(lambda: _Connection(loop, self._read_timeout), host, port,
                                                       family=socket.AF_UNSPEC)
        except OSError as exc:  # TimeoutError and socket.gaierror included
            raise ConnectFailed(exc) from exc
        return conn

    def _release(self, key: tuple[str, int], conn: _Connection) -> None:
        self._slots.release()
        if not (conn.complete() or conn.idle()):
            conn.close()
            return
        conn.park()
        idle = self._idle.setdefault(key, [])
        idle.append(conn)
        conn.idle_timer = asyncio.get_running_loop().call_later(KEEPALIVE, self._expire, key, conn)

    def _expire(self, key: tuple[str, int], conn: _Connection) -> None:
        conn.idle_timer = None
        idle = self._idle.get(key, [])
        if conn in idle:
            idle.remove(conn)
        conn.close()

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
