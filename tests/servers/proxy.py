"""A small forward HTTP proxy for tests: absolute-URI requests (a Content-Length body goes along: the
BITS upload protocol's BITS_POST) and CONNECT, to 127.0.0.1 only.

    proxy = ForwardProxy()                       # no authentication
    proxy = ForwardProxy(accounts={"u": "pw"})   # 407 + Basic challenge until Proxy-Authorization matches
    proxy = ForwardProxy(scheme="NTLM")          # always 407 offering only that scheme (no token ever)
    proxy.url  -> "http://127.0.0.1:PORT"

Every request is kept in `requests` as (method, target, Proxy-Authorization or "") so tests can see
what went through it and with which credentials. Anything not on 127.0.0.1 gets 403: test traffic
never leaves the machine. Each client connection carries one request (the answers say Connection: close).
Runs on its own event loop in a thread, like the other test servers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib

from yarl import URL

from .thread import ServerThread, stream_listener


class ForwardProxy:
    def __init__(self, accounts: dict[str, str] | None = None, scheme: str = "Basic") -> None:
        self.accounts = accounts or {}
        self.scheme = scheme
        self.requests: list[tuple[str, str, str]] = []
        self._server = ServerThread(stream_listener(self._client), "forward-proxy")
        self.port = self._server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def targets(self) -> list[str]:
        return [target for _, target, _ in self.requests]

    def stop(self) -> None:
        self._server.stop()

    def _authorized(self, header: str) -> bool:
        if self.scheme != "Basic":
            return False
        if not self.accounts:
            return True
        wanted = {"Basic " + base64.b64encode(f"{u}:{p}".encode()).decode() for u, p in self.accounts.items()}
        return header in wanted

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line, *lines = head.split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers = [line for line in lines if line]
            auth = next((h.split(":", 1)[1].strip() for h in headers if h.lower().startswith("proxy-authorization:")),
                        "")
            self.requests.append((method, target, auth))
            if (self.accounts or self.scheme != "Basic") and not self._authorized(auth):
                challenge = 'Basic realm="test-proxy"' if self.scheme == "Basic" else self.scheme
                await _answer(writer, f"407 Proxy Authentication Required\r\nProxy-Authenticate: {challenge}")
                return
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                if host != "127.0.0.1":
                    await _answer(writer, "403 Forbidden")
                    return
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
                return
            url = URL(target)
            if not url.is_absolute() or url.host != "127.0.0.1":
                await _answer(writer, "403 Forbidden")
                return
            length = int(next((h.split(":", 1)[1] for h in headers if h.lower().startswith("content-length:")), 0))
            up_reader, up_writer = await asyncio.open_connection(url.host, url.port)
            kept = [h for h in headers if not h.lower().startswith(("proxy-", "connection:"))]
            forwarded = "".join(f"{h}\r\n" for h in kept)
            up_writer.write(f"{method} {url.raw_path_qs} HTTP/1.1\r\n{forwarded}Connection: close\r\n\r\n".encode("latin-1"))
            if length:
                up_writer.write(await reader.readexactly(length))
            await up_writer.drain()
            await _pipe(up_reader, writer)
            up_writer.close()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


async def _answer(writer: asyncio.StreamWriter, status_and_headers: str) -> None:
    writer.write(f"HTTP/1.1 {status_and_headers}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close so the other side sees it."""
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
