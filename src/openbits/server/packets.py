"""The five request packets of the BITS upload protocol and their Acks.

Ping, Create-Session, Fragment, Close-Session and Cancel-Session as the pages
of the same names describe them. The packets of one session are ordered by
its lock; the upload becomes the destination file only at Close-Session.
"""

from __future__ import annotations

import asyncio
import errno
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from ..enums import ErrorContext
from ..errors import ErrorCode
from ..uploadprotocol import (
    BG_E_CLIENT_SERVER_PROTOCOL_MISMATCH,
    BG_E_SESSION_NOT_FOUND,
    IDENTITY_ENCODING,
    ContentRange,
    Header,
    choose_protocol,
    format_received_range,
    parse_content_range,
)
from .acks import AckError, ack
from .notify import ApplicationError, notify_application
from .paths import check_destination, commit, split_remote_name
from .sessions import Session, SessionStore
from .settings import NotificationType, VirtualDirectory

#: Query parameter of the reply URL (GET <upload URL>?bits-reply=<session id>).
REPLY_QUERY = "bits-reply"


@dataclass
class Packet:
    """One request packet and where it points: the virtual directory and the name below it."""

    request: web.Request
    vdir: VirtualDirectory
    store: SessionStore
    rest: str
    http: aiohttp.ClientSession
    sync_bytes: int

    @property
    def parts(self) -> tuple[str, ...]:
        return split_remote_name(self.rest, self.vdir.reserved_name)

    def session(self) -> Session:
        """The session named by BITS-Session-Id, which must belong to this URL."""
        session = self.store.get(self.request.headers.get(Header.SESSION_ID, ""))
        if session is None:
            raise AckError(400, BG_E_SESSION_NOT_FOUND, "no such upload session (unknown, timed out or cancelled)")
        if session.state.parts != self.parts:
            raise AckError(400, ErrorCode.E_INVALIDARG, "the session belongs to another URL")
        return session


async def ping(packet: Packet) -> web.Response:
    return ack()


async def create_session(packet: Packet) -> web.Response:
    protocol = choose_protocol(packet.request.headers.get(Header.SUPPORTED_PROTOCOLS, ""))
    if protocol is None:
        raise AckError(400, BG_E_CLIENT_SERVER_PROTOCOL_MISMATCH, "none of the client's upload protocols is supported")
    parts, vdir = packet.parts, packet.vdir
    if vdir.notification_type is NotificationType.NONE:
        check_destination(vdir.directory, parts, vdir.allow_overwrites)
    else:
        check_destination(vdir.directory, parts, allow_overwrites=True)  # the folders must exist
    session = packet.store.create("/".join(parts), str(packet.request.url), protocol)
    headers = {Header.PROTOCOL: protocol, Header.ACCEPT_ENCODING: IDENTITY_ENCODING}
    if vdir.host_id:
        headers[Header.HOST_ID] = vdir.host_id
        if vdir.host_id_fallback_timeout is not None:
            headers[Header.HOST_ID_FALLBACK_TIMEOUT] = str(vdir.host_id_fallback_timeout)
    return ack(200, session.state.id, headers)


async def fragment(packet: Packet) -> web.Response:
    request = packet.request
    session = packet.session()
    span = _fragment_range(request)
    async with session.lock:
        _check_alive(session)
        try:
            _accept_total(session, span, packet.vdir)
            if span.first > session.received:
                raise AckError(416, ErrorCode.http(416), f"the fragment starts at {span.first}, not at {session.received}")
            await _receive(request, session, span)
            headers = {}
            if session.complete:
                await asyncio.to_thread(session.sync)
                await _ensure_notified(packet, session)
                reply_url = _reply_url(request, session)
                if reply_url:
                    headers[Header.REPLY_URL] = reply_url
            elif session.unsynced >= packet.sync_bytes:
                await asyncio.to_thread(session.sync)
        except AckError as err:
            err.headers[Header.RECEIVED_CONTENT_RANGE] = format_received_range(session.received)
            raise
        except OSError as exc:
            raise _disk_error(exc, session) from exc
    headers[Header.RECEIVED_CONTENT_RANGE] = format_received_range(session.received)
    return ack(200, session.state.id, headers)


async def close_session(packet: Packet) -> web.Response:
    session = packet.session()
    async with session.lock:
        if session.state.closed:
            return ack(200, session.state.id)  # a retried Close-Session whose Ack was lost
        _check_alive(session)
        if not session.complete:
            packet.store.discard(session)
            raise AckError(400, ErrorCode.BG_E_INVALID_STATE, "Close-Session before the last fragment: the partial upload is deleted")
        await _ensure_notified(packet, session)
        vdir = packet.vdir
        if vdir.notification_type is NotificationType.NONE or session.state.copy_to_destination:
            try:
                await asyncio.to_thread(commit, vdir.directory, session.state.parts, session.data_path, vdir.allow_overwrites)
            except OSError as exc:
                raise _disk_error(exc, session) from exc
        packet.store.close(session)
    return ack(200, session.state.id)


async def cancel_session(packet: Packet) -> web.Response:
    session = packet.session()
    async with session.lock:
        packet.store.discard(session)
    return ack(200, session.state.id)


async def reply(packet: Packet) -> web.StreamResponse:
    """GET of the reply URL: the server application's reply, until Close-Session or Cancel-Session."""
    session = packet.store.get(packet.request.query.get(REPLY_QUERY, ""))
    if session is None or session.state.closed or not session.state.has_reply or session.state.parts != packet.parts:
        raise web.HTTPNotFound(text="no such reply\n")
    return web.FileResponse(session.reply_path, headers={"Content-Type": "application/octet-stream"})


def _fragment_range(request: web.Request) -> ContentRange:
    encoding = request.headers.get(Header.CONTENT_ENCODING, IDENTITY_ENCODING)
    if encoding.strip().lower() != IDENTITY_ENCODING.lower():
        raise AckError(400, ErrorCode.E_INVALIDARG, f"Content-Encoding {encoding!r} is not supported (Identity only)")
    try:
        span = parse_content_range(request.headers.get(Header.CONTENT_RANGE, ""))
    except ValueError as exc:
        raise AckError(400, ErrorCode.E_INVALIDARG, f"bad Content-Range: {exc}") from None
    if request.content_length is None:
        raise AckError(411, ErrorCode.http(411), "a Fragment needs a Content-Length")
    if request.content_length != span.length:
        raise AckError(400, ErrorCode.E_INVALIDARG, f"Content-Length {request.content_length} does not match {span}")
    return span


def _check_alive(session: Session) -> None:
    """A session cancelled or closed while this packet waited for its lock is gone."""
    if session.discarded or session.state.closed:
        raise AckError(400, BG_E_SESSION_NOT_FOUND, "the upload session has ended")


def _accept_total(session: Session, span: ContentRange, vdir: VirtualDirectory) -> None:
    state = session.state
    if state.total is None:
        if vdir.max_upload_size is not None and span.total > vdir.max_upload_size:
            raise AckError(413, ErrorCode.BG_E_TOO_LARGE, f"the file exceeds the maximum upload size {vdir.max_upload_size}")
        state.total = span.total
        session.persist()
    elif span.total != state.total:
        raise AckError(400, ErrorCode.E_INVALIDARG, f"total length {span.total} differs from the session's {state.total}")


async def _receive(request: web.Request, session: Session, span: ContentRange) -> None:
    """Write the part of the body beyond what the session already has (overlaps are not rewritten)."""
    offset = span.first
    async for chunk in request.content.iter_any():
        end = offset + len(chunk)
        if end > session.received:
            skip = max(0, session.received - offset)
            session.write(offset + skip, memoryview(chunk)[skip:])
            session.received = end
        offset = end
    if offset != span.last + 1:
        raise AckError(400, ErrorCode.E_INVALIDARG, "the fragment body is shorter than its Content-Range")


async def _ensure_notified(packet: Packet, session: Session) -> None:
    """Post a complete upload to the server application once (again after its failure)."""
    state, vdir = session.state, packet.vdir
    if vdir.notification_type is NotificationType.NONE or state.notified:
        return
    try:
        outcome = await notify_application(packet.http, vdir, state.url, session.data_path, session.reply_path)
    except ApplicationError as exc:
        raise AckError(exc.status, exc.code, str(exc), context=ErrorContext.REMOTE_APPLICATION) from None
    state.notified = True
    state.static_reply_url = outcome.static_reply_url
    state.has_reply = outcome.static_reply_url is None and session.reply_path.exists()
    state.copy_to_destination = outcome.copy_to_destination
    session.persist()


def _reply_url(request: web.Request, session: Session) -> str | None:
    if session.state.static_reply_url:
        return session.state.static_reply_url
    if session.state.has_reply:
        return str(request.url.with_query({REPLY_QUERY: session.state.id}))
    return None


def _disk_error(exc: OSError, session: Session) -> AckError:
    headers = {Header.RECEIVED_CONTENT_RANGE: format_received_range(session.received)}
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return AckError(507, ErrorCode.ERROR_DISK_FULL, "the server's disk is full", headers=headers)
    return AckError(500, ErrorCode.E_FAIL, f"the server could not write the upload: {exc.strerror}", headers=headers)
