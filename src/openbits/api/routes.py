"""The /v1 HTTP+JSON API over the Unix socket.

Who calls is the peer credential of the connection (SO_PEERCRED), never a
field of the request. Every refusal is a BitsError answered as a 4xx JSON
body; anything else escaping a handler is a bug, logged and answered 500.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from .. import __version__
from ..core.proxy import check_proxy_settings
from ..core.service import JobService
from ..core.tokens import TokenService
from ..errors import BitsError, ErrorCode
from ..identity import Identity, peer_credentials
from ..identity.logon import LogonChecker
from .models import (
    AddFilesRequest,
    CreateJobRequest,
    DaemonStatus,
    ErrorBody,
    JobList,
    JobProperties,
    ReplyData,
    ReplyFileName,
)
from .openapi import openapi_document
from .views import job_info

log = logging.getLogger("openbits.api")

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SERVICE = web.AppKey("service", JobService)
MODE = web.AppKey("mode", str)
#: longest single /wait request; clients loop for longer waits
MAX_WAIT = 30.0


#: The peer uid of each open connection: SO_PEERCRED cannot change while it is open, so it is
#: asked once rather than once per request (a system call each).
_peer_uids: weakref.WeakKeyDictionary[asyncio.BaseTransport, int] = weakref.WeakKeyDictionary()


def caller(request: web.Request) -> Identity:
    transport = request.transport
    uid = _peer_uids.get(transport) if transport is not None else None
    if uid is None:
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None:
            raise BitsError(ErrorCode.E_ACCESSDENIED, "the caller's identity is unknown (not a Unix socket)")
        uid = _peer_uids[transport] = peer_credentials(sock).uid
    return Identity.from_uid(uid)


def _error_response(error: BitsError) -> web.Response:
    body = ErrorBody.model_validate({"error": error.to_dict()})
    return web.json_response(body.model_dump(mode="json"), status=error.api_status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BitsError as exc:
        return _error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error_response(BitsError(ErrorCode.E_INVALIDARG if exc.status != 404 else ErrorCode.BG_E_NOT_FOUND,
                                         f"{request.method} {request.path}: {exc.reason}; see /v1/openapi.json"))


async def parse(request: web.Request, model: type[M]) -> M:
    """The request body as `model`, or a 400 that names each wrong field."""
    try:
        raw = await request.read()
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise BitsError(ErrorCode.E_INVALIDARG, f"invalid {model.__name__}: {problems}") from None


def respond(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(body=model.__pydantic_serializer__.to_json(model), status=status,
                        content_type="application/json")


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise BitsError(ErrorCode.E_INVALIDARG, f"query parameter {name} must be true or false, not {value!r}")
    return value in ("true", "1")


routes = web.RouteTableDef()


@routes.get("/v1/status")
async def status(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    who = caller(request)
    return respond(DaemonStatus(version=__version__, mode=request.app[MODE], pid=os.getpid(), caller_uid=who.uid,
                                caller_is_admin=service.is_admin(who)))


@routes.post("/v1/jobs")
async def create_job(request: web.Request) -> web.Response:
    body = await parse(request, CreateJobRequest)
    job = await request.app[SERVICE].create(caller(request), body.name, body.type, body.priority, body.description)
    return respond(job_info(job), status=201)


@routes.get("/v1/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    jobs = request.app[SERVICE].list(caller(request), _flag(request, "all_users"))
    return respond(JobList(jobs=[job_info(j) for j in jobs]))


@routes.get("/v1/jobs/{job:[^/]+}")
async def get_job(request: web.Request) -> web.Response:
    return respond(job_info(request.app[SERVICE].find(caller(request), request.match_info["job"])))


@routes.patch("/v1/jobs/{job:[^/]+}")
async def patch_job(request: web.Request) -> web.Response:
    body = await parse(request, JobProperties)
    changes: dict[str, Any] = {
        key: getattr(body, key) for key in body.model_fields_set if getattr(body, key) is not None
    }
    for line in changes.get("custom_headers", []):
        name, colon, _ = line.partition(":")
        if not colon or not name.strip() or any(c in line for c in "\r\n"):
            raise BitsError(ErrorCode.E_INVALIDARG, f"custom header {line!r} must be one 'Name: value' line")
    if sum(len(line) + 2 for line in changes.get("custom_headers", [])) > 16 * 1024:
        raise BitsError(ErrorCode.E_INVALIDARG, "custom headers may total at most 16 KiB (SetCustomHeaders)")
    if changes.keys() & _PROXY_FIELDS:
        changes.update(_proxy_settings(body))
    job = await request.app[SERVICE].update(caller(request), request.match_info["job"], changes)
    return respond(job_info(job))


@routes.post("/v1/jobs/{job:[^/]+}/files")
async def add_files(request: web.Request) -> web.Response:
    body = await parse(request, AddFilesRequest)
    pairs = [(f.remote_url, f.local_path) for f in body.files]
    job = await request.app[SERVICE].add_files(caller(request), request.match_info["job"], pairs)
    return respond(job_info(job))


_PROXY_FIELDS = {"proxy_usage", "proxy_list", "proxy_bypass_list"}


def _proxy_settings(body: JobProperties) -> dict[str, Any]:
    """SetProxySettings sets the usage and both lists at once, so a list left out is cleared."""
    if body.proxy_usage is None:
        raise BitsError(ErrorCode.E_INVALIDARG, "give proxy_usage with the proxy lists (SetProxySettings sets all "
                        "three at once)")
    proxy_list, bypass_list = check_proxy_settings(body.proxy_usage, body.proxy_list, body.proxy_bypass_list)
    return {"proxy_usage": int(body.proxy_usage), "proxy_list": proxy_list, "proxy_bypass_list": bypass_list}


def _action(name: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        operation = getattr(request.app[SERVICE], name.replace("takeownership", "take_ownership"))
        job = await operation(caller(request), request.match_info["job"])
        return respond(job_info(job))

    return handler


for _name in ("resume", "suspend", "cancel", "complete", "takeownership"):
    routes.post(f"/v1/jobs/{{job:[^/]+}}/{_name}")(_action(_name))


@routes.get("/v1/jobs/{job:[^/]+}/wait")
async def wait_job(request: web.Request) -> web.Response:
    try:
        timeout = float(request.query.get("timeout", MAX_WAIT))
    except ValueError:
        raise BitsError(ErrorCode.E_INVALIDARG, "timeout must be a number of seconds") from None
    if not 0 <= timeout < float("inf"):
        raise BitsError(ErrorCode.E_INVALIDARG, "timeout must be a number of seconds >= 0")
    job = await request.app[SERVICE].wait(caller(request), request.match_info["job"], min(timeout, MAX_WAIT))
    return respond(job_info(job))


@routes.put("/v1/jobs/{job:[^/]+}/reply-file-name")
async def set_reply_file_name(request: web.Request) -> web.Response:
    body = await parse(request, ReplyFileName)
    job = await request.app[SERVICE].set_reply_file_name(caller(request), request.match_info["job"],
                                                          body.reply_file_name)
    return respond(job_info(job))


@routes.get("/v1/jobs/{job:[^/]+}/reply")
async def reply_data(request: web.Request) -> web.Response:
    data = await request.app[SERVICE].reply_data(caller(request), request.match_info["job"])
    return respond(ReplyData(size=len(data), data=base64.b64encode(data).decode("ascii")))


@routes.get("/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.Response(text=json.dumps(openapi_document()), content_type="application/json")


def make_app(service: JobService, mode: str) -> web.Application:
    app = web.Application(middlewares=[errors_middleware], client_max_size=4 * 1024 * 1024)
    app[SERVICE] = service
    app[MODE] = mode
    app.add_routes(routes)
    from .token_routes import TOKENS, token_routes  # here: token_routes builds on this module's helpers

    app[TOKENS] = TokenService(service, LogonChecker())
    app.add_routes(token_routes)
    from .event_routes import DELIVERIES, event_routes  # the same: notifications build on these helpers
    from ..events.delivery import Deliveries

    app[DELIVERIES] = Deliveries(service, service.events)
    app.add_routes(event_routes)
    return app


__all__ = ["make_app"]
