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
import socket
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import AsyncIterablePayload, BytesPayload, Payload
from multidict import CIMultiDictProxy
from yarl import URL

from ..enums import ErrorContext
from ..errors import ErrorCode, TransferError
from ..uploadprotocol import (
    BG_E_CLIENT_SERVER_PROTOCOL_MISMATCH,
    BG_E_SESSION_NOT_FOUND,
    METHOD,
    PROTOCOL_BITS_1_5,
    Header,
    PacketType,
    format_content_range,
    parse_hex,
    parse_received_range,
)
from .base import Throttle, status_phrase, watching
from .auth import ChallengeAuth
from .http import THROTTLED_READ
from .httperrors import certificate_refused, display_url, proxy_refused

#: First fragment; later ones are sized from the measured rate.
INITIAL_FRAGMENT = 1024 * 1024
MIN_FRAGMENT = 64 * 1024
#: Upper bound: a fragment is held in memory while it is sent.
MAX_FRAGMENT = 16 * 1024 * 1024
#: Seconds one fragment should take: short enough that an interruption costs little, long enough to amortise the Ack.
FRAGMENT_SECONDS = 2.0
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


class FragmentSizer:
    """Fragment size adapted to the link: about FRAGMENT_SECONDS of the rate the last fragment's body went out at."""

    def __init__(self, initial: int = INITIAL_FRAGMENT) -> None:
        self.size = initial

    def measured(self, nbytes: int, seconds: float) -> None:
        if nbytes < self.size // 2:
            return  # a short tail or probe says nothing about the link
        rate = nbytes / max(seconds, 1e-3)
        # A power of two (1-2x FRAGMENT_SECONDS): with aligned() the fragments of a fast link are whole
        # slots of an object store's multipart upload behind the server (16 MiB ones for openbits-server).
        wanted = 1 << (int(rate * FRAGMENT_SECONDS) - 1).bit_length()
        self.size = max(MIN_FRAGMENT, min(MAX_FRAGMENT, self.size * 4, wanted))


def aligned(offset: int, length: int, size: int) -> int:
    """A fragment's length cut so that it ends on a multiple of the largest power of two not above it
    (but the file's last): a server over object storage writes the whole slots of its multipart upload
    straight into it (openbits-server, 16 MiB slots), and a fragment that ends mid-slot leaves the
    next ones off the slots' bounds."""
    end = offset + length
    if end >= size or length <= 0:
        return length
    step = 1 << (length.bit_length() - 1)
    return (end // step * step - offset) or length


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
        await self._packet(url, PacketType.PING, spec.headers, shown, host=host)
        for _ in range(2):
            try:
                if session_id is None:
                    session_id, host_id = await self._create_session(url, spec.headers, shown)
                    await sink.set_session(session_id, host_id)
                    host = None if host_id is None else host_id.host
                    if host is not None:  # meets the host's own challenge before a fragment
                        await self._packet(url, PacketType.PING, spec.headers, shown, host=host)
                    return await self._fragments(url, host, shown, session_id, spec, sink, throttle, probe=False)
                return await self._fragments(url, host, shown, session_id, spec, sink, throttle, probe=True)
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
                         sink: UploadSink, throttle: Throttle | None, *, probe: bool) -> str | None:
        sizer = FragmentSizer(MIN_FRAGMENT if throttle is not None else INITIAL_FRAGMENT)
        offset = 0
        while True:
            left = spec.size - offset
            length = min(1, left) if probe else aligned(offset, min(sizer.size, left), spec.size)
            started = time.monotonic()
            ack, sent = await self._fragment(url, host, shown, session_id, spec, offset, length, throttle, waits=probe)
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
        data = await asyncio.get_running_loop().run_in_executor(self._reads, os.pread, spec.fd, length, offset) \
            if length else b""
        _check_unchanged(spec)
        if len(data) != length:
            raise local_file_changed(spec.local_path)
        headers = {**spec.headers, Header.SESSION_ID: session_id, "Content-Length": str(length),
                   Header.CONTENT_RANGE: format_content_range(offset, offset + length - 1, spec.size)}
        if offset == 0:
            headers[Header.CONTENT_NAME] = os.path.basename(spec.local_path)
        body = _TimedBody(memoryview(data)) if throttle is None else _PacedBody(data, throttle)
        final = waits or offset + length == spec.size
        ack = await self._packet(url, PacketType.FRAGMENT, headers, shown, host=host, body=body, long_wait=final,
                                 check=False)
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


class _TimedBody(BytesPayload):
    """An unthrottled fragment body (a memoryview: aiohttp slices it to the length without a copy) that
    notes when it was written."""

    sent: float | None = None

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        await super().write_with_length(writer, content_length)
        self.sent = time.monotonic()


#: Seconds of the allowed rate one write of a throttled body holds: short bursts into the bottleneck.
PIECE_SECONDS = 0.002
#: MSS assumed when the socket does not tell (Ethernet, TCP timestamps).
_DEFAULT_MSS = 1448


class _PacedBody(AsyncIterablePayload):
    """A throttled fragment body, written in pieces each paid for before it is sent, while a
    background throttle watches its socket (the idle-bandwidth controller for uploads senses it).

    The pacing is ours, not the kernel's (SO_MAX_PACING_RATE): a piece is an even number of full
    segments, written at once, so the server ACKs it at once - receivers ACK every second full
    segment (RFC 5681; Windows' TcpAckFrequency is 2) and delay the ACK of a lone one (40 ms
    Linux, up to 200 ms Windows). Paced by the kernel, a slow upload went out as lone segments:
    on the 20 ms lab link tcpi_rtt read 50-60 ms at 8-32 KB/s (21 ms written in pieces), which the
    controller took for a queue, so a lone upload stayed at the floor (measured; issue 6). A piece
    is about PIECE_SECONDS of the rate, so a burst adds at most that much queue at the bottleneck.
    """

    #: never noted: a paced fragment goes at the throttle's rate, so the sizer times it to its Ack
    sent: float | None = None

    def __init__(self, data: bytes, throttle: Throttle) -> None:
        self._data, self._throttle = data, throttle
        self._pair = 2 * _DEFAULT_MSS
        super().__init__(self._pieces())

    def _piece(self) -> int:
        rate = getattr(self._throttle, "rate", lambda: 0)()
        most = THROTTLED_READ // self._pair
        if most == 0:
            return THROTTLED_READ  # loopback's 64 KiB segments: nothing to pair
        return max(1, min(most, int(rate * PIECE_SECONDS) // self._pair) if rate > 0 else most) * self._pair

    async def _pieces(self) -> AsyncIterator[bytes]:
        view = memoryview(self._data)
        start = 0
        while start < len(view):
            piece = view[start : start + self._piece()]
            await self._throttle.consume(len(piece))
            yield bytes(piece)
            start += len(piece)

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        transport = getattr(writer, "transport", None)
        sock = None if transport is None else transport.get_extra_info("socket")
        if sock is not None:
            try:
                self._pair = 2 * (sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG) or _DEFAULT_MSS)
            except OSError:
                pass
        with watching(self._throttle, sock):
            await super().write_with_length(writer, content_length)
        self.sent = time.monotonic()


def _check_unchanged(spec: UploadSpec) -> None:
    info = os.fstat(spec.fd)
    if info.st_size != spec.size or info.st_mtime_ns != spec.mtime_ns:
        raise local_file_changed(spec.local_path)
