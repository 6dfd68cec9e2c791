"""Admission of API connections: a cap per uid, a deadline for each request's headers, quiet accept errors.

sshd's MaxStartups and LoginGraceTime for the API socket. One local user must not fill the
daemon's descriptor table with idle connections (every other user's `openbits list` then waits),
nor hold a connection forever by sending a header byte at a time. Root is trusted and exempt from
the per-user cap; a descriptor reserve is kept for the store, the brokers and the transfers.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import resource
import socket
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from ..identity import peer_credentials
from ..model.config import Config
from ..ratelog import RateLimitedLog

log = logging.getLogger("openbits.api")

#: Descriptors never given to API connections: the store, brokers, transfers and reply files need them.
MIN_RESERVE = 512
#: Seconds an idle keep-alive connection stays open; longer than a client's pool keeps it (aiohttp: 15 s).
KEEPALIVE = 60.0
#: Asked of a connection over the cap before it is closed: a client shows this rather than a bare reset.
_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s")


def raise_descriptor_limit() -> int:
    """RLIMIT_NOFILE to its hard limit; returns how many descriptors API connections may hold."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return max(16, soft - max(MIN_RESERVE, soft // 4))


class ConnectionLimits:
    """Open API connections per peer uid, against the configured cap and the descriptor budget."""

    def __init__(self, config: Callable[[], Config], total: int) -> None:
        self._config = config
        self.total = total
        self._open: collections.Counter[int] = collections.Counter()
        self._count = 0
        self._idle_since: float | None = time.monotonic()
        self._refused = RateLimitedLog(log)

    def admit(self, uid: int) -> str | None:
        """None when uid may open one more connection (it is counted); else why not."""
        cap = self._config().max_connections_per_user
        if uid != 0 and self._open[uid] >= cap:
            reason = f"uid {uid} already holds {cap} connections (max_connections_per_user)"
        elif uid != 0 and self._count >= self.total:
            reason = f"the daemon holds {self._count} connections, all its descriptors allow"
        else:
            self._open[uid] += 1
            self._count += 1
            self._idle_since = None
            return None
        self._refused("connection refused: %s", reason)
        return reason

    def release(self, uid: int) -> None:
        self._count -= 1
        if not self._count:
            self._idle_since = time.monotonic()
        self._open[uid] -= 1
        if not self._open[uid]:
            del self._open[uid]

    def idle_for(self) -> float:
        """Seconds since the last connection closed (0 while one is open)."""
        return 0.0 if self._idle_since is None else time.monotonic() - self._idle_since


class _Connection(RequestHandler):
    """aiohttp's handler, admitted by peer uid, with a deadline from a request's first byte to its last header."""

    def __init__(self, limits: ConnectionLimits, deadline: Callable[[], float], manager: web.Server,
                 **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._deadline = deadline
        #: None until admitted; then the uid that SO_PEERCRED reported (read once per connection)
        self.peer_uid: int | None = None
        self._awaiting_headers = True
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock: socket.socket | None = transport.get_extra_info("socket")
        try:
            uid = peer_credentials(sock).uid if sock is not None else None
        except (OSError, ValueError):
            uid = None
        refusal = "the caller's identity is unknown" if uid is None else self._limits.admit(uid)
        if refusal is not None:
            text = f"openbitsd: {refusal}; close some connections and try again\n".encode()
            transport.write(_REFUSAL % (len(text), text))  # type: ignore[attr-defined]
            transport.close()
            return
        self.peer_uid = uid
        super().connection_made(transport)
        self._arm()  # a connection that never sends a request is closed at the same deadline

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.peer_uid is None:
            return
        self._disarm()
        self._limits.release(self.peer_uid)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.peer_uid is None:
            return
        parsed = self._request_count
        super().data_received(data)
        if self._awaiting_headers:
            if self._request_count != parsed:
                self._awaiting_headers = False  # the headers came in time; parse() bounds the body
                self._disarm()
            elif self._header_timer is None:
                self._arm()

    async def finish_response(self, *args: Any, **kwargs: Any) -> Any:
        result = await super().finish_response(*args, **kwargs)
        self._awaiting_headers = True  # the next request's first byte starts its own deadline
        return result

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        """A client's malformed or aborted request is its mistake: one WARNING line, no traceback."""
        exc = kwargs.get("exc_info")
        if isinstance(exc, (HttpProcessingError, ConnectionError)):
            _client_mistake(f"a request of uid {self.peer_uid} failed: {type(exc).__name__}: {exc}")
            return
        super().log_exception(*args, **kwargs)

    def _arm(self) -> None:
        self._header_timer = self._loop.call_later(self._deadline(), self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        _slow(f"closed a connection of uid {self.peer_uid}: no complete request headers within "
              f"{self._deadline():.0f} s (request_timeout)")
        self.force_close()


_slow = RateLimitedLog(log)
_client_mistake = RateLimitedLog(log)


async def listen(runner: web.AppRunner, sock: socket.socket, limits: ConnectionLimits,
                 config: Callable[[], Config]) -> asyncio.Server:
    """Serve runner's application on the listening sock, every connection admitted by `limits`."""
    loop = asyncio.get_running_loop()
    server = runner.server
    assert server is not None, "runner.setup() first"

    def connection() -> _Connection:
        return _Connection(limits, lambda: config().request_timeout, server, loop=loop,
                           keepalive_timeout=KEEPALIVE, access_log=None)

    quiet_accept_errors(loop)
    return await loop.create_server(connection, sock=sock, backlog=512)


_ACCEPT_MESSAGES = ("socket.accept() out of system resource", "Error on transport creation for incoming connection")


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """asyncio logs a traceback per failed accept(2) (EMFILE while the table is full): say it once per interval."""
    said = RateLimitedLog(log)

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") in _ACCEPT_MESSAGES:
            said("%s: %s", context["message"], context.get("exception"))
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
