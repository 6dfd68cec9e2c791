"""The five request packets of the BITS upload protocol and their Acks.

Ping, Create-Session, Fragment, Close-Session and Cancel-Session as the pages
of the same names describe them, over whichever store the virtual directory
has (storage.py). The packets that end a session are ordered by its lock; the
upload becomes the destination file only at Close-Session.
"""

from __future__ import annotations

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
from .paths import split_remote_name
from .settings import NotificationType, VirtualDirectory
from .storage import Session, Storage

#: Query parameter of the reply URL (GET <upload URL>?bits-reply=<session id>).
REPLY_QUERY = "bits-reply"


@dataclass
class Packet:
    """One request packet and where it points: the virtual directory and the name below it."""

    request: web.Request
    vdir: VirtualDirectory
    store: Storage
    rest: str
    http: aiohttp.ClientSession

    @property
    def parts(self) -> tuple[str, ...]:
        return split_remote_name(self.rest, self.vdir.reserved_name)

    async def session(self) -> Session:
        """The session named by BITS-Session-Id, which must belong to this URL."""
        session = await self.store.get(self.request.headers.get(Header.SESSION_ID, ""))
        if session is None:
            raise AckError(400, BG_E_SESSION_NOT_FOUND, "no such upload session (unknown, timed out or cancelled)")
        if session.parts != self.parts:
            raise AckError(400, ErrorCode.E_INVALIDARG, "the session belongs to another URL")
        return session


async def ping(packet: Packet) -> web.Response:
    return ack(headers=_limits(packet.vdir))


def _limits(vdir: VirtualDirectory) -> dict[str, str]:
    return {Header.FRAGMENT_LIMIT: str(vdir.fragment_limit)} if vdir.fragment_limit else {}


async def create_session(packet: Packet) -> web.Response:
    protocol = choose_protocol(packet.request.headers.get(Header.SUPPORTED_PROTOCOLS, ""))
    if protocol is None:
        raise AckError(400, BG_E_CLIENT_SERVER_PROTOCOL_MISMATCH, "none of the client's upload protocols is supported")
    parts, vdir = packet.parts, packet.vdir
    # With a server application the folders must exist, whatever is there may be replaced.
    await packet.store.check_destination(parts, vdir.allow_overwrites or vdir.notification_type is not NotificationType.NONE)
    session = await packet.store.create("/".join(parts), str(packet.request.url), protocol)
    headers = {Header.PROTOCOL: protocol, Header.ACCEPT_ENCODING: IDENTITY_ENCODING, **_limits(vdir)}
    if vdir.host_id and packet.store.affinity:  # a store every node shares needs no affinity
        headers[Header.HOST_ID] = vdir.host_id
        if vdir.host_id_fallback_timeout is not None:
            headers[Header.HOST_ID_FALLBACK_TIMEOUT] = str(vdir.host_id_fallback_timeout)
    return ack(200, session.id, headers)


async def fragment(packet: Packet) -> web.Response:
    request = packet.request
    session = await packet.session()
    span = _fragment_range(request)
    headers = {}
    try:
        async with session.receiving():
            _check_alive(session)
            await _accept_total(session, span, packet.vdir)
            await session.receive(span, request.content.iter_any())
        if session.complete and packet.vdir.notification_type is not NotificationType.NONE:
            async with session.lock():
                await session.refresh()
                _check_alive(session)
                await _ensure_notified(packet, session)
            reply_url = _reply_url(request, session)
            if reply_url:
                headers[Header.REPLY_URL] = reply_url
    except AckError as err:
        err.headers[Header.RECEIVED_CONTENT_RANGE] = format_received_range(session.received)
        raise
    headers[Header.RECEIVED_CONTENT_RANGE] = format_received_range(session.received)
    return ack(200, session.id, headers)


async def close_session(packet: Packet) -> web.Response:
    session = await packet.session()
    if session.closed:
        return ack(200, session.id)  # a retried Close-Session whose Ack was lost
    async with session.lock():
        await session.refresh()
        if session.closed:
            return ack(200, session.id)
        _check_alive(session)
        if not session.complete:
            await session.discard()
            raise AckError(400, ErrorCode.BG_E_INVALID_STATE, "Close-Session before the last fragment: the partial upload is deleted")
        await _ensure_notified(packet, session)
        vdir = packet.vdir
        if vdir.notification_type is NotificationType.NONE or (session.outcome and session.outcome.copy_to_destination):
            await session.commit(vdir.allow_overwrites)
        await session.close()
    return ack(200, session.id)


async def cancel_session(packet: Packet) -> web.Response:
    session = await packet.session()
    async with session.lock():
        await session.discard()
    return ack(200, session.id)


async def reply(packet: Packet) -> web.StreamResponse:
    """GET of the reply URL: the server application's reply, until Close-Session or Cancel-Session."""
    session = await packet.store.get(packet.request.query.get(REPLY_QUERY, ""))
    if session is not None:
        await session.refresh()
    if session is None or session.closed or not session.has_reply or session.parts != packet.parts:
        raise web.HTTPNotFound(text="no such reply\n")
    return await session.reply_response(packet.request)


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
    """A session cancelled or closed while this packet waited (for its lock, or on another node) is gone."""
    if session.ended:
        raise AckError(400, BG_E_SESSION_NOT_FOUND, "the upload session has ended")


async def _accept_total(session: Session, span: ContentRange, vdir: VirtualDirectory) -> None:
    if session.total is None:
        if vdir.max_upload_size is not None and span.total > vdir.max_upload_size:
            raise AckError(413, ErrorCode.BG_E_TOO_LARGE, f"the file exceeds the maximum upload size {vdir.max_upload_size}")
        await session.set_total(span.total)
    elif span.total != session.total:
        raise AckError(400, ErrorCode.E_INVALIDARG, f"total length {span.total} differs from the session's {session.total}")


async def _ensure_notified(packet: Packet, session: Session) -> None:
    """Post a complete upload to the server application once (again after its failure); under the lock."""
    if packet.vdir.notification_type is NotificationType.NONE or session.outcome is not None:
        return
    await session.prepare_data()
    try:
        outcome = await notify_application(packet.http, packet.vdir, session)
    except ApplicationError as exc:
        raise AckError(exc.status, exc.code, str(exc), context=ErrorContext.REMOTE_APPLICATION) from None
    await session.record_outcome(outcome, outcome.static_reply_url is None and await session.reply_exists())


def _reply_url(request: web.Request, session: Session) -> str | None:
    if session.outcome and session.outcome.static_reply_url:
        return session.outcome.static_reply_url
    if session.has_reply:
        return str(request.url.with_query({REPLY_QUERY: session.id}))
    return None
