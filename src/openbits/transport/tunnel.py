"""CONNECT tunnels whose proxy logon is a security context (NTLM, Negotiate): the connector makes them itself.

aiohttp sends one CONNECT and closes the connection on a 407, but NTLM's legs must run on one connection,
and Negotiate's last token - the proxy proving who it is (mutual authentication) - comes with the 200 that
aiohttp keeps to itself. So for a job whose proxy took such a scheme, `TunnelConnector` writes the CONNECTs
on one socket itself, leg after leg, checks the proxy's last token and hands the open tunnel to aiohttp for
TLS. The job's requests carry its `TunnelLogon`'s marker in their proxy headers, which aiohttp keys pooled
connections by: a tunnel one job's credentials opened never carries another job's request.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import secrets
import socket
import weakref
from typing import Any

import aiohttp
from yarl import URL

from ..enums import AuthTarget, ErrorContext
from ..errors import BitsError, ErrorCode, TransferError
from .credentials import Contexts, SecurityContext

#: the proxy header that names a job's TunnelLogon (never sent: the connector writes its own CONNECT)
MARKER = "X-Openbits-Tunnel-Logon"
NAMES = {"negotiate": "Negotiate", "ntlm": "NTLM"}
#: CONNECTs on one connection at most (NTLM takes two)
_LEGS = 4
#: a proxy's answer to a CONNECT, head and body, at most
_MAX_ANSWER = 64 * 1024
#: logons by marker while a job's transfer holds them
_LOGONS: weakref.WeakValueDictionary[str, TunnelLogon] = weakref.WeakValueDictionary()


def context_token(headers: Any, scheme: str, names: tuple[str, ...]) -> bytes | None:
    """The base64 token after `scheme` in the first of the headers `names` that has one (None: none, or not base64)."""
    for name in names:
        for value in headers.get_all(name, ()) if hasattr(headers, "get_all") else headers.getall(name, ()):
            found, _, token = value.strip().partition(" ")
            if found.lower() == scheme and token.strip():
                try:
                    return base64.b64decode(token.strip(), validate=True)
                except ValueError:
                    return None
    return None


def refused_logon(proxy: URL, scheme: str, why: str) -> TransferError:
    return TransferError(ErrorCode.http(407), f"The proxy {proxy.origin()} refused the job's {NAMES[scheme]} logon "
                         f"({why}): check the job's PROXY credentials (setcredentials JOB PROXY {scheme.upper()} USER) "
                         "or the Kerberos ticket (klist)", ErrorContext.REMOTE_FILE, 407, transient=False)


def unproven(proxy: URL, scheme: str, exc: BitsError) -> TransferError:
    """The proxy's last token did not check out: it is not who the job's logon was for."""
    return TransferError(ErrorCode.ERROR_INTERNET_SECURE_FAILURE, f"The proxy {proxy.origin()} took the job's "
                         f"{NAMES[scheme]} logon but did not prove who it is: {exc.description}",
                         ErrorContext.REMOTE_FILE, transient=False)


async def first_token(context: SecurityContext, proxy: URL, scheme: str) -> bytes:
    try:
        return await context.step(None) or b""
    except BitsError as exc:
        raise TransferError(ErrorCode.http(407), f"The proxy {proxy.origin()} wants {NAMES[scheme]}: "
                            f"{exc.description}", ErrorContext.REMOTE_FILE, 407, transient=False) from None


class TunnelLogon:
    """One job's logon to its proxy with a security context, for the tunnels TunnelConnector opens."""

    def __init__(self, scheme: str, contexts: Contexts, proxy_host: str) -> None:
        self.scheme, self._contexts, self._proxy_host = scheme, contexts, proxy_host
        self.marker = secrets.token_hex(16)
        _LOGONS[self.marker] = self

    async def open(self, proxy: URL, target: URL, connect_timeout: float | None) -> socket.socket:
        """A connected socket with the tunnel to target's host and port open, the proxy having taken the logon."""
        context = await self._contexts(self.scheme, self._proxy_host, AuthTarget.PROXY, None)
        assert context is not None, "a logon is made only for a job with credentials or a ticket to try"
        loop = asyncio.get_running_loop()
        sock: socket.socket | None = None
        try:
            async with asyncio.timeout(connect_timeout):
                family, kind, proto, _, address = (await loop.getaddrinfo(proxy.raw_host, proxy.port,
                                                                          type=socket.SOCK_STREAM))[0]
                sock = socket.socket(family, kind, proto)
                sock.setblocking(False)
                await loop.sock_connect(sock, address)
            await self._legs(loop, sock, context, proxy, target)
            return sock
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        finally:
            await context.close()

    async def _legs(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, context: SecurityContext,
                    proxy: URL, target: URL) -> None:
        authority = f"{target.raw_host}:{target.port}"
        token = await first_token(context, proxy, self.scheme)
        for _ in range(_LEGS):
            await loop.sock_sendall(sock, (
                f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nProxy-Connection: keep-alive\r\n"
                f"Proxy-Authorization: {NAMES[self.scheme]} {base64.b64encode(token).decode()}\r\n\r\n").encode())
            status, headers = await _answer(loop, sock, proxy)
            server_token = context_token(headers, self.scheme, ("Proxy-Authentication-Info", "Proxy-Authenticate"))
            if status == 200:
                if server_token is not None and not context.complete:
                    try:
                        await context.step(server_token, True)
                    except BitsError as exc:
                        raise unproven(proxy, self.scheme, exc) from None
                return
            if status != 407:
                raise TransferError(ErrorCode.http(status), f"The proxy {proxy.origin()} refused the tunnel to "
                                    f"{authority} with HTTP {status}", ErrorContext.REMOTE_FILE, status,
                                    transient=status >= 500)
            if server_token is None or context.complete:
                raise refused_logon(proxy, self.scheme, "HTTP 407 again")
            try:
                token = await context.step(server_token) or b""
            except BitsError as exc:
                raise refused_logon(proxy, self.scheme, exc.description) from None
        raise refused_logon(proxy, self.scheme, f"no answer after {_LEGS} legs")


async def _answer(loop: asyncio.AbstractEventLoop, sock: socket.socket, proxy: URL) -> tuple[int, Any]:
    """The status and headers of the proxy's answer to a CONNECT, its body (if any) read past."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await loop.sock_recv(sock, _MAX_ANSWER)
        if not chunk or len(data) + len(chunk) > _MAX_ANSWER:
            raise TransferError(ErrorCode.ERROR_INTERNET_CONNECTION_RESET, f"The proxy {proxy.origin()} closed the "
                                "connection during the logon of a tunnel; the job retries later",
                                ErrorContext.GENERAL_TRANSPORT, transient=True)
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, _, rest = head.partition(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise TransferError(ErrorCode.ERROR_INTERNET_CONNECTION_RESET, f"The proxy {proxy.origin()} did not answer "
                            f"the CONNECT in HTTP ({status_line[:80]!r})", ErrorContext.GENERAL_TRANSPORT,
                            transient=True)
    headers = http.client.parse_headers(io.BytesIO(rest + b"\r\n\r\n"))
    status = int(parts[1])
    length = int(headers.get("Content-Length", "0") or 0) if status != 200 else 0
    while len(body) < length:
        chunk = await loop.sock_recv(sock, min(_MAX_ANSWER, length - len(body)))
        if not chunk:
            break
        body += chunk
    return status, headers


class TunnelConnector(aiohttp.TCPConnector):
    """aiohttp's connector, which opens a tunnel for a request marked with a TunnelLogon itself (see above)."""

    async def _create_proxy_connection(self, req: aiohttp.ClientRequest, traces: list[Any],
                                       timeout: aiohttp.ClientTimeout) -> tuple[asyncio.BaseTransport, Any]:
        marker = None if req.proxy_headers is None else req.proxy_headers.get(MARKER)
        logon = None if marker is None else _LOGONS.get(marker)
        if logon is None or not req.is_ssl() or req.proxy is None:
            return await super()._create_proxy_connection(req, traces, timeout)
        try:
            sock = await logon.open(req.proxy, req.url, timeout.sock_connect)
        except OSError as exc:  # as aiohttp tells a proxy it cannot reach
            raise aiohttp.ClientProxyConnectionError(req.connection_key, exc) from exc
        # aiohttp's own way from an open socket to its TLS connection, as its CONNECT takes it (3.14)
        return await self._wrap_existing_connection(self._factory, timeout=timeout, ssl=self._get_ssl_context(req),
                                                    sock=sock, server_hostname=req.server_hostname or req.host,
                                                    req=req)
