"""A download server that misbehaves on request, for testing transports and the daemon.

Every path serves deterministic pseudo-random content; the query string picks
the size and the faults. URL grammar (all parameters optional):

    /<any/path>?size=N[k|m]    body of N bytes (k = KiB, m = MiB; default 64k);
                               content depends on the path, size and version only
      &fail=K                  the faults below hit only the first K requests of
                               this exact URL (default: every request)
      &status=CODE             answer CODE with a short text body, no file
      &retry_after=S           Retry-After: S (seconds) ...
      &retry_after=date:S      ... or an HTTP date S seconds ahead
      &drop=N                  send N body bytes, then close the connection
      &corrupt=N               the file's byte at offset N goes out inverted, when
                               the answer covers it (a piece gone bad on the way)
      &stall=S&stall_at=N      after N body bytes (default 0), send nothing for S seconds
      &trickle=MS              send the body in 4 KiB pieces, MS milliseconds apart
      &changing=1              each request sees a new version (content, ETag,
                               Last-Modified); with fail=K the version stops at K
      &etag=strong|weak|none   kind of ETag (default strong)
      &lastmod=0               no Last-Modified header
      &chunked=1               no Content-Length: chunked transfer encoding
      &close=1                 Connection: close, and close it after the answer
      &ranges=0                ignore Range: always 200 with the whole file
      &bad_range=1             answer a Range request with a 206 whose
                               Content-Range starts one byte late
      &bad_range=always        ... and answer whole-file requests the same way
      &digest=KIND             a digest of the file: repr (Repr-Digest), content
                               (Content-Digest of what is sent), legacy (Digest:
                               SHA-256=), bad (a Repr-Digest of other bytes)
      &redirect=N              302 to this URL with redirect=N-1 (0 serves the file)
      &redirect=loop           302 to this very URL, forever
      &disposition=NAME        Content-Disposition: attachment; filename="NAME"

Without faults it is a correct HTTP/1.1 file server: Range (single ranges),
If-Range against the strong ETag or the Last-Modified date, 416 past the end.

`FaultyServer` runs it on 127.0.0.1 in a thread with its own loop (usable from
sync fixtures and by other processes); `python -m tests.servers.faulty --port N`
runs it in the foreground. `content(path_qs)` / `sha256(path_qs)` give what a
correct download of a URL ends with.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import email.utils
import functools
import hashlib
import random
import re
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit

from aiohttp import web

from .thread import ServerThread, app_listener

DEFAULT_SIZE = 64 * 1024
#: Bytes per write for the normal body: big enough not to be the bottleneck.
PIECE = 256 * 1024
TRICKLE_PIECE = 4096
#: A fixed epoch so Last-Modified is stable across runs; each version adds a second.
_EPOCH = 1_700_000_000
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_SUFFIXES = {"k": 1024, "m": 1024 * 1024}


@dataclass
class Request:
    """One request as the server saw it, for assertions on what the client sent."""

    method: str
    path_qs: str
    headers: dict[str, str]
    #: client (host, port): equal ports mean a reused connection
    peer: tuple[str, int]
    status: int = 0
    bytes_sent: int = 0

    @property
    def range(self) -> str | None:
        return self.headers.get("Range")

    @property
    def if_range(self) -> str | None:
        return self.headers.get("If-Range")


def parse_size(text: str) -> int:
    text = text.strip().lower()
    if text and text[-1] in _SUFFIXES:
        return int(text[:-1]) * _SUFFIXES[text[-1]]
    return int(text)


@functools.lru_cache(maxsize=16)
def _generate(path: str, size: int, version: int) -> bytes:
    return random.Random(f"{path}:{size}:{version}").randbytes(size)


def _params(path_qs: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit("/" + path_qs.lstrip("/"))
    return parts.path, dict(parse_qsl(parts.query))


def _stable_version(query: dict[str, str]) -> int:
    """The version a client ends up with: the last one a changing URL moves to."""
    return int(query.get("fail", 0)) if query.get("changing") == "1" else 0


def content(path_qs: str) -> bytes:
    """The bytes a correct download of `path_qs` ends with."""
    path, query = _params(path_qs)
    return _generate(path, parse_size(query.get("size", str(DEFAULT_SIZE))), _stable_version(query))


def sha256(path_qs: str) -> str:
    return hashlib.sha256(content(path_qs)).hexdigest()


@dataclass
class _Version:
    """What one request serves: body and validators."""

    body: bytes
    etag: str | None
    last_modified: str | None


def _version(path: str, query: dict[str, str], index: int) -> _Version:
    size = parse_size(query.get("size", str(DEFAULT_SIZE)))
    number = 0
    if query.get("changing") == "1":
        number = min(index, int(query["fail"])) if "fail" in query else index
    body = _generate(path, size, number)
    tag = hashlib.sha256(f"{path}:{size}:{number}".encode()).hexdigest()[:16]
    kind = query.get("etag", "strong")
    etag = None if kind == "none" else (f'W/"{tag}"' if kind == "weak" else f'"{tag}"')
    last_modified = None if query.get("lastmod") == "0" else email.utils.formatdate(_EPOCH + number, usegmt=True)
    return _Version(body, etag, last_modified)


class _Unsatisfiable(Exception):
    """The Range starts past the end: 416."""


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive, None for no (usable) Range; raises _Unsatisfiable past the end."""
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None or match[1] == match[2] == "":
        return None
    if match[1] == "":
        return max(0, size - int(match[2])), size - 1
    first = int(match[1])
    last = min(int(match[2]), size - 1) if match[2] else size - 1
    if first >= size or first > last:
        raise _Unsatisfiable
    return first, last


def _digest_header(kind: str | None, body: bytes, sent: bytes) -> dict[str, str]:
    """RFC 9530's Repr-Digest / Content-Digest, or RFC 3230's Digest, for `digest=KIND`."""
    def sha256(data: bytes) -> str:
        return base64.b64encode(hashlib.sha256(data).digest()).decode()

    if kind == "repr":
        return {"Repr-Digest": f"sha-256=:{sha256(body)}:"}
    if kind == "content":
        return {"Content-Digest": f"sha-256=:{sha256(sent)}:"}
    if kind == "legacy":
        return {"Digest": f"SHA-256={sha256(body)}"}
    if kind == "bad":
        return {"Repr-Digest": f"sha-256=:{sha256(body + b'x')}:"}
    return {}


class _App:
    """The request handler plus the per-URL request counters that drive `fail=K`."""

    def __init__(self, requests: list[Request]) -> None:
        self.requests = requests
        self._counts: dict[str, int] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else ("", 0)
        record = Request(request.method, request.path_qs, dict(request.headers), tuple(peer[:2]))
        self.requests.append(record)
        index = self._counts.get(request.path_qs, 0)
        self._counts[request.path_qs] = index + 1
        query = dict(request.query)
        faulty = index < int(query.get("fail", 1 << 62))
        response = await self._respond(request, record, query, index, faulty)
        record.status = response.status
        return response

    async def _respond(
        self, request: web.Request, record: Request, query: dict[str, str], index: int, faulty: bool
    ) -> web.StreamResponse:
        redirect = query.get("redirect")
        if redirect is not None and redirect != "0":
            if redirect != "loop":
                query["redirect"] = str(int(redirect) - 1)
            raise web.HTTPFound(f"{request.path}?{urlencode(query)}")
        if faulty and "status" in query:
            return self._status(int(query["status"]), query.get("retry_after"))
        version = _version(request.path, query, index)
        size = len(version.body)
        headers = {"Accept-Ranges": "bytes" if query.get("ranges") != "0" else "none"}
        if version.etag:
            headers["ETag"] = version.etag
        if version.last_modified:
            headers["Last-Modified"] = version.last_modified
        if "disposition" in query:
            headers["Content-Disposition"] = f'attachment; filename="{query["disposition"]}"'
        first, last, status = 0, size - 1, 200
        try:
            wanted = self._wanted_range(request, query, version, size)
        except _Unsatisfiable:
            headers["Content-Range"] = f"bytes */{size}"
            return web.Response(status=416, headers=headers)
        bad_range = query.get("bad_range") if faulty else None
        if wanted is not None:
            first, last = wanted
            status = 206
            shift = 1 if bad_range else 0
            headers["Content-Range"] = f"bytes {first + shift}-{last}/{size}"
        elif bad_range == "always":
            status = 206
            headers["Content-Range"] = f"bytes 1-{last}/{size}"
        sent = version.body[first : last + 1]
        at = int(query["corrupt"]) - first if faulty and "corrupt" in query else -1
        if 0 <= at < len(sent):
            sent = sent[:at] + bytes([sent[at] ^ 0xFF]) + sent[at + 1:]
        headers.update(_digest_header(query.get("digest"), version.body, version.body[first : last + 1]))
        response = web.StreamResponse(status=status, headers=headers)
        if query.get("chunked") == "1":
            response.enable_chunked_encoding()
        else:
            response.content_length = last - first + 1
        if faulty and query.get("close") == "1":
            response.force_close()
        await response.prepare(request)
        record.status = status
        await self._send(request, response, record, sent, query if faulty else {})
        return response

    @staticmethod
    def _wanted_range(
        request: web.Request, query: dict[str, str], version: _Version, size: int
    ) -> tuple[int, int] | None:
        if query.get("ranges") == "0":
            return None
        if_range = request.headers.get("If-Range")
        if if_range is not None:
            strong = version.etag is not None and not version.etag.startswith("W/")
            if not ((strong and if_range == version.etag) or if_range == version.last_modified):
                return None
        return _parse_range(request.headers.get("Range"), size)

    @staticmethod
    def _status(status: int, retry_after: str | None) -> web.Response:
        headers = {}
        if retry_after is not None:
            if retry_after.startswith("date:"):
                retry_after = email.utils.formatdate(time.time() + float(retry_after[5:]), usegmt=True)
            headers["Retry-After"] = retry_after
        return web.Response(status=status, text=f"fault injected: {status}\n", headers=headers)

    @staticmethod
    async def _send(
        request: web.Request, response: web.StreamResponse, record: Request, body: bytes, faults: dict[str, str]
    ) -> None:
        drop = int(faults["drop"]) if "drop" in faults else None
        stall_at = int(faults.get("stall_at", 0)) if "stall" in faults else None
        trickle = float(faults["trickle"]) / 1000 if "trickle" in faults else None
        piece = TRICKLE_PIECE if trickle is not None else PIECE
        sent = 0
        while sent < len(body):
            end = min(len(body), sent + piece)
            for limit in (drop, stall_at):
                if limit is not None and sent < limit < end:
                    end = limit
            if stall_at == sent:
                await asyncio.sleep(float(faults["stall"]))
                stall_at = None
            if drop == sent:
                assert request.transport is not None
                request.transport.close()  # flushes what was written, then FIN
                raise asyncio.CancelledError  # aiohttp's way to end a handler whose client is gone, quietly
            await response.write(body[sent:end])
            sent = end
            record.bytes_sent = sent
            if trickle is not None:
                await asyncio.sleep(trickle)
        await response.write_eof()


@dataclass
class FaultyServer:
    """The fault-injecting server on 127.0.0.1 in a background thread; `stop()` when done."""

    port: int = 0
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server = ServerThread(app_listener(self._app, self.port, shutdown_timeout=0.1,
                                                 handler_cancellation=True), "faulty-server")
        self.port = self._server.port

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", _App(self.requests).handle)
        return app

    def url(self, path_qs: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path_qs.lstrip('/')}"

    @property
    def bytes_sent(self) -> int:
        """Body bytes sent over all requests: what a client re-downloaded shows here."""
        return sum(r.bytes_sent for r in self.requests)

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> FaultyServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8080)
    port = parser.parse_args().port
    server = FaultyServer(port)
    print(f"serving on {server.url('')} (Ctrl-C stops)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
