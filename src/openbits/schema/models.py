"""Wire models of the HTTP+JSON API (`/v1`), shared by the daemon and the client.

Enumerations travel by name (``"TRANSFERRED"``), not number, so that `curl`
output and `info --json` read like the BITS documentation.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, WithJsonSchema

from ..enums import DEFAULT_COST_FLAGS, CostState, ErrorContext, JobPriority, JobState, JobType, TransferPolicy
from ..enums import AuthScheme, AuthTarget, ProxyUsage

E = TypeVar("E", bound=IntEnum)


def _by_name(enum: type[E]) -> Any:
    """An enum field that is written and read by member name (numbers are accepted too)."""

    def parse(value: Any) -> E:
        if isinstance(value, enum):
            return value
        if isinstance(value, str) and value.upper() in enum.__members__:
            return enum[value.upper()]
        if isinstance(value, int) and not isinstance(value, bool):
            return enum(value)
        raise ValueError(f"must be one of {', '.join(enum.__members__)}")

    return Annotated[
        enum,
        BeforeValidator(parse),
        PlainSerializer(lambda member: member.name, return_type=str),
        WithJsonSchema({"type": "string", "enum": list(enum.__members__)}),
    ]


JobStateName = _by_name(JobState)
JobPriorityName = _by_name(JobPriority)
JobTypeName = _by_name(JobType)
ErrorContextName = _by_name(ErrorContext)
ProxyUsageName = _by_name(ProxyUsage)

#: SetNotifyFlags: a combination of the six BG_NOTIFY_* bits.
NotifyFlagsValue = Annotated[int, Field(ge=0, le=0x3F)]


def _cost_flags(value: Any) -> int:
    """BITS_JOB_PROPERTY_ID_COST_FLAGS: a TransferPolicy name ("STANDARD") or an OR of BITS_COST_STATE bits."""
    if isinstance(value, str) and value.upper() in TransferPolicy.__members__:
        return int(TransferPolicy[value.upper()])
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFFFFFF:
        if value & ~_COST_BITS:
            raise ValueError(f"0x{value:x} has bits that are no BITS_COST_STATE")
        if not value & _COST_STATES:
            raise ValueError("the flags allow no cost state at all; the job could never transfer")
        return value
    raise ValueError(f"must be one of {', '.join(TransferPolicy.__members__)} or a combination of BITS_COST_STATE bits")


_COST_BITS = int(CostState.IGNORE_CONGESTION | CostState.RESERVED | 0xFF)
_COST_STATES = 0xFF
#: Cost flags on the wire: a number; a TransferPolicy name is accepted on input.
CostFlagsValue = Annotated[int, BeforeValidator(_cost_flags), WithJsonSchema({
    "oneOf": [{"type": "integer", "minimum": 1, "maximum": 0xFFFFFFFF},
              {"type": "string", "enum": list(TransferPolicy.__members__)}]})]

#: Seconds; BITS's SetMinimumRetryDelay / SetNoProgressTimeout take ULONG seconds.
Seconds = Annotated[int, Field(ge=0, le=0xFFFFFFFF)]


class WireModel(BaseModel):
    """Unknown fields are refused: a typo in a request is an error, not a silent no-op."""

    model_config = ConfigDict(extra="forbid")


class ErrorInfo(WireModel):
    context: ErrorContextName
    code: int = Field(description="HRESULT, e.g. 2149646740 (0x80190194)")
    name: str = Field(description="documented name, e.g. BG_E_HTTP_ERROR_404")
    description: str
    http_status: int | None = None


class ErrorBody(WireModel):
    """Body of every 4xx answer."""

    error: ErrorInfo


class FileInfo(WireModel):
    remote_url: str
    local_path: str
    temp_path: str = Field(description="hidden temporary file beside the destination (GetTemporaryName)")
    bytes_total: int = Field(description="-1 while unknown (BG_SIZE_UNKNOWN)")
    bytes_transferred: int
    completed: bool


class JobInfo(WireModel):
    id: str
    name: str
    description: str
    owner: str
    owner_uid: int
    type: JobTypeName
    state: JobStateName
    priority: JobPriorityName
    bytes_total: int = Field(description="-1 while any file's size is unknown")
    bytes_transferred: int
    files_total: int
    files_transferred: int
    error: ErrorInfo | None
    error_count: int
    minimum_retry_delay: int
    no_progress_timeout: int
    max_download_time: int = Field(description="seconds; 0 = no limit")
    custom_headers: list[str]
    dynamic_content: bool
    max_bandwidth: int = Field(description="bytes/s this job may use; 0 = no cap of its own")
    allowed_rate: int = Field(0, description="bytes/s the job may use now (0 = unlimited): the idle-bandwidth "
                              "controller's rate under the policy's and the job's caps, shared by background jobs")
    rate_reason: str = Field("", description="why: idle link, yielding to other traffic, capped by policy, "
                             "blocked by cost (then nothing may pass), ...")
    cost_flags: int = Field(int(DEFAULT_COST_FLAGS), description="BITS_JOB_PROPERTY_ID_COST_FLAGS: the network cost "
                            "states the job transfers in; TransferPolicy ALWAYS 0x800000ff, NOT_ROAMING 0x8000007f "
                            "(default), NO_SURCHARGE 0x8000006f, STANDARD 0x80000067, UNRESTRICTED 0x80000021")
    creation_time: float = Field(description="Unix time")
    modification_time: float
    transfer_completion_time: float | None
    files: list[FileInfo]
    reply_file_name: str | None = Field(
        default=None, description="GetReplyFileName: upload-reply jobs; null before a file is added")
    reply_bytes_total: int = Field(default=-1, description="GetReplyProgress: -1 until the reply begins")
    reply_bytes_transferred: int = 0
    notify_flags: int = Field(description="NotifyFlags: JOB_TRANSFERRED 0x1, JOB_ERROR 0x2, DISABLE 0x4, "
                              "JOB_MODIFICATION 0x8, FILE_TRANSFERRED 0x10, FILE_RANGES_TRANSFERRED 0x20")
    notify_cmdline: list[str] | None = Field(description="SetNotifyCmdLine as [program, *parameters], or null")
    minimum_notification_interval_ms: int
    proxy_usage: ProxyUsageName = Field(ProxyUsage.PRECONFIG, description="GetProxySettings: PRECONFIG (the "
                                        "administrator's or the daemon's environment's proxy), NO_PROXY, OVERRIDE, "
                                        "AUTODETECT (no WPAD on Linux: as PRECONFIG)")
    proxy_list: str | None = Field(None, description="OVERRIDE: '[http=|https=][http://]server[:port]' entries, "
                                   "space-separated")
    proxy_bypass_list: str | None = Field(None, description="OVERRIDE: hosts, addresses, '*.suffix' or <local> "
                                          "that go direct")


class JobList(WireModel):
    jobs: list[JobInfo]


class CreateJobRequest(WireModel):
    name: Annotated[str, Field(min_length=1, max_length=256)]
    type: JobTypeName = JobType.DOWNLOAD
    priority: JobPriorityName = JobPriority.NORMAL
    description: Annotated[str, Field(max_length=1024)] = ""


class AddFile(WireModel):
    remote_url: Annotated[str, Field(min_length=1, max_length=2200)]
    local_path: Annotated[str, Field(min_length=1, max_length=4096)]


class AddFilesRequest(WireModel):
    """AddFile and AddFileSet in one call."""

    files: Annotated[list[AddFile], Field(min_length=1)]


class JobProperties(WireModel):
    """PATCH body: only the fields given change."""

    name: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    description: Annotated[str, Field(max_length=1024)] | None = None
    priority: JobPriorityName | None = None
    minimum_retry_delay: Seconds | None = None
    no_progress_timeout: Seconds | None = None
    max_download_time: Seconds | None = None
    custom_headers: list[Annotated[str, Field(max_length=16384)]] | None = None
    dynamic_content: bool | None = None
    max_bandwidth: Annotated[int, Field(ge=0)] | None = None
    cost_flags: CostFlagsValue | None = None
    notify_flags: NotifyFlagsValue | None = None
    minimum_notification_interval_ms: Annotated[int, Field(ge=0, le=0xFFFFFFFF)] | None = None
    #: SetProxySettings: proxy_usage sets all three (an omitted list is NULL); the 4,000-character limits are
    #: checked by the service, so a long list gets BITS's own error, not a schema error
    proxy_usage: ProxyUsageName | None = None
    proxy_list: str | None = None
    proxy_bypass_list: str | None = None


class ReplyFileName(WireModel):
    """SetReplyFileName: an absolute path in an existing folder; null or "" = the name openbits generates."""

    reply_file_name: Annotated[str, Field(max_length=4096)] | None = None


class ReplyData(WireModel):
    """GetReplyData: the server application's reply (at most 1 MiB)."""

    size: int
    data: str = Field(description="the reply, base64")


class DaemonStatus(WireModel):
    version: str
    mode: str = Field(description="system or user")
    pid: int
    caller_uid: int
    caller_is_admin: bool


# -- helper tokens and credentials (IBitsTokenOptions, SetCredentials) ---------------------------

Secret = Annotated[str, Field(max_length=65536, json_schema_extra={"writeOnly": True})]


class HelperTokenRequest(WireModel):
    """SetHelperToken: {} = the calling connection's user; {username, password} = a PAM logon;
    {ticket} = the calling connection's user, with the owner's one-time ticket."""

    username: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    password: Secret | None = None
    ticket: Annotated[str, Field(min_length=1, max_length=128)] | None = None


class HelperTokenUser(WireModel):
    """GetHelperTokenSid: the helper's uid and user name, or nulls when no helper token is set."""

    uid: int | None
    user: str | None


class TokenFlagsBody(WireModel):
    flags: Annotated[int, Field(ge=0, le=0xFFFFFFFF, description="LOCAL_FILE 0x1 | NETWORK 0x2")]


class TokenTicket(WireModel):
    ticket: str = Field(description="give it to a process running as the helper: settoken JOB --ticket T")
    expires_in: float = Field(description="seconds")


AuthTargetName = _by_name(AuthTarget)
AuthSchemeName = _by_name(AuthScheme)


class CredentialsKey(WireModel):
    """RemoveCredentials: which pair to forget."""

    target: AuthTargetName
    scheme: AuthSchemeName


class CredentialsRequest(CredentialsKey):
    """SetCredentials; the password can never be read back."""

    username: Annotated[str, Field(max_length=4096)]
    password: Secret


class LogonRequest(WireModel):
    username: Annotated[str, Field(min_length=1, max_length=256)]
    password: Secret


class LogonResult(WireModel):
    uid: int
    user: str


# -- notifications: the event stream, callback acknowledgements, command lines (openbits.events) ----------


class EventInfo(WireModel):
    """One event of `GET /v1/events` (the `data:` of a server-sent event whose `id:` is `seq`)."""

    seq: int = Field(description="increases with every event, across daemon restarts; gaps are possible")
    time: float = Field(description="Unix time")
    kind: Literal["job_transferred", "job_error", "job_modification", "file_transferred", "file_ranges_transferred"]
    job_id: str
    job_name: str
    owner_uid: int
    state: JobStateName
    notify: bool = Field(description="the job's notify flags asked for this kind when it happened (callbacks fire)")
    redelivery: bool = Field(description="a job_transferred/job_error sent again after a failed callback")
    bytes_total: int
    bytes_transferred: int
    files_total: int
    files_transferred: int
    file_index: int | None = Field(description="file_transferred: which file of the job")
    file: FileInfo | None
    error: ErrorInfo | None


class StreamReady(WireModel):
    """The first message of every event stream (`event: ready`)."""

    head: int = Field(description="seq of the newest stored event when the stream opened")
    subscription: str = Field(description="with callbacks=true: the id acknowledgements must carry")


class EventAck(WireModel):
    """How a callback for a job_transferred/job_error event went (S_OK or a failure such as E_FAIL)."""

    subscription: Annotated[str, Field(min_length=1, max_length=64)]
    ok: bool
    message: Annotated[str, Field(max_length=4096)] = ""


class AckResult(WireModel):
    accepted: bool = Field(description="false: not the job's pending notification or not its current interface "
                           "(stale, already handled, or superseded); nothing to do")


class NotifyCmdLine(WireModel):
    """SetNotifyCmdLine: an absolute program path (no search path, no shell) and its arguments after argv[0]."""

    program: Annotated[str, Field(min_length=1, max_length=4096)]
    parameters: list[Annotated[str, Field(max_length=4000)]] = Field(default_factory=list, max_length=1000)
