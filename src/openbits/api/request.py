"""What every /v1 route shares: who calls (SO_PEERCRED), parsing a body, answering, errors as BITS errors.

Who calls is the peer credential of the connection, never a field of the request. Every refusal is
a BitsError answered as a 4xx JSON body; anything else escaping a handler is a bug, logged and
answered 500.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ..core.certificates import CertificateService
from ..core.deliveries import Deliveries
from ..core.service import JobService
from ..core.tokens import TokenService
from ..errors import BitsError, ErrorCode
from ..identity import Identity
from ..model.job import Job
from ..schema.models import (AddFilesRequest, CredentialsRequest, ErrorBody, HelperTokenRequest, LogonRequest,
                             NotifyCmdLine)
from ..schema.views import RateExplainer, job_json

log = logging.getLogger("openbits.api")

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SERVICE = web.AppKey("service", JobService)
TOKENS = web.AppKey("tokens", TokenService)
CERTIFICATES = web.AppKey("certificates", CertificateService)
DELIVERIES = web.AppKey("deliveries", Deliveries)
MODE = web.AppKey("mode", str)
#: whether this daemon was started on demand by a client (and exits when idle)
ON_DEMAND = web.AppKey("on_demand", bool)
#: the bandwidth policy's explanation of a job's rate, under the cost state (`info`'s allowed rate)
RATES = web.AppKey("rates", RateExplainer)
#: the daemon's account of itself for /v1/status: socket, state directory, configuration, policies in force
ABOUT: web.AppKey[Callable[[], dict[str, Any]]] = web.AppKey("about")


def caller(request: web.Request) -> Identity:
    """The peer uid its connection was admitted with (api/connections.py reads SO_PEERCRED once)."""
    uid: int | None = getattr(request.protocol, "peer_uid", None)
    if uid is None:
        raise BitsError(ErrorCode.E_ACCESSDENIED, "the caller's identity is unknown (not a Unix socket)")
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


#: Bytes a request body may have, by the model it must parse as; any other body: DEFAULT_BODY_LIMIT.
#: Sized to what the route accepts, JSON escapes included: 200 files of a 2,200-character URL and a
#: 4,096-character path; a 64 KiB secret; 1,000 notify parameters of 4,000 characters.
BODY_LIMITS: dict[type[BaseModel], int] = {AddFilesRequest: 4 << 20, NotifyCmdLine: 8 << 20,
                                            CredentialsRequest: 512 << 10, HelperTokenRequest: 512 << 10,
                                            LogonRequest: 512 << 10}
#: Enough for job properties with 16 KiB of custom headers, escaped
DEFAULT_BODY_LIMIT = 128 << 10
#: Body bytes one uid may have in flight at once, over all its connections (root too)
BODY_BUDGET = 16 << 20
_in_flight: collections.Counter[int] = collections.Counter()


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, within `limit` bytes, the caller's budget and the request deadline; a 400 otherwise."""
    uid = caller(request).uid
    length = request.content_length
    if length is not None and length > limit:
        raise BitsError(ErrorCode.E_INVALIDARG, f"{request.method} {request.path} takes a body of at most "
                        f"{limit} bytes, not {length}")
    claim = limit if length is None else length
    if _in_flight[uid] + claim > BODY_BUDGET:
        request.protocol.close()
        raise BitsError(ErrorCode.E_INVALIDARG, f"uid {uid} is already sending {_in_flight[uid]} bytes of request "
                        "bodies; wait for those answers first")
    if request.content.is_eof():
        # All of it is here (a small body mostly is): taken without waiting, so no deadline to arm and
        # nothing in flight meanwhile; arming and cancelling asyncio.timeout's timer was 40 % of this call.
        body = request.content.read_nowait()
        if len(body) > limit:
            raise _too_long(request, limit)
        return body
    _in_flight[uid] += claim
    deadline = request.app[SERVICE].config.request_timeout
    chunks, size = [], 0
    try:
        async with asyncio.timeout(deadline):
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limit:
                    raise _too_long(request, limit)
                chunks.append(chunk)
    except TimeoutError:
        request.protocol.close()  # the answer goes out, then the connection closes
        raise BitsError(ErrorCode.E_INVALIDARG, f"the request body did not arrive within {deadline:.0f} s "
                        "(request_timeout)") from None
    finally:
        _in_flight[uid] -= claim
        if not _in_flight[uid]:
            del _in_flight[uid]
    return b"".join(chunks)


def _too_long(request: web.Request, limit: int) -> BitsError:
    """The refusal of a body that ran past `limit`; the connection closes after the answer (the rest unread)."""
    request.protocol.close()
    return BitsError(ErrorCode.E_INVALIDARG, f"{request.method} {request.path} takes a body of at most {limit} bytes")


async def parse(request: web.Request, model: type[M]) -> M:
    """The request body as `model`, or a 400 that names each wrong field."""
    raw = await read_body(request, BODY_LIMITS.get(model, DEFAULT_BODY_LIMIT))
    try:
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


def respond_job(request: web.Request, job: Job, status: int = 200, headers: bool = False) -> web.Response:
    """The job as its caller sees it (JobInfo), with the rate it may use now; its files' response headers
    with `headers` (GET of the job: GetProperty), not in the answer of every action."""
    return web.Response(body=job_json(job, request.app[RATES], headers), status=status,
                        content_type="application/json")
