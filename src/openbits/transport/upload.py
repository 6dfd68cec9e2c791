"""The client half of the BITS upload protocol: Ping, Create-Session, Fragment, Close-Session, Cancel-Session.

The server acknowledges every fragment with BITS-Received-Content-Range, the
next byte it expects; that offset, never a local guess, is the upload's
progress and its resume point. A resumed session first sends a one-byte
probe (bytes 0-0, which the server never rewrites) to learn that offset, so
after a crash nothing is sent twice but the probe and a fragment cut short.

References: bits-upload-protocol.md, create-session.md, fragment.md, the
Ack pages, handling-server-application-errors.md, file-transfer-consistency.md.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from aiohttp.payload import Payload
from multidict import CIMultiDictProxy
from yarl import URL

from ..enums import ErrorContext
from ..errors import ErrorCode, TransferError
from ..uploadprotocol import (
    BG_E_CLIENT_SERVER_PROTOCOL_MISMATCH,
    BG_E_SESSION_NOT_FOUND,
    LEGACY_FRAGMENT_LIMIT,
    METHOD,
    PROTOCOL_BITS_1_5,
    Header,
    PacketType,
    format_content_range,
    parse_hex,
    parse_received_range,
)
from .base import Throttle, status_phrase
from .auth import ChallengeAuth
from .fragments import INITIAL_FRAGMENT, MAX_PACED_FRAGMENT, MIN_FRAGMENT, FileBody, FragmentSizer, PacedBody, \
    aligned, fragment_limit
from .httperrors import certificate_refused, display_url, proxy_refused

#: The Ack of a completing fragment waits for the server application (IIS allows it five minutes).
FINAL_ACK_TIMEOUT = 330.0


@dataclass(frozen=True)
class UploadSpec:
    """One attempt at one upload, as the core asks for it."""

    url: str
    #: The local file, opened for reading by the file broker as the owner (or the helper).
    fd: int
    #: Size and modification time the upload began with; any change is BG_E_LOCAL_FILE_CHANGED.
    size: int
    mtime_ns: int
    #: The local file's name, for errors; its last component is the Content-Name of the first fragment.
    local_path: str
    #: The session to continue, or None for a new one.
    session_id: str | None
    headers: Mapping[str, str]
    #: The session's BITS-Host-Id: the host its packets go to instead of the URL's.
    session_host: str | None = None


@dataclass(frozen=True)
class HostId:
    """Create-Session's BITS-Host-Id and BITS-Host-Id-Fallback-Timeout (seconds; None: never fall back)."""

    host: str
    fallback_timeout: int | None


class HostWatch(Protocol):
    """Told whether packets reach the session's BITS-Host-Id host (the core keeps the fallback timer)."""

    async def unreachable(self) -> None:
        """No connection to it (BITS-Host-Id-Fallback-Timeout counts from the first such failure)."""

    def reached(self) -> None:
        """It answered: the timer starts again at the next failure."""


class UploadSink(Protocol):
    """Implemented by the core; called on the event loop thread."""

    async def set_session(self, session_id: str | None, host: HostId | None = None) -> None:
        """The session the bytes go to (None: the server lost it, progress is 0). Durable before returning."""

    def acknowledged(self, offset: int) -> None:
        """The server has bytes [0, offset) of the file."""


class SessionLost(TransferError):
    """BG_E_SESSION_NOT_FOUND: the server no longer knows the session (expired, cancelled, another server)."""

    def __init__(self, description: str) -> None:
        super().__init__(BG_E_SESSION_NOT_FOUND, description, ErrorContext.REMOTE_FILE, 400, transient=True)


def local_file_changed(path: str) -> TransferError:
    """file-transfer-consistency.md: an upload whose file changes size or time stamp goes to ERROR."""
    return TransferError(ErrorCode.BG_E_LOCAL_FILE_CHANGED, f"{path} changed (size or modification time) during "
                         "the upload; cancel the job and upload the new version in a new one",
                         ErrorContext.LOCAL_FILE, transient=False)


@dataclass(frozen=True)
class _Ack:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def received(self, shown: str) -> int:
        try:
            return parse_received_range(self.headers[Header.RECEIVED_CONTENT_RANGE])
        except (KeyError, ValueError):
            raise TransferError(ErrorCode.BG_E_INSUFFICIENT_HTTP_SUPPORT, f"the server's Ack for {shown} has no valid "
                                "BITS-Received-Content-Range; is it a BITS upload server?", transient=False) from None


def is_transient(status: int, context: ErrorContext) -> bool:
    """handling-server-application-errors.md for the application; for the server, 5xx, 408 and 429 retry."""
    if context == ErrorContext.REMOTE_APPLICATION:
        if 300 <= status < 400:
            return status not in (300, 301, 302, 303, 304, 305, 307)
        if 400 <= status < 500:
            return status in (408, 409)
        return status not in (501, 505)
    return (status >= 500 and status not in (501, 505)) or status in (408, 429)


def _ack_error(ack: _Ack, packet: PacketType, shown: str) -> TransferError:
    """A refused packet as BITS reports it: the server's BITS-Error-Code and -Context, else the HTTP status."""
    try:
        code = parse_hex(ack.headers[Header.ERROR_CODE])
    except (KeyError, ValueError):
        code = ErrorCode.http(ack.status)
    try:
        context = ErrorContext(parse_hex(ack.headers[Header.ERROR_CONTEXT]))
    except (KeyError, ValueError):
        context = ErrorContext.REMOTE_FILE
    if context not in (ErrorContext.REMOTE_FILE, ErrorContext.REMOTE_APPLICATION):
        context = ErrorContext.REMOTE_FILE
    said = " ".join(ack.body[:300].decode("utf-8", "replace").split())
    phrase = status_phrase(ack.status)
    who = "server application" if context == ErrorContext.REMOTE_APPLICATION else "server"
    description = f"the {who} refused the {packet.value} packet for {shown}: HTTP {ack.status} {phrase}"
    if said:
        description += f" ({said})"
    if code == BG_E_SESSION_NOT_FOUND:
        return SessionLost(description)
    transient = is_transient(ack.status, context)
    return TransferError(code, description + ("; the job retries later" if transient else ""), context, ack.status,
                         transient=transient)


def on_host(url: URL, host: str | None) -> URL:
    """`url` with the server portion replaced by a session's BITS-Host-Id (create-session.md: every packet
    after Create-Session goes there, or the upload may start again on another server of the farm)."""
    return url if host is None else url.with_host(host)


def _host_id(url: URL, headers: CIMultiDictProxy[str]) -> HostId | None:
    """The Ack's BITS-Host-Id, if it names a host (a name or an address; anything else is ignored)."""
    host = headers.get(Header.HOST_ID, "").strip()
    if not host:
        return None
    try:
        on_host(url, host)
    except ValueError:
        return None
    try:
        fallback: int | None = max(0, int(headers.get(Header.HOST_ID_FALLBACK_TIMEOUT, "")))
    except ValueError:
        fallback = None
    return HostId(host, fallback)


def _wire_error(exc: BaseException, shown: str) -> TransferError:
    """Anything on the wire is worth a retry, except a certificate that is not valid and what a proxy refused."""
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return proxy_refused(exc, shown)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return certificate_refused(exc, shown)
    if isinstance(exc, aiohttp.ClientSSLError):
        return TransferError(ErrorCode.ERROR_INTERNET_SECURE_FAILURE, f"uploading to {shown}: the TLS handshake "
                             f"failed ({exc}); does the server want a client certificate (setclientcertificate)?",
                             ErrorContext.GENERAL_TRANSPORT, transient=False)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        code = ErrorCode.ERROR_INTERNET_NAME_NOT_RESOLVED
    elif isinstance(exc, aiohttp.ClientConnectorError):
        code = ErrorCode.ERROR_INTERNET_CANNOT_CONNECT
    elif isinstance(exc, asyncio.TimeoutError):
        code = ErrorCode.ERROR_INTERNET_TIMEOUT
    else:
        code = ErrorCode.ERROR_INTERNET_CONNECTION_RESET
    return TransferError(code, f"uploading to {shown}: {exc or type(exc).__name__}; the job resumes from the "
                         "server's received range", ErrorContext.GENERAL_TRANSPORT, transient=True)


class UploadClient:
    """Sends one file's packets on a shared aiohttp session (BITS_POST is an ordinary method to aiohttp),
    through `proxy` (the job's, core/proxy.py; https through a CONNECT tunnel) and answering the server's
    and the proxy's challenges with `auth` (core/tokens.http_auth). The Ping goes first (to a BITS-Host-Id
    server too) and has no body, so a challenge is met before any fragment, whose paced body could not
    be sent twice. A BITS-Host-Id server gets the same credentials as the URL's."""

    def __init__(self, session: aiohttp.ClientSession, reads: Executor, proxy: str | None = None,
                 auth: ChallengeAuth | None = None, hosts: HostWatch | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        """`tls`: the context of the job's TLS settings (security flags, CA files, client certificate), the one
        its downloads get (HttpTransport.tls)."""
        self._session = session
        self._ssl: ssl.SSLContext | bool = True if tls is None else tls
        #: where fragments are read from the file (Pools.reads)
        self._reads = reads
        self._proxy = proxy
        self._auth = auth
        self._middlewares = None if auth is None else (auth,)
        self._hosts = hosts

    async def upload(self, spec: UploadSpec, sink: UploadSink, throttle: Throttle | None) -> str | None:
        """Send the file until the server has it all; returns the BITS-Reply-URL of the last Ack, if any.

        A session the server no longer knows is replaced by a new one, once per call.
        """
        url, shown = URL(spec.url), display_url(URL(spec.url))
        session_id, host = spec.session_id, spec.session_host
        limit = fragment_limit((await self._packet(url, PacketType.PING, spec.headers, shown, host=host)).headers)
        for _ in range(2):
            try:
                if session_id is None:
                    session_id, host_id = await self._create_session(url, spec.headers, shown)
                    await sink.set_session(session_id, host_id)
                    host = None if host_id is None else host_id.host
                    if host is not None:  # meets the host's own challenge before a fragment
                        await self._packet(url, PacketType.PING, spec.headers, shown, host=host)
                    return await self._fragments(url, host, shown, session_id, spec, sink, throttle, limit,
                                                 probe=False)
                return await self._fragments(url, host, shown, session_id, spec, sink, throttle, limit, probe=True)
            except SessionLost:
                session_id = host = None
                await sink.set_session(None)
        raise SessionLost(f"the server for {shown} lost two new upload sessions in a row; the job retries later")

    async def close_session(self, url: str, session_id: str, host: str | None, headers: Mapping[str, str]) -> None:
        """Close-Session: the server puts the upload in place (and drops the reply)."""
        await self._packet(URL(url), PacketType.CLOSE_SESSION, {**headers, Header.SESSION_ID: session_id},
                           display_url(URL(url)), host=host)

    async def cancel_session(self, url: str, session_id: str, host: str | None, headers: Mapping[str, str]) -> None:
        """Cancel-Session: the server deletes everything of the session."""
        await self._packet(URL(url), PacketType.CANCEL_SESSION, {**headers, Header.SESSION_ID: session_id},
                           display_url(URL(url)), host=host)

    async def _create_session(self, url: URL, headers: Mapping[str, str], shown: str) -> tuple[str, HostId | None]:
        ack = await self._packet(url, PacketType.CREATE_SESSION,
                                 {**headers, Header.SUPPORTED_PROTOCOLS: PROTOCOL_BITS_1_5}, shown)
        protocol = ack.headers.get(Header.PROTOCOL, "").strip().lower()
        session_id = ack.headers.get(Header.SESSION_ID, "").strip()
        if protocol != PROTOCOL_BITS_1_5 or not session_id or len(session_id) > 128:
            raise TransferError(BG_E_CLIENT_SERVER_PROTOCOL_MISMATCH, f"the server for {shown} did not accept the "
                                f"BITS 1.5 upload protocol (BITS-Protocol {protocol or 'missing'!r})",
                                ErrorContext.REMOTE_FILE, ack.status, transient=False)
        return session_id, _host_id(url, ack.headers)

    async def _fragments(self, url: URL, host: str | None, shown: str, session_id: str, spec: UploadSpec,
                         sink: UploadSink, throttle: Throttle | None, limit: int, *, probe: bool) -> str | None:
        sizer = FragmentSizer(INITIAL_FRAGMENT, limit) if throttle is None else \
            FragmentSizer(MIN_FRAGMENT, min(limit, MAX_PACED_FRAGMENT))
        offset = 0
        while True:
            left = spec.size - offset
            length = min(1, left) if probe else aligned(offset, min(sizer.size, left), spec.size)
            started = time.monotonic()
            ack, sent = await self._fragment(url, host, shown, session_id, spec, offset, length, throttle, waits=probe)
            if ack.status == 413 and length > LEGACY_FRAGMENT_LIMIT and Header.ERROR_CODE not in ack.headers:
                sizer.limit(LEGACY_FRAGMENT_LIMIT)  # not the server's refusal: a front end's body limit
                continue
            if ack.status not in (200, 416):
                raise _ack_error(ack, PacketType.FRAGMENT, shown)
            received = ack.received(shown)
            if received > spec.size:
                raise TransferError(ErrorCode.E_INVALIDARG, f"the server for {shown} claims {received} bytes of a "
                                    f"{spec.size}-byte file", ErrorContext.REMOTE_FILE, transient=False)
            if ack.status == 200:
                sizer.measured(length, (sent or time.monotonic()) - started)
                if received == spec.size:
                    sink.acknowledged(received)
                    return ack.headers.get(Header.REPLY_URL)
            sink.acknowledged(received)
            # After a 416 the server has less than we sent from: continue from what it has.
            offset, probe = received, False

    async def _fragment(self, url: URL, host: str | None, shown: str, session_id: str, spec: UploadSpec,
                        offset: int, length: int, throttle: Throttle | None, *, waits: bool) -> tuple[_Ack, float | None]:
        """The fragment's Ack, and when its body's last byte went to the socket (None if it did not): the
        sizer measures the link by that, not by the wait for the Ack, which on a busy server is most of
        a fragment's time (timed to the Ack, 100 uploads at once through the farm shrank to 64 KiB
        fragments, each one more round of requests to the store)."""
        _check_unchanged(spec)
        body: FileBody | PacedBody
        if throttle is None:
            body = FileBody(self._reads, spec.fd, offset, length)
        else:
            data = await asyncio.get_running_loop().run_in_executor(self._reads, os.pread, spec.fd, length, offset) \
                if length else b""
            if len(data) != length:
                raise local_file_changed(spec.local_path)
            body = PacedBody(data, throttle)
        headers = {**spec.headers, Header.SESSION_ID: session_id, "Content-Length": str(length),
                   Header.CONTENT_RANGE: format_content_range(offset, offset + length - 1, spec.size)}
        if offset == 0:
            headers[Header.CONTENT_NAME] = os.path.basename(spec.local_path)
        final = waits or offset + length == spec.size
        try:
            ack = await self._packet(url, PacketType.FRAGMENT, headers, shown, host=host, body=body, long_wait=final,
                                     check=False)
        finally:
            _check_unchanged(spec)  # the bytes sent were the file's as it began: else that is the error
        return ack, body.sent

    async def _packet(self, url: URL, packet: PacketType, headers: Mapping[str, str], shown: str, *,
                      host: str | None = None, body: Payload | None = None,
                      long_wait: bool = False, check: bool = True) -> _Ack:
        """One request packet and its Ack, to the session's BITS-Host-Id `host` if it has one; check=True
        raises for anything but 200/201."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=FINAL_ACK_TIMEOUT) if long_wait else None
        watch = self._hosts if host is not None else None
        target = on_host(url, host)
        if host is not None and self._auth is not None:
            self._auth.trust(target)  # a server of the URL's farm, named by it (create-session.md)
        try:
            async with self._session.request(
                METHOD, target, headers={**headers, Header.PACKET_TYPE: packet.value}, data=body,
                allow_redirects=False, proxy=self._proxy, middlewares=self._middlewares, ssl=self._ssl,
                **({"timeout": timeout} if timeout else {}),
            ) as resp:
                ack = _Ack(resp.status, resp.headers, await resp.content.read(64 * 1024))
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            if watch is not None and isinstance(exc, aiohttp.ClientConnectorError):
                await watch.unreachable()
            raise _wire_error(exc, shown) from exc
        if watch is not None:
            watch.reached()
        if check and ack.status not in (200, 201):
            raise _ack_error(ack, packet, shown)
        return ack


def _check_unchanged(spec: UploadSpec) -> None:
    info = os.fstat(spec.fd)
    if info.st_size != spec.size or info.st_mtime_ns != spec.mtime_ns:
        raise local_file_changed(spec.local_path)
