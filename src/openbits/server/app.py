"""The upload server as an aiohttp application: `make_upload_app(settings)`.

It answers BITS_POST on every path (and GET/HEAD of reply URLs), picks the
virtual directory by the longest URL prefix, and turns every refusal into an
Ack with BITS-Error-Code; an unexpected exception is logged and answered 500,
never allowed to take the server down. Mount it with `app.add_subapp(prefix,
make_upload_app(...))` and run the outer app with `BitsAppRunner`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from ..errors import ErrorCode
from ..uploadprotocol import METHOD, Header, PacketType, is_session_id
from . import packets
from .acks import AckError
from .local import LocalStorage
from .settings import ServerSettings, VirtualDirectory
from .storage import Storage

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("openbits_upload_settings", ServerSettings)
STORES = web.AppKey("openbits_upload_stores", dict)
HTTP = web.AppKey("openbits_upload_http", aiohttp.ClientSession)

_HANDLERS: dict[PacketType, Callable[[packets.Packet], Awaitable[web.Response]]] = {
    PacketType.PING: packets.ping,
    PacketType.CREATE_SESSION: packets.create_session,
    PacketType.FRAGMENT: packets.fragment,
    PacketType.CLOSE_SESSION: packets.close_session,
    PacketType.CANCEL_SESSION: packets.cancel_session,
}


def make_upload_app(settings: ServerSettings) -> web.Application:
    """An application serving the BITS upload protocol for the given virtual directories."""
    app = web.Application()
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_lifecycle)
    app.router.add_route("*", "/{tail:.*}", _handle)
    return app


async def open_storages(settings: ServerSettings, stack: contextlib.AsyncExitStack) -> dict[str, Storage]:
    """Each virtual directory's store, by prefix; what they hold open is closed with `stack`."""
    if settings.storage is None:
        return {v.prefix: LocalStorage(v, settings.sync_bytes) for v in settings.vdirs}
    from . import s3  # aiobotocore is loaded only by servers that use it

    return await s3.storages(settings.vdirs, settings.storage, stack)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Session stores, the HTTP client for server applications, and the periodic clean-up."""
    settings = app[SETTINGS]
    async with contextlib.AsyncExitStack() as stack:
        stores = app[STORES] = await open_storages(settings, stack)
        app[HTTP] = await stack.enter_async_context(aiohttp.ClientSession())
        cleaner = asyncio.create_task(_clean_periodically(stores, settings.cleanup_interval))
        try:
            yield
        finally:
            cleaner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cleaner
            for store in stores.values():
                await store.shutdown()


async def _clean_periodically(stores: dict[str, Storage], interval: float) -> None:
    while True:
        for prefix, store in stores.items():
            try:
                await store.cleanup()
            except (OSError, AckError):
                log.exception("cleaning the sessions of %s failed", prefix)
        await asyncio.sleep(interval)


async def _handle(request: web.Request) -> web.StreamResponse:
    echoed = request.headers.get(Header.SESSION_ID, "")
    try:
        return await _dispatch(request)
    except AckError as err:
        return err.response(echoed.strip() if is_session_id(echoed) else None)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unexpected failure on %s %s", request.method, request.rel_url)
        return AckError(500, ErrorCode.E_FAIL, "internal server error").response(None)


async def _dispatch(request: web.Request) -> web.StreamResponse:
    app = request.config_dict
    found = app[SETTINGS].lookup("/" + request.match_info["tail"])
    if request.method in ("GET", "HEAD") and packets.REPLY_QUERY in request.query and found:
        return await packets.reply(_packet(request, *found))
    if request.method != METHOD:
        raise web.HTTPMethodNotAllowed(request.method, [METHOD])
    try:
        packet_type = PacketType.parse(request.headers.get(Header.PACKET_TYPE, ""))
        handler = _HANDLERS[packet_type]
    except (ValueError, KeyError):
        raise AckError(400, ErrorCode.E_INVALIDARG, "unexpected or missing BITS-Packet-Type") from None
    if found is None:
        raise AckError(404, ErrorCode.http(404), "no upload virtual directory serves this URL")
    return await handler(_packet(request, *found))


def _packet(request: web.Request, vdir: VirtualDirectory, rest: str) -> packets.Packet:
    app = request.config_dict
    return packets.Packet(request, vdir, app[STORES][vdir.prefix], rest, app[HTTP])
