"""The HTTP/1.1 response head as the lean GET client reads it, and the ways that client fails.

A request the lean client cannot make, or an answer it does not take (1xx, chunked, odd heads),
raises Unsupported before any body byte is handed out, and the caller asks aiohttp instead.
"""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

#: Request headers that change framing or the connection: such requests go to aiohttp.
_FOREIGN_HEADERS = frozenset({"host", "connection", "content-length", "transfer-encoding", "te", "upgrade",
                              "expect", "authorization", "cookie", "proxy-authorization"})


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


class StaleConnection(Exception):
    """A reused connection the server had closed before it saw the request."""


def plain_request(url: URL, headers: Mapping[str, str]) -> bool:
    """Whether `FastClient` can make this request at all (the response may still be Unsupported)."""
    return (url.scheme == "http" and url.user is None and url.password is None
            and not any(name.lower() in _FOREIGN_HEADERS or "\r" in name + value or "\n" in name + value
                        for name, value in headers.items()))


class ResponseHead:
    __slots__ = ("status", "reason", "headers", "content_length", "keep_alive", "lines")

    def __init__(self, status: int, reason: str, headers: CIMultiDictProxy[str], content_length: int | None,
                 keep_alive: bool, lines: tuple[str, ...]) -> None:
        self.status, self.reason, self.headers = status, reason, headers
        self.content_length, self.keep_alive = content_length, keep_alive
        #: the header lines as the server sent them (BITS_FILE_PROPERTY_ID_HTTP_RESPONSE_HEADERS shows these)
        self.lines = lines


def parse_head(raw: bytes) -> ResponseHead:
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
    return ResponseHead(status, reason, CIMultiDictProxy(headers), length, keep_alive, tuple(lines[1:]))
