"""The OpenAPI 3.1 document of /v1, built from the wire models so it cannot drift from them."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from ..version import __version__
from .models import (
    AckResult,
    AddFilesRequest,
    CreateJobRequest,
    ClientCertificateRequest,
    CredentialsRequest,
    DaemonStatus,
    DownloadPosition,
    ErrorBody,
    EventAck,
    EventInfo,
    HelperTokenRequest,
    HelperTokenUser,
    JobInfo,
    JobList,
    JobProperties,
    LogonRequest,
    LogonResult,
    Mirrors,
    NotifyCmdLine,
    NotifyInterface,
    RangesRequest,
    RemoteName,
    RemotePrefix,
    ReplyData,
    ReplyFileName,
    TokenFlagsBody,
    TokenTicket,
    ValidationState,
)

_JOB = {"name": "job", "in": "path", "required": True, "description": "job GUID or display name",
        "schema": {"type": "string"}}
_INDEX = {"name": "index", "in": "path", "required": True, "description": "the file's place in the job, from 0",
          "schema": {"type": "integer", "minimum": 0}}

#: (method, path, summary, request model, response model, success status, extra parameters)
_OPERATIONS: list[tuple[str, str, str, type[BaseModel] | None, type[BaseModel], int, list[dict[str, Any]]]] = [
    ("get", "/v1/status", "Daemon version, mode and who you are", None, DaemonStatus, 200, []),
    ("post", "/v1/jobs", "CreateJob", CreateJobRequest, JobInfo, 201, []),
    ("get", "/v1/jobs", "EnumJobs (all_users: administrators only)", None, JobList, 200,
     [{"name": "all_users", "in": "query", "required": False, "schema": {"type": "string", "enum": ["true", "false"]}}]),
    ("get", "/v1/jobs/{job}", "A job with its files and progress", None, JobInfo, 200, [_JOB]),
    ("patch", "/v1/jobs/{job}", "Set job properties", JobProperties, JobInfo, 200, [_JOB]),
    ("post", "/v1/jobs/{job}/files", "AddFile / AddFileSet", AddFilesRequest, JobInfo, 200, [_JOB]),
    ("post", "/v1/jobs/{job}/replace-remote-prefix", "ReplaceRemotePrefix", RemotePrefix, JobInfo, 200, [_JOB]),
    # one file of the job (IBackgroundCopyFile2..6), by its index in the job
    *[(method, f"/v1/jobs/{{job}}/files/{{index}}/{name}", summary, model, JobInfo, 200, [_JOB, _INDEX])
      for method, name, summary, model in (
          ("put", "remote-name", "SetRemoteName", RemoteName),
          ("put", "mirrors", "The file's mirrors, by priority (addmetalink): on errors it moves to the next",
           Mirrors),
          ("post", "ranges", "RequestFileRanges (on-demand jobs)", RangesRequest),
          ("put", "download-position", "UpdateDownloadPosition (on-demand jobs)", DownloadPosition),
          ("put", "validation-state", "SetValidationState: false downloads the file again", ValidationState))],
    *[("post", f"/v1/jobs/{{job}}/{verb}", verb.capitalize(), None, JobInfo, 200, [_JOB])
      for verb in ("resume", "suspend", "cancel", "complete", "takeownership")],
    ("get", "/v1/jobs/{job}/wait", "Wait until the job is TRANSFERRED, ERROR, SUSPENDED or final", None, JobInfo, 200,
     [_JOB, {"name": "timeout", "in": "query", "required": False,
             "schema": {"type": "number", "minimum": 0, "maximum": 30}}]),
    # IBackgroundCopyJob2: the reply of an upload-reply job
    ("put", "/v1/jobs/{job}/reply-file-name", "SetReplyFileName", ReplyFileName, JobInfo, 200, [_JOB]),
    ("get", "/v1/jobs/{job}/reply", "GetReplyData (TRANSFERRED upload-reply jobs, replies up to 1 MiB)", None,
     ReplyData, 200, [_JOB]),
    # IBitsTokenOptions, SetCredentials / RemoveCredentials, LogonUser
    ("put", "/v1/jobs/{job}/helper-token", "SetHelperToken: {} you, {username, password} a PAM logon, {ticket}",
     HelperTokenRequest, HelperTokenUser, 200, [_JOB]),
    ("delete", "/v1/jobs/{job}/helper-token", "ClearHelperToken (the flags stay)", None, HelperTokenUser, 200, [_JOB]),
    ("get", "/v1/jobs/{job}/helper-token", "GetHelperTokenSid: the helper's uid and user", None, HelperTokenUser, 200,
     [_JOB]),
    ("get", "/v1/jobs/{job}/helper-token-flags", "GetHelperTokenFlags", None, TokenFlagsBody, 200, [_JOB]),
    ("put", "/v1/jobs/{job}/helper-token-flags", "SetHelperTokenFlags", TokenFlagsBody, TokenFlagsBody, 200, [_JOB]),
    ("post", "/v1/jobs/{job}/token-ticket", "A one-time ticket for a process running as the helper", None, TokenTicket,
     201, [_JOB]),
    ("put", "/v1/jobs/{job}/credentials", "SetCredentials", CredentialsRequest, JobInfo, 200, [_JOB]),
    ("delete", "/v1/jobs/{job}/credentials", "RemoveCredentials", None, JobInfo, 200,
     [_JOB, *({"name": name, "in": "query", "required": True, "schema": {"type": "string", "enum": values}}
              for name, values in (("target", ["SERVER", "PROXY"]),
                                   ("scheme", ["BASIC", "DIGEST", "NTLM", "NEGOTIATE", "PASSPORT"])))]),
    ("put", "/v1/jobs/{job}/client-certificate", "SetClientCertificateByID (thumbprint) / ByName (subject), or by "
     "path; the key is read as the job's network identity and kept in memory", ClientCertificateRequest, JobInfo, 200,
     [_JOB]),
    ("delete", "/v1/jobs/{job}/client-certificate", "RemoveClientCertificate", None, JobInfo, 200, [_JOB]),
    ("post", "/v1/logon", "LogonUser: check a password with PAM (rate-limited per caller)", LogonRequest, LogonResult,
     200, []),
    # notifications (openbits.events); the event stream itself is _EVENT_STREAM below
    ("get", "/v1/jobs/{job}/notify-interface", "GetNotifyInterface as bitsadmin has it: whether a client's callback "
     "interface is registered", None, NotifyInterface, 200, [_JOB]),
    ("put", "/v1/jobs/{job}/notify-cmdline", "SetNotifyCmdLine: absolute program, no shell, run as the owner",
     NotifyCmdLine, JobInfo, 200, [_JOB]),
    ("delete", "/v1/jobs/{job}/notify-cmdline", "Remove the notify command line", None, JobInfo, 200, [_JOB]),
    ("post", "/v1/events/{seq}/ack", "A callback's answer to job_transferred/job_error (S_OK or E_FAIL)", EventAck,
     AckResult, 200, [{"name": "seq", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}]),
]

#: GET /v1/events answers text/event-stream, which the operation table cannot say.
_EVENT_STREAM: dict[str, Any] = {
    "summary": "Server-sent events: `ready` ({head, subscription}), then one event per change, `id:` = seq; "
               "a stream ended by the daemon says `superseded` or `dropped` (too slow: reconnect with since)",
    "operationId": "get_v1_events",
    "parameters": [
        {"name": "since", "in": "query", "required": False, "description": "replay stored events after this seq "
         "(default: only new events; the Last-Event-ID header works too)", "schema": {"type": "integer", "minimum": 0}},
        {"name": "job", "in": "query", "required": False, "description": "one job (GUID or name)",
         "schema": {"type": "string"}},
        {"name": "all_users", "in": "query", "required": False, "description": "administrators: every user's events",
         "schema": {"type": "string", "enum": ["true", "false"]}},
        {"name": "callbacks", "in": "query", "required": False, "description": "register this stream as the job's "
         "notify interface (SetNotifyInterface); answer job_transferred/job_error with POST /v1/events/{seq}/ack",
         "schema": {"type": "string", "enum": ["true", "false"]}},
        {"name": "exchanges", "in": "query", "required": False, "description": "also `exchange` messages (an "
         "ExchangeInfo each, live only, no id): every HTTP request line of the jobs' transfers and its answer's "
         "status line", "schema": {"type": "string", "enum": ["true", "false"]}},
        {"name": "timeout", "in": "query", "required": False, "description": "seconds to follow (0: replay only; "
         "default: until the client leaves)", "schema": {"type": "number", "minimum": 0}},
    ],
    "responses": {"200": {"description": "the stream; each `data:` is an EventInfo",
                          "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
}


def _operation_id(method: str, path: str) -> str:
    return f"{method}_{path.replace('/', '_').strip('_').replace('{', '').replace('}', '')}"


@functools.cache
def openapi_document() -> dict[str, Any]:
    models = {m for op in _OPERATIONS for m in (op[3], op[4]) if m is not None} | {ErrorBody, EventInfo}
    keys, schema = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}",
    )
    ref = {m: keys[(m, "validation")] for m in models}
    error = {"description": "refused; the body says why and what to do",
             "content": {"application/json": {"schema": ref[ErrorBody]}}}
    paths: dict[str, dict[str, Any]] = {}
    # Links from CreateJob to every operation on a job let a client (and schemathesis) follow the new job's id.
    job_links = {_operation_id(method, path): {"operationId": _operation_id(method, path),
                                               "parameters": {"job": "$response.body#/id"}}
                 for method, path, *_ in _OPERATIONS if "{job}" in path}
    for method, path, summary, request, response, status, params in _OPERATIONS:
        operation: dict[str, Any] = {
            "summary": summary,
            "operationId": _operation_id(method, path),
            "parameters": params,
            "responses": {
                str(status): {"description": "OK", "content": {"application/json": {"schema": ref[response]}}},
                **{str(code): error for code in (400, 403, 404, 409, 429)},
            },
        }
        if path == "/v1/jobs" and method == "post":
            operation["responses"][str(status)]["links"] = job_links
        if request is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref[request]}}}
        paths.setdefault(path, {})[method] = operation
    paths["/v1/events"] = {"get": {**_EVENT_STREAM, "responses": {
        **_EVENT_STREAM["responses"], **{str(code): error for code in (400, 403, 404, 409)}}}}
    paths["/v1/metrics"] = {"get": {
        "summary": "Prometheus metrics: every series for administrators, your own jobs' for anyone else",
        "operationId": "get_v1_metrics",
        "responses": {"200": {"description": "the text exposition format",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "openbits", "version": __version__,
                 "description": "Background Intelligent Transfer Service for Linux, over a Unix socket"},
        "paths": paths,
        "components": {"schemas": schema.get("$defs", {})},
    }
