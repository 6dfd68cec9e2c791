"""Domain records -> wire models (the only place that knows both)."""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel

from ..model.job import JOB_PROPERTIES, Job
from ..model.jobfile import JobFile
from ..enums import JobState
from ..errors import BitsError
from ..model.identity import Identity
from .models import ErrorInfo, FileInfo, FileRange, JobInfo

M = TypeVar("M", bound=BaseModel)


def owner_name(uid: int) -> str:
    """The owner's user name (the cached identity lookup: every answer of the API names an owner)."""
    try:
        return Identity.from_uid(uid).name
    except BitsError:
        return str(uid)


#: How the daemon explains a job's rate now: (bytes/s allowed, why); openbits.bandwidth's policy under the cost state.
RateExplainer = Callable[[Job], tuple[int, str]]

#: The properties JobInfo carries as they are in the record.
_WIRE_PROPERTIES = tuple(p.name for p in JOB_PROPERTIES if p.how.wire)
#: their values in one call: a getattr each cost more than the rest of job_info's own code (three answers a job)
_wire_values = operator.attrgetter(*_WIRE_PROPERTIES)


def job_info(job: Job, explain_rate: RateExplainer, with_files: bool = True, headers: bool = False) -> JobInfo:
    """The job on the wire; `with_files=False` leaves its files out (job_json writes them), `headers` says
    whether the files carry their response headers (see file_values)."""
    allowed_rate, rate_reason = explain_rate(job)
    values = dict(zip(_WIRE_PROPERTIES, _wire_values(job)))
    if job.custom_headers_write_only:
        values["custom_headers"] = []  # sent, never shown (MakeCustomHeadersWriteOnly)
    values.update(
        id=job.id,
        owner=owner_name(job.owner_uid),
        owner_uid=job.owner_uid,
        type=job.type,
        state=job.state,
        bytes_total=job.bytes_total,
        bytes_transferred=job.bytes_transferred,
        files_total=len(job.files),
        files_transferred=job.files_transferred,
        error=ErrorInfo.model_validate(job.error) if job.error else None,
        transfer_rate=job.rate_now(),
        retry_time=job.retry_at if job.state == JobState.TRANSIENT_ERROR and job.retry_at else None,
        allowed_rate=allowed_rate,
        rate_reason=rate_reason,
        files=[file_info(f, headers) for f in job.files] if with_files else [],
        reply_file_name=job.reply_path,
    )
    return built(JobInfo, values)


def job_json(job: Job, explain_rate: RateExplainer, headers: bool = False) -> bytes:
    """JobInfo's JSON, its files written by orjson from their plain values: building a model per file and
    serialising them took 43 ms for the 10,000 files of an answer, this 14 ms (tests/test_properties.py
    checks both write the same document)."""
    info = job_info(job, explain_rate, with_files=False)
    head = info.__pydantic_serializer__.to_json(info, exclude={"files"})
    return b'%s,"files":%s}' % (head[:-1], orjson.dumps([file_values(f, headers) for f in job.files]))


def file_info(f: JobFile, headers: bool = False) -> FileInfo:
    """Built without validation: the daemon's own records are well-typed, and a 10,000-file job's
    answer validated every file again (about 12 % of the daemon's time in the small-files bench)."""
    values = file_values(f, headers)
    for name in ("filled_ranges", "ranges"):
        if values[name] is not None:
            values[name] = [built(FileRange, r) for r in values[name]]
    return built(FileInfo, values)


def file_values(f: JobFile, headers: bool = False) -> dict[str, Any]:
    """FileInfo's fields of `f` as plain JSON values (answers and events serialise many files' without a model).

    The response headers (a few hundred bytes a file) only with `headers`, as BITS gives them only to
    IBackgroundCopyFile5::GetProperty: in every answer and event they made a 10,000-file job's 2.4 MB
    answer 6.2 MB, and its small-files run ~8 % slower."""
    return {"remote_url": f.remote_url, "local_path": f.local_path, "temp_path": f.temp_path,
            "bytes_total": f.bytes_total, "bytes_transferred": f.bytes_transferred, "completed": f.completed,
            "transfer_rate": f.rate_now(),
            "response_headers": list(f.response_headers) if headers else None,
            "checksums": f.checksums, "validation_state": f.validation_state, "mirrors": f.mirrors,
            "filled_ranges": [{"offset": o, "length": n} for o, n in f.filled] if f.filled or f.requested else None,
            "ranges": None if f.ranges is None else [{"offset": o, "length": n} for o, n in f.ranges]}


def built(cls: type[M], values: dict[str, Any]) -> M:
    """An instance of `cls` holding `values`, which name every field: not even model_construct, which
    took 49 ms for the 10,000 files of an answer (this: 31 ms) and half of job_info's time - the instance
    is its field values and the pydantic slots model_construct would set (the test of the OpenAPI
    schema checks what these serialise to)."""
    instance = cls.__new__(cls)
    _SET(instance, "__dict__", values)
    _SET(instance, "__pydantic_fields_set__", _fields(cls))
    _SET(instance, "__pydantic_extra__", None)
    _SET(instance, "__pydantic_private__", None)
    return instance


_SET = object.__setattr__


@functools.cache
def _fields(cls: type[BaseModel]) -> frozenset[str]:
    return frozenset(cls.model_fields)
