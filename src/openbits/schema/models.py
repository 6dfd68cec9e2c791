"""Wire models of the HTTP+JSON API (`/v1`), shared by the daemon and the client.

Enumerations travel by name (``"TRANSFERRED"``), not number, so that `curl`
output and `info --json` read like the BITS documentation.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, WithJsonSchema, create_model

from ..enums import LENGTH_TO_EOF, CostState, ErrorContext, JobPriority, JobState, JobType, TransferPolicy
from ..enums import AuthScheme, AuthTarget, CertStoreLocation
from ..model.job import JOB_PROPERTIES
from ..model.properties import Described

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
_PROPERTY = {p.name: p for p in JOB_PROPERTIES}

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



class WireModel(BaseModel):
    """Unknown fields are refused: a typo in a request is an error, not a silent no-op."""

    model_config = ConfigDict(extra="forbid", defer_build=True)


class ErrorFileInfo(WireModel):
    """IBackgroundCopyError::GetFile: the job's file whose transfer failed."""

    index: int = Field(description="its place in the job's files")
    remote_url: str
    local_path: str


class ErrorInfo(WireModel):
    context: ErrorContextName
    code: int = Field(description="HRESULT, e.g. 2149646740 (0x80190194)")
    name: str = Field(description="documented name, e.g. BG_E_HTTP_ERROR_404")
    description: str
    http_status: int | None = None
    file: ErrorFileInfo | None = Field(None, description="GetFile: the file it happened to; null for the job's own")
    protocol: str | None = Field(None, description="GetProtocol: http, https or file; null without a file")


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
    transfer_rate: int = Field(0, description="bytes/s arriving now, as the daemon measures it (0: none)")
    response_headers: list[str] | None = Field(None, description="BITS_FILE_PROPERTY_ID_HTTP_RESPONSE_HEADERS: "
                                               "the 'Name: value' lines of the last answer for the file; in "
                                               "GET /v1/jobs/{job} only, null in other answers and in events")
    ranges: list[FileRange] | None = Field(None, description="GetFileRanges: null for a whole file")
    checksums: list[str] | None = Field(None, description="the digests the file is checked against")
    filled_ranges: list[FileRange] | None = Field(None, description="GetFilledFileRanges of an on-demand job's file: "
                                                  "the bytes in, merged and ordered; null for other jobs")
    validation_state: bool = Field(False, description="GetValidationState: its digests matched, or "
                                   "SetValidationState(TRUE)")
    mirrors: list[str] | None = Field(None, description="Metalink: the remote names the file fails over to, in "
                                      "priority order (remote_url is the one in use)")


class _JobInfoComputed(WireModel):
    """JobInfo's fields that are no property of their own: identity, state, progress, files, the rate."""

    id: str
    owner: str
    owner_uid: int
    type: JobTypeName
    state: JobStateName
    bytes_total: int = Field(description="-1 while any file's size is unknown")
    bytes_transferred: int
    files_total: int
    files_transferred: int
    error: ErrorInfo | None
    retry_time: float | None = Field(None, description="TRANSIENT_ERROR: Unix time of the next attempt")
    transfer_rate: int = Field(0, description="TRANSFERRING: bytes/s arriving now, all files together")
    allowed_rate: int = Field(0, description="bytes/s the job may use now (0 = unlimited): the idle-bandwidth "
                              "controller's rate under the policy's and the job's caps, shared by background jobs")
    rate_reason: str = Field("", description="why: idle link, yielding to other traffic, capped by policy, "
                             "blocked by cost (then nothing may pass), ...")
    files: list[FileInfo]
    reply_file_name: str | None = Field(
        default=None, description="GetReplyFileName: upload-reply jobs; null before a file is added")


#: Wire types of properties whose value is more than its record type says.
_WIRE_TYPES: dict[str, Any] = {"cost_flags": CostFlagsValue, "notify_flags": NotifyFlagsValue}


def _by_record_type(p: Described) -> Any:
    """Enumerations travel by name; everything else as its record type says."""
    return _by_name(p.type) if isinstance(p.type, type) and issubclass(p.type, IntEnum) else p.type


def _wire_type(p: Described) -> Any:
    """The annotation a settable property is validated with: its limits become Field constraints."""
    base = _WIRE_TYPES.get(p.name) or _by_record_type(p)
    limits = dict(p.how.limits or {})
    item_max = limits.pop("item_max_length", None)
    if item_max is not None:
        base = list[Annotated[str, Field(max_length=item_max)]]
    return Annotated[base, Field(**limits)] if limits else base


def _fields(*, settable: bool) -> dict[str, Any]:
    if settable:
        return {p.name: (_wire_type(p) | None, Field(None, description=p.how.doc))
                for p in JOB_PROPERTIES if p.how.settable}
    return {p.name: (_by_record_type(p), Field(p.default, description=p.how.doc)) for p in JOB_PROPERTIES if p.how.wire}


JobInfo = create_model("JobInfo", __base__=_JobInfoComputed, __doc__="GET /v1/jobs/{job}: a job as its caller may "
                       "see it", **_fields(settable=False))
#: PATCH body: only the fields given change. SetProxySettings: proxy_usage sets all three (an omitted list is
#: NULL); the 4,000-character limits are checked by the service, so a long list gets BITS's own error
JobProperties = create_model("JobProperties", __base__=WireModel, __doc__="PATCH /v1/jobs/{job}: only the fields "
                             "given change", **_fields(settable=True))


class JobList(WireModel):
    jobs: list[JobInfo]


class CreateJobRequest(WireModel):
    name: _wire_type(_PROPERTY["name"])  # type: ignore[valid-type]
    type: JobTypeName = JobType.DOWNLOAD
    priority: JobPriorityName = JobPriority.NORMAL
    description: _wire_type(_PROPERTY["description"]) = ""  # type: ignore[valid-type]


class FileRange(WireModel):
    """BG_FILE_RANGE: bytes of the remote file; a length of BG_LENGTH_TO_EOF (18446744073709551615) runs to its end."""

    offset: Annotated[int, Field(ge=0, le=LENGTH_TO_EOF)]
    length: Annotated[int, Field(ge=0, le=LENGTH_TO_EOF)]


class AddFile(WireModel):
    remote_url: Annotated[str, Field(min_length=1, max_length=2200)]
    local_path: Annotated[str, Field(min_length=1, max_length=4096)]
    checksums: list[Annotated[str, Field(max_length=200)]] | None = Field(
        None, max_length=8, description="digests the file must have, 'sha256:HEX', 'sha512:HEX' or 'blake2b:HEX' "
        "(BLAKE2b-512); checked as the bytes arrive, before the file counts as transferred")
    ranges: list[FileRange] | None = Field(None, description="AddFileWithRanges: written to the local file one after "
                                           "another, in this order; no duplicates or overlaps")


class Mirrors(WireModel):
    """A Metalink file's mirrors (RFC 5854 <url>s by priority) and <size>: its remote name becomes the first."""

    mirrors: Annotated[list[Annotated[str, Field(min_length=1, max_length=2200)]], Field(min_length=1, max_length=64)]
    size: Annotated[int, Field(ge=0)] | None = Field(None, description="the size the file must have")
    piece_length: Annotated[int, Field(ge=1)] | None = Field(None, description="<pieces> length: bytes per piece")
    piece_hashes: list[Annotated[str, Field(max_length=140)]] | None = Field(
        None, max_length=65536, description="each piece's 'sha1:HEX', 'sha256:HEX' or 'sha512:HEX', in order")


class RemoteName(WireModel):
    """SetRemoteName of one file."""

    remote_url: Annotated[str, Field(min_length=1, max_length=2200)]


class RemotePrefix(WireModel):
    """ReplaceRemotePrefix: remote names starting with old_prefix start with new_prefix instead."""

    old_prefix: Annotated[str, Field(min_length=1, max_length=2200)]
    new_prefix: Annotated[str, Field(min_length=1, max_length=2200)]


class RangesRequest(WireModel):
    """RequestFileRanges of one file of an on-demand job."""

    ranges: Annotated[list[FileRange], Field(min_length=1, max_length=10_000)]


class DownloadPosition(WireModel):
    """UpdateDownloadPosition of one file of an on-demand job."""

    offset: Annotated[int, Field(ge=0, le=LENGTH_TO_EOF)]


class ValidationState(WireModel):
    """SetValidationState of one file."""

    valid: bool


class AddFilesRequest(WireModel):
    """AddFile and AddFileSet in one call."""

    files: Annotated[list[AddFile], Field(min_length=1)]
    umask: Annotated[int, Field(ge=0, le=0o777)] | None = Field(
        None, description="the client's umask: a file Complete creates gets 0666 & ~umask (none: 022)")


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
    uid: int = Field(description="the uid the daemon runs as (0: root)")
    on_demand: bool = Field(description="started by a client when none answered; exits when idle")
    caller_uid: int
    caller_is_admin: bool
    socket: str = ""
    state_dir: str = ""
    config_file: str | None = Field(None, description="the configuration in force; None: built-in defaults")
    cost: str = Field("", description="the network's cost state and where it comes from")
    bandwidth: str = Field("", description="the background bandwidth policy in force")
    pam_service: str = Field("", description="the PAM service that checks helper-token passwords")
    metrics: str = Field("", description="where Prometheus scrapes: /v1/metrics on the socket, and a TCP address")


# -- helper tokens and credentials (IBitsTokenOptions, SetCredentials) ---------------------------

Secret = Annotated[str, Field(max_length=65536, json_schema_extra={"writeOnly": True})]
CertStoreName = _by_name(CertStoreLocation)


class ClientCertificateRequest(WireModel):
    """SetClientCertificateByID (thumbprint) / ByName (subject) from a store, or a PEM / PKCS#12 file by path."""

    path: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    store: CertStoreName = CertStoreLocation.CURRENT_USER
    thumbprint: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    subject: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    passphrase: Secret | None = None


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
    transfer_rate: int = Field(0, description="TRANSFERRING: bytes/s arriving now, as the daemon measures it")
    file: FileInfo | None
    error: ErrorInfo | None
    ranges: list[FileRange] | None = Field(None, description="file_ranges_transferred: the requested ranges that "
                                           "are in (FileRangesTransferred)")


#: The name of a stream message that carries an ExchangeInfo (only with exchanges=true; never stored).
STREAM_EXCHANGE = "exchange"


class ExchangeInfo(WireModel):
    """One HTTP request of a job's transfer and the status line answering it (`openbits transfer -v`)."""

    time: float = Field(description="Unix time")
    job_id: str
    file_index: int
    request: str = Field(description="the request line, e.g. 'GET http://host/a.iso (Range: bytes=100-)'")
    response: str = Field(description="the status line, e.g. 'HTTP/1.1 206 Partial Content'")
    file_name: str | None = Field(None, description="the file name the answer's Content-Disposition gives")


#: The name of a stream's last message when the daemon stops (its data says so); clients reconnect later.
STREAM_SHUTDOWN = "shutdown"


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


class NotifyInterface(WireModel):
    """bitsadmin /getnotifyinterface: whether a client has a callback interface registered for the job."""

    registered: bool = Field(description="true while some client's callbacks=true stream is the job's notify "
                             "interface (SetNotifyInterface), whoever registered it")


class NotifyCmdLine(WireModel):
    """SetNotifyCmdLine: an absolute program path (no search path, no shell) and its arguments after argv[0],
    or BITS's parameters string whose first token is the program ("prog {JOB}": split as a shell would)."""

    program: Annotated[str, Field(min_length=1, max_length=4096)]
    parameters: list[Annotated[str, Field(max_length=4000)]] | Annotated[str, Field(max_length=4000)] = Field(
        default_factory=list, max_length=1000)
