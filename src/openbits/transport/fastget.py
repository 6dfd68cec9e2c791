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
import contextlib
import functools
import socket
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

from yarl import URL

from .connection import Connection
from .httphead import ConnectFailed, ResponseHead, StaleConnection
from .splice import splice_into

#: Most body bytes read ahead of the consumer when no bandwidth cap applies; chunks are a quarter of it.
#: Small enough that a chunk is still in the L2 cache when it is written to the file: an 8 MiB ring
#: cost ~2.1 CPU s per GiB on loopback nginx, a 2 MiB ring ~1.2 s (aiohttp: ~1.5 s).
READ_AHEAD = 2 * 1024 * 1024
#: A body with at least this much left (and no bandwidth cap) moves socket -> pipe -> file with splice(2):
#: the received pages are not copied into our memory (recv) and out again (pwrite). Those two copies were
#: three quarters of the loop thread's time on a 1 GiB download (perf: _copy_to_iter, copy_folio_from_iter).
SPLICE_MIN = 4 * 1024 * 1024
#: Idle connections close after this long (aiohttp's keep-alive default).
KEEPALIVE = 15.0
#: Requests a fetch lane sends in one write (HTTP/1.1 pipelining): the server answers them back to back,
#: and one receive often carries several small answers.
PIPELINE_DEPTH = 4


class Response:
    """One answer: head fields like aiohttp's, and the body chunk by chunk. `release()` exactly once."""

    __slots__ = ("_client", "_conn", "_key", "status", "reason", "headers", "content_length")

    def __init__(self, client: FastClient, conn: Connection, key: tuple[str, int], head: ResponseHead) -> None:
        self._client, self._conn, self._key = client, conn, key
        self.status, self.reason, self.headers = head.status, head.reason, head.headers
        self.content_length = head.content_length

    def socket(self) -> Any:
        return self._conn.transport.get_extra_info("socket") if self._conn.transport is not None else None

    async def chunk(self, limit: int | None = None) -> memoryview:
        """The next body bytes, at most `limit`; valid until the next call; empty at the end."""
        return await self._conn.chunk(READ_AHEAD // 4 if limit is None else limit)

    def hand_over(self, at_least: int) -> int:
        """See `Connection.hand_over`; then `splice_rest` after chunk() has ended."""
        return self._conn.hand_over(at_least)

    async def splice_rest(self, fd: int, offset: int, count: int, moved: Callable[[int], None]) -> None:
        """The `count` body bytes `hand_over` left in the socket, into `fd` from `offset` on (splice.py)."""
        conn = self._conn
        assert conn.transport is not None
        sock = conn.transport.get_extra_info("socket").fileno()
        await splice_into(sock, fd, offset, count, moved, conn.read_timeout, self._client.splice_pool)

    def release(self) -> None:
        """Back to the pool when the body was read to its end, else closed."""
        self._client._release(self._key, self._conn)


class _Batch:
    """One fetch_all: which file each lane asks next, and what came back.

    An object rather than two closures that call each other: those held each other through their cells,
    and with them every head and URL of the batch, which then waited for the garbage collector
    (~54,000 objects per 10,000 small files); this one is freed by reference counting.
    """

    def __init__(self, client: FastClient, files: Sequence[tuple[URL, int]], headers: Mapping[str, str],
                 conns: list[Connection]) -> None:
        self._client, self._files, self._headers, self._conns = client, files, headers, conns
        self.results: list[ResponseHead | None] = [None] * len(files)
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._position = 0

    def start(self, conn: Connection) -> None:
        """Give `conn` its next PIPELINE_DEPTH files, or end the batch when no lane has any left."""
        if conn._fetches:
            return  # the lane's last requests are still under way
        files = self._files
        if self._position < len(files) and conn.reusable:
            chunk = range(self._position, min(self._position + PIPELINE_DEPTH, len(files)))
            self._position = chunk.stop
            conn.fetch([(self._client._request(files[i][0], self._headers), files[i][1],
                         functools.partial(self._done, conn, i)) for i in chunk])
        elif not any(c._fetches for c in self._conns) and not self.finished.done():
            self.finished.set_result(None)

    def _done(self, conn: Connection, index: int, head: ResponseHead | None) -> None:
        self.results[index] = head
        self.start(conn)


class FastClient:
    """Keep-alive pools per (host, port), at most `limit` requests at once."""

    def __init__(self, *, user_agent: str, read_timeout: float, connect_timeout: float, limit: int,
                 splice_pool: Executor) -> None:
        self._user_agent = user_agent
        #: where splice(2) steps run (the daemon's pool, shut down with it)
        self.splice_pool = splice_pool
        self._read_timeout = read_timeout
        self._connect_timeout = connect_timeout
        self._slots = asyncio.Semaphore(limit)
        self._idle: dict[tuple[str, int], list[Connection]] = {}

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
                except StaleConnection:
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
        of the ones before (see `Connection.fetch`); `watch(socket)` holds each connection's socket
        meanwhile (the bandwidth sensor's, before the first request). Per file: its head, or None when it
        must be asked the general way (not a small 200, a broken or stale connection, a write error, no
        connection at all)."""
        host, port = files[0][0].raw_host or "", files[0][0].port or 80
        key = (host, port)
        conns: list[Connection] = []
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
        batch = _Batch(self, files, headers, conns)
        try:
            with contextlib.ExitStack() as watched:
                for conn in conns:
                    if conn.transport is not None:
                        watched.enter_context(watch(conn.transport.get_extra_info("socket")))
                for conn in list(conns):
                    batch.start(conn)
                if conns:
                    await batch.finished
        finally:
            for conn in conns:
                conn._fetches.clear()  # cancelled: no callback may touch the caller's descriptors any more
                self._release(key, conn)
        return batch.results

    def _pop_idle(self, key: tuple[str, int]) -> Connection | None:
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

    async def _connect(self, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(lambda: Connection(loop, self._read_timeout), host, port,
                                                       family=socket.AF_UNSPEC)
        except OSError as exc:  # TimeoutError and socket.gaierror included
            raise ConnectFailed(exc) from exc
        return conn

    def _release(self, key: tuple[str, int], conn: Connection) -> None:
        self._slots.release()
        if not (conn.complete() or conn.idle()):
            conn.close()
            return
        conn.park()
        idle = self._idle.setdefault(key, [])
        idle.append(conn)
        conn.idle_timer = asyncio.get_running_loop().call_later(KEEPALIVE, self._expire, key, conn)

    def _expire(self, key: tuple[str, int], conn: Connection) -> None:
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
