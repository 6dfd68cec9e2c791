"""/v1 routes of notifications: the event stream (server-sent events), callback answers, notify command lines.

Server-sent events rather than WebSocket: the stream only flows from the daemon
to the client, SSE's `id:` field is our sequence number and `Last-Event-ID` its
resumption, `curl -N --unix-socket` can follow it, and callback answers are
ordinary POSTs that get the API's validation, errors and OpenAPI description.
The delivery protocol is in openbits.core.deliveries.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from ..model.job import Job
from ..errors import BitsError, ErrorCode
from ..events.bus import Subscription
from ..model.event import Event, Exchange
from ..events.notify import check_cmdline
from ..store import Store
from ..schema.models import (STREAM_EXCHANGE, STREAM_SHUTDOWN, AckResult, EventAck, NotifyCmdLine, NotifyInterface,
                             StreamReady)
from .request import DELIVERIES, SERVICE, caller, flag, parse, respond, respond_job

log = logging.getLogger("openbits.api")

event_routes = web.RouteTableDef()

#: Seconds between looks at whether the client is still there (an unreachable callback is found this fast).
_LIVENESS = 1.0
#: Sequence numbers are SQLite integers: a larger `since` is refused before the stream starts.
_MAX_SEQ = 2**63
#: Seconds between keep-alive comments on an idle stream.
_KEEPALIVE = 15.0


#: How a stream's last message is named after the reason it ends for; any other ending is "dropped".
_ENDINGS = ("superseded", STREAM_SHUTDOWN)


def _number(request: web.Request, name: str, kind: type[int] | type[float], header: str | None = None
            ) -> int | float | None:
    raw = request.query.get(name, request.headers.get(header) if header else None)
    if raw is None:
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise BitsError(ErrorCode.E_INVALIDARG, f"{name} must be a number, not {raw!r}") from None
    if not 0 <= value < (_MAX_SEQ if kind is int else float("inf")):
        raise BitsError(ErrorCode.E_INVALIDARG, f"{name} must be >= 0 and below 2^63")
    return value


def _sse(event: Event) -> bytes:
    return f"id: {event.seq}\nevent: {event.kind.value}\ndata: {event.doc}\n\n".encode()


def _exchange_sse(exchange: Exchange) -> bytes:
    """An HTTP exchange of a job (exchanges=true): no id, since it is never stored or replayed."""
    return f"event: {STREAM_EXCHANGE}\ndata: {exchange.doc}\n\n".encode()


@event_routes.get("/v1/events")
async def events(request: web.Request) -> web.StreamResponse:
    """The caller's events (a job's with job=, every user's with all_users=true for an administrator);
    exchanges=true adds each HTTP request line and its answer's status line (`exchange` messages, live only)."""
    service, deliveries = request.app[SERVICE], request.app[DELIVERIES]
    who = caller(request)
    since = _number(request, "since", int, header="Last-Event-ID")
    timeout = _number(request, "timeout", float)
    all_users, callbacks = flag(request, "all_users"), flag(request, "callbacks")
    exchanges = flag(request, "exchanges")
    if all_users and not service.is_admin(who):
        raise BitsError(ErrorCode.E_ACCESSDENIED, "only an administrator may follow all users' events")
    job = service.find(who, request.query["job"]) if "job" in request.query else None
    if callbacks:
        if job is None:
            raise BitsError(ErrorCode.E_INVALIDARG, "callbacks=true registers a job's notify interface: give job=")
        job.check_modifiable()  # SetNotifyInterface: BG_E_INVALID_STATE once the job is final
    bus = service.events
    # A job's stream is still filtered by owner for a non-administrator: when an administrator takes the job
    # over, the old owner's stream stops receiving its events.
    sub = bus.subscribe(None if all_users or (job and service.is_admin(who)) else who.uid, job.id if job else None,
                        exchanges)
    try:
        if callbacks:
            assert job is not None
            deliveries.register(job, sub)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        ready = StreamReady(head=bus.head, subscription=sub.id if callbacks else "")
        await response.write(f"event: ready\ndata: {ready.model_dump_json()}\n\n".encode())
        last = bus.head if since is None else int(since)
        if job is not None and callbacks:
            await _send_pending(response, service.store, job, last)
        if since is not None:
            async for event in bus.replay(sub, int(since)):
                await response.write(_sse(event))
                last = event.seq
        await _follow(request, response, sub, last, timeout)
        return response
    except ConnectionResetError:  # the client went away; its callbacks are unreachable now
        return web.Response()
    finally:
        if callbacks:
            deliveries.unregister(sub)
        bus.unsubscribe(sub)


async def _send_pending(response: web.StreamResponse, store: Store, job: Job, last: int) -> None:
    """A notification that happened before this interface registered is its first event."""
    if job.notify_pending and job.notify_pending <= last:
        for event in await store.read_events(job.notify_pending - 1, 1, None, job.id):
            if event.seq == job.notify_pending:
                await response.write(_sse(event))


async def _follow(request: web.Request, response: web.StreamResponse, sub: Subscription, last: int,
                  timeout: float | None) -> None:
    """Live events in batches until the timeout, the client leaves, or the bus ends the stream."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    quiet_since = loop.time()
    while sub.ended is None:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        now = loop.time()
        if deadline is not None and now >= deadline:
            return
        wait = _LIVENESS if deadline is None else min(_LIVENESS, deadline - now)
        try:
            async with asyncio.timeout(wait):  # not wait_for: see openbits.waiting
                first = await sub.queue.get()
        except TimeoutError:
            if loop.time() - quiet_since >= _KEEPALIVE:
                await response.write(b": keep-alive\n\n")
                quiet_since = loop.time()
            continue
        batch = [first]
        while batch[-1] is not None and not sub.queue.empty():
            batch.append(sub.queue.get_nowait())
        chunk = b"".join(_sse(e) if isinstance(e, Event) else _exchange_sse(e) for e in batch
                         if isinstance(e, Exchange) or (e is not None and e.seq > last))
        if chunk:
            await response.write(chunk)
            last = max([last, *(e.seq for e in batch if isinstance(e, Event))])
            quiet_since = loop.time()
    if sub.ended is not None:
        name = next((kind for kind in _ENDINGS if sub.ended.startswith(kind)), "dropped")
        await response.write(f"event: {name}\ndata: {sub.ended}\n\n".encode())


@event_routes.post("/v1/events/{seq:\\d+}/ack")
async def ack(request: web.Request) -> web.Response:
    """A callback's answer for a job_transferred / job_error event (S_OK: ok=true; E_FAIL: ok=false)."""
    body = await parse(request, EventAck)
    seq = int(request.match_info["seq"])
    accepted = request.app[DELIVERIES].answer(caller(request), seq, body.subscription, body.ok)
    if accepted and not body.ok:
        log.info("event %d: the callback failed: %s", seq, body.message or "(no message)")
    return respond(AckResult(accepted=accepted))


@event_routes.get("/v1/jobs/{job:[^/]+}/notify-interface")
async def get_notify_interface(request: web.Request) -> web.Response:
    """bitsadmin /getnotifyinterface: is a callback interface registered for the job (by any client)?"""
    job = request.app[SERVICE].find(caller(request), request.match_info["job"])
    return respond(NotifyInterface(registered=request.app[DELIVERIES].registered(job)))


@event_routes.put("/v1/jobs/{job:[^/]+}/notify-cmdline")
async def set_notify_cmdline(request: web.Request) -> web.Response:
    """SetNotifyCmdLine."""
    body = await parse(request, NotifyCmdLine)
    argv = check_cmdline(body.program, body.parameters)
    job = await request.app[SERVICE].update(caller(request), request.match_info["job"], {"notify_cmdline": argv})
    return respond_job(request, job)


@event_routes.delete("/v1/jobs/{job:[^/]+}/notify-cmdline")
async def clear_notify_cmdline(request: web.Request) -> web.Response:
    """SetNotifyCmdLine(NULL, NULL): no more command line notification."""
    job = await request.app[SERVICE].update(caller(request), request.match_info["job"], {"notify_cmdline": None})
    return respond_job(request, job)
