"""What every /v1 route shares: who calls (SO_PEERCRED), parsing a body, answering, errors as BITS errors.

Who calls is the peer credential of the connection, never a field of the request. Every refusal is
a BitsError answered as a 4xx JSON body; anything else escaping a handler is a bug, logged and
answered 500.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ..core.certificates import CertificateService
from ..core.deliveries import Deliveries
from ..core.service import JobService
from ..core.tokens import TokenService
from ..errors import BitsError, ErrorCode
from ..identity import Identity, peer_credentials
from ..model.job import Job
from ..schema.models import ErrorBody
from ..schema.views import RateExplainer, job_info

log = logging.getLogger("openbits.api")

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SERVICE = web.AppKey("service", JobService)
TOKENS = web.AppKey("tokens", TokenService)
CERTIFICATES = web.AppKey("certificates", CertificateService)
DELIVERIES = web.AppKey("deliveries", Deliveries)
MODE = web.AppKey("mode", str)
#: the bandwidth policy's explanation of a job's rate, under the cost state (`info`'s allowed rate)
RATES = web.AppKey("rates", RateExplainer)
#: the daemon's account of itself for /v1/status: socket, state directory, configuration, policies in force
ABOUT: web.AppKey[Callable[[], dict[str, Any]]] = web.AppKey("about")


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


def flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise BitsError(ErrorCode.E_INVALIDARG, f"query parameter {name} must be true or false, not {value!r}")
    return value in ("true", "1")


def respond_job(request: web.Request, job: Job, status: int = 200) -> web.Response:
    """The job as its caller sees it (JobInfo), with the rate it may use now."""
    return respond(job_info(job, request.app[RATES]), status)
