"""/v1 routes of jobs and files: IBackgroundCopyManager and IBackgroundCopyJob over HTTP+JSON."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from ..core.proxy import check_proxy_settings
from ..model.job import Job
from ..model.checks import check_local_path, check_security_flags
from ..errors import BitsError, ErrorCode
from ..schema.models import (
    AddFilesRequest,
    CreateJobRequest,
    DaemonStatus,
    DownloadPosition,
    JobList,
    JobProperties,
    Mirrors,
    RangesRequest,
    RemoteName,
    RemotePrefix,
    ReplyData,
    ReplyFileName,
    ValidationState,
    WireModel,
)
from ..model.jobfile import NEW_FILE_MODE
from ..schema.openapi import openapi_document
from ..schema.views import job_info
from ..version import __version__
from .request import ABOUT, Handler, MODE, ON_DEMAND, RATES, SERVICE, caller, flag, parse, respond, respond_job

#: longest single /wait request; clients loop for longer waits
MAX_WAIT = 30.0

routes = web.RouteTableDef()
M = TypeVar("M", bound=WireModel)


@routes.get("/v1/status")
async def status(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    who = caller(request)
    return respond(DaemonStatus(version=__version__, mode=request.app[MODE], pid=os.getpid(), uid=os.geteuid(),
                                on_demand=request.app[ON_DEMAND], caller_uid=who.uid,
                                caller_is_admin=service.is_admin(who), **request.app[ABOUT]()))


@routes.post("/v1/jobs")
async def create_job(request: web.Request) -> web.Response:
    body = await parse(request, CreateJobRequest)
    job = await request.app[SERVICE].create(caller(request), body.name, body.type, body.priority, body.description)
    return respond_job(request, job, 201)


@routes.get("/v1/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    jobs = request.app[SERVICE].list(caller(request), flag(request, "all_users"))
    return respond(JobList(jobs=[job_info(j, request.app[RATES]) for j in jobs]))


@routes.get("/v1/jobs/{job:[^/]+}")
async def get_job(request: web.Request) -> web.Response:
    return respond_job(request, request.app[SERVICE].find(caller(request), request.match_info["job"]), headers=True)


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
    if "security_flags" in changes:
        check_security_flags(changes["security_flags"])
    if "ca_file" in changes:
        changes["ca_file"] = changes["ca_file"] or None  # "" = none (a PATCH cannot say null)
        if changes["ca_file"] is not None:
            check_local_path(changes["ca_file"])
    if changes.keys() & _PROXY_FIELDS:
        changes.update(_proxy_settings(body))
    job = await request.app[SERVICE].update(caller(request), request.match_info["job"], changes)
    return respond_job(request, job)


@routes.post("/v1/jobs/{job:[^/]+}/files")
async def add_files(request: web.Request) -> web.Response:
    body = await parse(request, AddFilesRequest)
    pairs = [(f.remote_url, f.local_path) for f in body.files]
    mode = NEW_FILE_MODE if body.umask is None else 0o666 & ~body.umask
    ranges = [None if f.ranges is None else [[r.offset, r.length] for r in f.ranges] for f in body.files]
    checksums = [f.checksums for f in body.files]
    job = await request.app[SERVICE].add_files(caller(request), request.match_info["job"], pairs, mode, ranges,
                                               checksums)
    return respond_job(request, job)


@routes.post("/v1/jobs/{job:[^/]+}/replace-remote-prefix")
async def replace_remote_prefix(request: web.Request) -> web.Response:
    body = await parse(request, RemotePrefix)
    job = await request.app[SERVICE].replace_remote_prefix(caller(request), request.match_info["job"],
                                                           body.old_prefix, body.new_prefix)
    return respond_job(request, job)


def _file_change(model: type[M], change: Callable[[Job, int, M], None]) -> Handler:
    """A route that changes one file of a job (SetRemoteName, RequestFileRanges, ...) with a body of `model`."""
    async def handler(request: web.Request) -> web.Response:
        body = await parse(request, model)
        index = int(request.match_info["index"])
        job = await request.app[SERVICE].change_file(caller(request), request.match_info["job"], index,
                                                     lambda job: change(job, index, body))
        return respond_job(request, job)

    return handler


_FILE = "/v1/jobs/{job:[^/]+}/files/{index:[0-9]+}"
routes.put(f"{_FILE}/mirrors")(_file_change(Mirrors, lambda job, i, b: job.set_mirrors(
    i, b.mirrors, b.size, b.piece_length, b.piece_hashes)))
routes.put(f"{_FILE}/remote-name")(_file_change(RemoteName, lambda job, i, b: job.set_remote_name(i, b.remote_url)))
routes.post(f"{_FILE}/ranges")(_file_change(RangesRequest, lambda job, i, b: job.request_file_ranges(
    i, [[r.offset, r.length] for r in b.ranges])))
routes.put(f"{_FILE}/download-position")(_file_change(
    DownloadPosition, lambda job, i, b: job.update_download_position(i, b.offset)))
routes.put(f"{_FILE}/validation-state")(_file_change(
    ValidationState, lambda job, i, b: job.set_validation_state(i, b.valid)))


_PROXY_FIELDS = {"proxy_usage", "proxy_list", "proxy_bypass_list"}


def _proxy_settings(body: JobProperties) -> dict[str, Any]:
    """SetProxySettings sets the usage and both lists at once, so a list left out is cleared."""
    if body.proxy_usage is None:
        raise BitsError(ErrorCode.E_INVALIDARG, "give proxy_usage with the proxy lists (SetProxySettings sets all "
                        "three at once)")
    proxy_list, bypass_list = check_proxy_settings(body.proxy_usage, body.proxy_list, body.proxy_bypass_list)
    return {"proxy_usage": body.proxy_usage, "proxy_list": proxy_list, "proxy_bypass_list": bypass_list}


def _action(name: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        operation = getattr(request.app[SERVICE], name.replace("takeownership", "take_ownership"))
        job = await operation(caller(request), request.match_info["job"])
        return respond_job(request, job)

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
    return respond_job(request, job)


@routes.put("/v1/jobs/{job:[^/]+}/reply-file-name")
async def set_reply_file_name(request: web.Request) -> web.Response:
    body = await parse(request, ReplyFileName)
    job = await request.app[SERVICE].set_reply_file_name(caller(request), request.match_info["job"],
                                                          body.reply_file_name)
    return respond_job(request, job)


@routes.get("/v1/jobs/{job:[^/]+}/reply")
async def reply_data(request: web.Request) -> web.Response:
    data = await request.app[SERVICE].reply_data(caller(request), request.match_info["job"])
    return respond(ReplyData(size=len(data), data=base64.b64encode(data).decode("ascii")))


@routes.get("/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.Response(text=json.dumps(openapi_document()), content_type="application/json")
