"""The job record and the BITS state machine that guards it (its files: model/jobfile.py; the calls on
them: model/filecalls.py).

Every method here is a pure state change on memory: it either raises the
BitsError that BITS documents for the call, or changes the record. Persisting
the change and starting transfers is the service's business.
"""

from __future__ import annotations

import enum
import operator
import os
import re
import time
import typing
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..enums import (DEFAULT_COST_FLAGS, DEFAULT_NOTIFY_FLAGS, LENGTH_TO_EOF, SIZE_UNKNOWN, ErrorContext, JobPriority,
                     JobState, JobType, ProxyUsage)
from ..errors import BitsError, ErrorCode
from .filecalls import FileCalls
from .jobfile import FILE_FIELDS, NEW_FILE_MODE, JobFile, temp_path_for
from .properties import described, prop


#: How long BITS waits before retrying a transient error (SetMinimumRetryDelay default).
DEFAULT_MINIMUM_RETRY_DELAY = 600
#: How long a job may make no progress before a transient error becomes fatal (14 days).
DEFAULT_NO_PROGRESS_TIMEOUT = 14 * 24 * 3600
#: BITS_JOB_PROPERTY_MINIMUM_NOTIFICATION_INTERVAL_MS default.
DEFAULT_MINIMUM_NOTIFICATION_INTERVAL_MS = 500
#: BITS takes these as ULONG seconds.
_SECONDS = {"ge": 0, "le": 0xFFFFFFFF}
#: A download's method; SetHttpMethod with it does nothing.
DEFAULT_HTTP_METHOD = "GET"
#: An HTTP method is a token (RFC 9110 5.6.2).
_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")


@dataclass(slots=True)
class Job(FileCalls):
    """A job and, through `prop()` fields, the one description of its properties (model/properties.py)."""

    id: str
    name: str = prop("", doc="display name (SetDisplayName)", settable=True, limits={"min_length": 1, "max_length": 256})
    type: JobType = JobType.DOWNLOAD
    owner_uid: int = 0
    priority: JobPriority = prop(JobPriority.NORMAL, doc="SetPriority: FOREGROUND runs at once; HIGH, NORMAL and "
                                 "LOW in the background", label="Priority", shown_as="name", settable=True)
    description: str = prop("", doc="SetDescription", label="Description", unset="-", settable=True,
                            limits={"max_length": 1024})
    state: JobState = JobState.SUSPENDED
    files: list[JobFile] = field(default_factory=list)
    #: the files whose rate is sampled (SavedProgress.arrived): rate_now sums these, not all 10,000 of a job
    metered: list[JobFile] | None = field(default=None, metadata={"live": True})
    error: dict[str, Any] | None = None
    error_count: int = prop(0, doc="failed attempts so far (GetErrorCount)", label="Error count", notifies=False)
    minimum_retry_delay: int = prop(DEFAULT_MINIMUM_RETRY_DELAY, doc="seconds a transient error waits before the "
                                    "retry (SetMinimumRetryDelay)", label="Retry delay", shown_as="seconds",
                                    settable=True, limits=_SECONDS)
    no_progress_timeout: int = prop(DEFAULT_NO_PROGRESS_TIMEOUT, doc="seconds without progress before a transient "
                                    "error is fatal (SetNoProgressTimeout)", label="No-progress timeout",
                                    shown_as="seconds", settable=True, limits=_SECONDS)
    max_download_time: int = prop(0, doc="seconds; 0 = no limit", label="Max download time", shown_as="seconds",
                                  unset="no limit", settable=True, limits=_SECONDS)
    custom_headers: list[str] = prop(factory=list, doc="SetCustomHeaders: 'Name: value' lines sent with every "
                                     "request", label="Custom headers", shown_as="lines", unset="-", settable=True,
                                     limits={"item_max_length": 16384})
    custom_headers_write_only: bool = prop(False, doc="MakeCustomHeadersWriteOnly: the custom headers are sent but "
                                           "never shown again, to the owner either; cannot be undone",
                                           label="Custom headers write-only", shown_as="yes_no", settable=True)
    on_demand: bool = prop(False, doc="BITS_JOB_PROPERTY_ON_DEMAND_MODE: files download the ranges asked for "
                           "(RequestFileRanges) first; the job is SUSPENDED when they are in, TRANSFERRED when a "
                           "file is whole", label="On demand", shown_as="yes_no", settable=True)
    http_method: str = prop(DEFAULT_HTTP_METHOD, doc="SetHttpMethod: the method of the job's requests; another "
                            "than GET makes the job FOREGROUND for good, turns its transient errors into ERROR "
                            "and restarts its files from 0 on Resume", label="HTTP method", settable=True)
    dynamic_content: bool = prop(False, doc="BITS_JOB_PROPERTY_DYNAMIC_CONTENT: the server's content may change "
                                 "between requests", label="Dynamic content", shown_as="yes_no", settable=True)
    max_bandwidth: int = prop(0, doc="bytes/s this job may use; 0 = no cap of its own", label="Bandwidth cap",
                              shown_as="rate", unset="none of its own", settable=True, limits={"ge": 0})
    cost_flags: int = prop(int(DEFAULT_COST_FLAGS), doc="BITS_JOB_PROPERTY_ID_COST_FLAGS: the network cost states "
                           "the job transfers in; TransferPolicy ALWAYS 0x800000ff, NOT_ROAMING 0x8000007f "
                           "(default), NO_SURCHARGE 0x8000006f, STANDARD 0x80000067, UNRESTRICTED 0x80000021",
                           label="Cost flags", shown_as="cost_flags", settable=True, notifies=False)
    creation_time: float = prop(factory=time.time, doc="Unix time", label="Created", shown_as="time",
                                notifies=False)
    modification_time: float = prop(factory=time.time, doc="Unix time", label="Modified", shown_as="time",
                                    notifies=False)
    transfer_completion_time: float | None = prop(None, doc="Unix time the job became TRANSFERRED", label="Completed",
                                                  shown_as="time", notifies=False)
    complete_result: str | None = prop(None, doc="what Complete answered: S_OK, or BG_S_PARTIAL_COMPLETE when "
                                       "files that were not whole yet were deleted", notifies=False)
    #: when the job last moved a byte or was (re)activated; the no-progress clock
    last_progress_time: float = field(default_factory=time.time)
    #: seconds spent in action states so far, for max_download_time
    active_seconds: float = 0.0
    #: when a TRANSIENT_ERROR job may be retried (Unix time)
    retry_at: float = 0.0
    #: TokenFlags: what the helper token is used for; the token itself is never stored
    helper_token_flags: int = prop(0, doc="TokenFlags of the helper token (its own route)", wire=False)
    #: SetCredentials' pairs ("SERVER BASIC") to the user name and password sealed by identity/sealing.py,
    #: whose key is never stored here; a final job keeps none (None: none, no empty dict in every job)
    sealed_credentials: dict[str, str] | None = None
    proxy_usage: ProxyUsage = prop(ProxyUsage.PRECONFIG, doc="GetProxySettings: PRECONFIG (the administrator's or "
                                   "the daemon's environment's proxy), NO_PROXY, OVERRIDE, AUTODETECT (no WPAD on "
                                   "Linux: as PRECONFIG)", settable=True, attribute=False, notifies=False)
    proxy_list: str | None = prop(None, doc="OVERRIDE: '[http=|https=][http://]server[:port]' entries, "
                                  "space-separated", settable=True, attribute=False, notifies=False)
    proxy_bypass_list: str | None = prop(None, doc="OVERRIDE: hosts, addresses, '*.suffix' or <local> that go "
                                         "direct", settable=True, attribute=False, notifies=False)
    security_flags: int = prop(0, doc="SetSecurityFlags: SSL_ENABLE_CRL_CHECK 0x1, SSL_IGNORE_CERT_CN_INVALID 0x2, "
                               "SSL_IGNORE_CERT_DATE_INVALID 0x4, SSL_IGNORE_UNKNOWN_CA 0x8, SSL_IGNORE_CERT_WRONG_USAGE "
                               "0x10, HTTP_REDIRECT_POLICY_ALLOW_SILENT 0x0 | ALLOW_REPORT 0x100 | DISALLOW 0x200, "
                               "HTTP_REDIRECT_POLICY_ALLOW_HTTPS_TO_HTTP 0x800", label="Security flags",
                               settable=True, limits={"ge": 0, "le": 0xFFFFFFFF})
    ca_file: str | None = prop(None, doc="a PEM file of CAs (and CRLs) this job trusts besides the system's and the "
                               "administrator's, read as the job's network identity; \"\" = none", label="CA file",
                               unset="-", settable=True, limits={"max_length": 4096})
    client_certificate: dict[str, str] | None = prop(
        None, doc="SetClientCertificateBy*: by (path, thumbprint or subject), path or store (CURRENT_USER: "
        "~/.config/openbits/certs/, LOCAL_MACHINE: /etc/openbits/certs/), and the certificate's SHA-1 thumbprint "
        "and subject; never its key (its own route, core/certificates.py)")
    # -- notifications (openbits.events) --
    notify_flags: int = prop(int(DEFAULT_NOTIFY_FLAGS), doc="NotifyFlags: JOB_TRANSFERRED 0x1, JOB_ERROR 0x2, "
                             "DISABLE 0x4, JOB_MODIFICATION 0x8, FILE_TRANSFERRED 0x10, FILE_RANGES_TRANSFERRED 0x20",
                             settable=True, attribute=False)
    notify_cmdline: list[str] | None = prop(None, doc="SetNotifyCmdLine as [program, *parameters], or null "
                                            "(its own route)")
    minimum_notification_interval_ms: int = prop(DEFAULT_MINIMUM_NOTIFICATION_INTERVAL_MS, doc="BITS_JOB_PROPERTY_"
                                                 "MINIMUM_NOTIFICATION_INTERVAL_MS: modification events at most this "
                                                 "often", settable=True, limits={"ge": 0, "le": 0xFFFFFFFF})
    #: seq of the job_transferred / job_error event no callback or command line has handled yet; 0 = none
    notify_pending: int = 0
    #: SetReplyFileName; None = the name BITS generates (see reply_path)
    reply_file_name: str | None = None
    reply_bytes_total: int = prop(SIZE_UNKNOWN, doc="GetReplyProgress: -1 until the reply begins", notifies=False)
    reply_bytes_transferred: int = prop(0, doc="GetReplyProgress", notifies=False)
    #: TakeOwnership gave the job a new owner: its paths are resolved without following any symlink,
    #: which the old owner could have planted (identity/localfiles.DiskFiles strict)
    owner_changed: bool = False

    @classmethod
    def new(cls, name: str, job_type: JobType, owner_uid: int, priority: JobPriority, description: str) -> Job:
        return cls(str(uuid.uuid4()).upper(), name, job_type, owner_uid, priority, description)

    # -- derived progress ---------------------------------------------------

    @property
    def bytes_total(self) -> int:
        if any(f.bytes_total == SIZE_UNKNOWN for f in self.files):
            return SIZE_UNKNOWN
        return sum(f.bytes_total for f in self.files)

    @property
    def bytes_transferred(self) -> int:
        return sum(f.bytes_transferred for f in self.files)

    @property
    def files_transferred(self) -> int:
        return sum(1 for f in self.files if f.completed)

    def rate_now(self) -> int:
        """Bytes per second arriving now, all files together (the daemon's own measure)."""
        if self.state != JobState.TRANSFERRING:
            return 0
        return sum(f.rate_now() for f in self.metered) if self.metered else 0

    @property
    def current_file(self) -> JobFile | None:
        """Files of a job go in order: the first one not yet complete."""
        return next((f for f in self.files if not f.completed), None)

    def request_headers(self) -> dict[str, str]:
        """The custom headers ("Name: value" lines) as a transport sends them."""
        headers: dict[str, str] = {}
        for line in self.custom_headers:
            name, _, value = line.partition(":")
            headers[name.strip()] = value.strip()
        return headers

    # -- upload-reply -------------------------------------------------------

    @property
    def reply_path(self) -> str | None:
        """GetReplyFileName: the chosen name, else one beside the upload file (None before a file is added)."""
        if self.type != JobType.UPLOAD_REPLY:
            return None
        if self.reply_file_name:
            return self.reply_file_name
        if not self.files:
            return None
        directory, name = os.path.split(self.files[0].local_path)
        return os.path.join(directory, f"{name}.{self.id[:8]}.reply")

    @property
    def reply_temp_path(self) -> str | None:
        path = self.reply_path
        return None if path is None else temp_path_for(path, f"{self.id[:8]}-reply")

    def temp_paths(self) -> list[str]:
        """Every temporary file the job may have made: Cancel removes them all."""
        paths = [f.temp_path for f in self.files if self.type == JobType.DOWNLOAD]
        reply = self.reply_temp_path
        return paths + ([reply] if reply else [])

    def completion_renames(self) -> list[tuple[str, str, int]]:
        """What Complete puts in place (temporary name, final name, a new file's mode): finished downloads,
        or the reply of a transferred upload-reply job (with the mode of its uploaded file's AddFile)."""
        if self.type == JobType.DOWNLOAD:
            return [(f.temp_path, f.local_path, f.mode) for f in self.files if f.completed]
        temp, path = self.reply_temp_path, self.reply_path
        mode = self.files[0].mode if self.files else NEW_FILE_MODE
        return [(temp, path, mode)] if temp and path and self.state == JobState.TRANSFERRED else []

    def check_reply_file_name(self) -> None:
        """SetReplyFileName: upload-reply jobs only, and only before the reply starts arriving."""
        self._require_not_final()
        if self.type != JobType.UPLOAD_REPLY:
            raise BitsError(ErrorCode.E_NOTIMPL, f"job {self.id} is {self.type.phrase}; only UPLOAD_REPLY jobs "
                            "have a reply file", ErrorContext.GENERAL_QUEUE_MANAGER)
        if self.reply_bytes_total != SIZE_UNKNOWN:
            raise BitsError(ErrorCode.BG_E_INVALID_STATE, "the reply is already being transferred; its file name "
                            "can no longer change", ErrorContext.GENERAL_QUEUE_MANAGER)

    # -- the state machine --------------------------------------------------

    def _require_not_final(self) -> None:
        if self.state.is_final:
            raise BitsError(
                ErrorCode.BG_E_INVALID_STATE,
                f"job {self.id} is {self.state.name}; a job in a final state accepts no more calls",
                ErrorContext.GENERAL_QUEUE_MANAGER,
            )

    def touch(self) -> None:
        self.modification_time = time.time()

    def check_modifiable(self) -> None:
        """Properties may change in every state but the final ones."""
        self._require_not_final()

    @property
    def own_method(self) -> bool:
        """SetHttpMethod gave another method than GET: no ranges, no fast path, no transient errors."""
        return self.http_method != DEFAULT_HTTP_METHOD

    def set_properties(self, changes: Mapping[str, Any]) -> None:
        """A PATCH of the job's properties, with the rules BITS gives SetHttpMethod and write-only headers."""
        self.check_modifiable()
        if self.custom_headers_write_only and changes.get("custom_headers_write_only") is False:
            raise BitsError(ErrorCode.E_INVALIDARG, "the custom headers are write-only (MakeCustomHeadersWriteOnly); "
                            "that cannot be undone", ErrorContext.GENERAL_QUEUE_MANAGER)
        method = changes.get("http_method", self.http_method)
        if method != self.http_method:
            self._check_http_method(method)
        if changes.get("on_demand", self.on_demand) and (changes.get("dynamic_content", self.dynamic_content)
                                                         or method != DEFAULT_HTTP_METHOD or self.type != JobType.DOWNLOAD
                                                         or changes.keys() & {"on_demand"} and self._started()):
            raise BitsError(ErrorCode.BG_E_RANDOM_ACCESS_NOT_SUPPORTED, "ON_DEMAND_MODE needs a download job "
                            "that is not DYNAMIC_CONTENT, sends GET, and has not started", ErrorContext.GENERAL_QUEUE_MANAGER)
        if method != DEFAULT_HTTP_METHOD:
            if changes.get("dynamic_content", self.dynamic_content):
                raise BitsError(ErrorCode.BG_E_INVALID_STATE, f"HTTP method {method}: BITS allows no "
                                "DYNAMIC_CONTENT job with SetHttpMethod", ErrorContext.GENERAL_QUEUE_MANAGER)
            if changes.get("priority", JobPriority.FOREGROUND) != JobPriority.FOREGROUND:
                raise BitsError(ErrorCode.BG_E_INVALID_STATE, f"job {self.id} sends HTTP method {method}, so it "
                                "stays FOREGROUND (SetHttpMethod); its priority cannot change",
                                ErrorContext.GENERAL_QUEUE_MANAGER)
        for name, value in changes.items():
            setattr(self, name, value)
        if self.own_method:
            self.priority = JobPriority.FOREGROUND

    def _check_http_method(self, method: str) -> None:
        def refuse(why: str) -> BitsError:
            return BitsError(ErrorCode.E_INVALIDARG, f"HTTP method {method!r}: {why}", ErrorContext.GENERAL_QUEUE_MANAGER)

        if self.type != JobType.DOWNLOAD:
            raise BitsError(ErrorCode.E_NOTIMPL, f"job {self.id} is an {self.type.name} job; uploads speak the "
                            "BITS upload protocol (BITS_POST), so only download jobs take SetHttpMethod",
                            ErrorContext.GENERAL_QUEUE_MANAGER)
        if not _METHOD.fullmatch(method):
            raise refuse("a method is one word of letters, digits and !#$%&'*+-.^_`|~ (at most 32), like POST")
        if method.upper() in ("CONNECT", "HEAD"):
            raise refuse("its answer has no body to download; use GET, POST or the method the server wants")
        if self._started():
            raise BitsError(ErrorCode.BG_E_INVALID_STATE, f"job {self.id} has started; SetHttpMethod is called "
                            "before the first Resume (create a new job for another method)",
                            ErrorContext.GENERAL_QUEUE_MANAGER)

    def resume(self) -> None:
        self._require_not_final()
        if not self.files:
            raise BitsError(
                ErrorCode.BG_E_EMPTY, f"job {self.id} has no files; add a file before resuming it",
                ErrorContext.GENERAL_QUEUE_MANAGER,
            )
        if self.state in (JobState.SUSPENDED, JobState.ERROR, JobState.TRANSIENT_ERROR):
            if self.on_demand:  # nothing asked for: fill in the rest, from the download position on
                for f in self.files:
                    if not f.completed and not f.requested:
                        f.requested = [[f.download_position, LENGTH_TO_EOF]] + (
                            [[0, f.download_position]] if f.download_position else [])
            self.state = JobState.QUEUED if self.current_file else JobState.TRANSFERRED
            self.retry_at = 0.0
            self.last_progress_time = time.time()
            if self.state == JobState.QUEUED:
                self.error = None
        self.touch()

    def suspend(self) -> None:
        self._require_not_final()
        if self.state != JobState.SUSPENDED:
            self.state = JobState.SUSPENDED
            self.touch()

    def cancel(self) -> None:
        self._require_not_final()
        self.state = JobState.CANCELLED
        self.sealed_credentials = None
        self.touch()

    def complete(self) -> list[JobFile]:
        """Move to ACKNOWLEDGED; returns the files whose bytes become the user's (BG_S_PARTIAL_COMPLETE: not all)."""
        self.check_completable()
        kept = [f for f in self.files if f.completed]
        self.complete_result = "S_OK" if len(kept) == len(self.files) else "BG_S_PARTIAL_COMPLETE"
        self.state = JobState.ACKNOWLEDGED
        self.sealed_credentials = None
        self.touch()
        return kept

    def check_completable(self) -> None:
        """Downloads complete at any time, keeping the files that are whole; uploads only in TRANSFERRED."""
        self._require_not_final()
        if self.type != JobType.DOWNLOAD and self.state != JobState.TRANSFERRED:
            raise BitsError(
                ErrorCode.BG_E_INVALID_STATE,
                f"job {self.id} is {self.state.name}; an upload job completes in TRANSFERRED - wait for the "
                "transfer or Cancel the job",
                ErrorContext.GENERAL_QUEUE_MANAGER,
            )

    # -- transitions driven by the transfer ---------------------------------

    def set_error(self, error: BitsError, *, transient: bool, retry_after: float | None = None) -> None:
        """Record a failed attempt: TRANSIENT_ERROR retries later, ERROR waits for the owner."""
        now = time.time()
        self.error = error.to_dict()
        self.error_count += 1
        if transient and now - self.last_progress_time < self.no_progress_timeout:
            self.state = JobState.TRANSIENT_ERROR
            self.retry_at = now + max(float(self.minimum_retry_delay), retry_after or 0.0)
        else:
            if transient:
                timeout = BitsError(
                    ErrorCode.BG_E_NO_PROGRESS,
                    f"no progress for {self.no_progress_timeout} s (last error: {error.description})",
                    error.context,
                    error.http_status,
                )
                timeout.file, timeout.protocol = error.file, error.protocol
                self.error = timeout.to_dict()
            self.state = JobState.ERROR
        self.touch()


_JOB_FIELDS = frozenset(name for name, f in Job.__dataclass_fields__.items() if name != "files" and not f.metadata.get("live"))
_FILE_FIELDS = frozenset(FILE_FIELDS)
#: fields stored as numbers and kept as their enumeration in memory
_ENUM_FIELDS: dict[str, type[enum.IntEnum]] = {
    name: hint for name, hint in typing.get_type_hints(Job).items() if isinstance(hint, type) and issubclass(hint, enum.IntEnum)}
_ENUM_MEMBERS = {name: {member.value: member for member in kind} for name, kind in _ENUM_FIELDS.items()}
#: every property of a job, as model/properties.py describes it
JOB_PROPERTIES = described(Job)


#: the stored fields' values in one call (a getattr each: 42 a save, three saves an API-made job)
_JOB_NAMES = tuple(_JOB_FIELDS)
_job_values = operator.attrgetter(*_JOB_NAMES)


def job_to_record(job: Job) -> dict[str, Any]:
    """The job's own fields as plain JSON values; files are stored (and saved) one by one."""
    record = dict(zip(_JOB_NAMES, _job_values(job)))
    for name in _ENUM_FIELDS:
        record[name] = int(record[name])
    return record


def job_from_record(record: dict[str, Any], files: list[dict[str, Any]]) -> Job:
    """Fields a newer or older openbits stored and this one does not know are dropped, not fatal."""
    values = _shared(_JOB_DEFAULTS, _known(_JOB_FIELDS, record))
    for name, members in _ENUM_MEMBERS.items():  # a dict lookup: the enum's call took 0.25 s for 100,000 jobs
        if name in values:
            value = values[name]
            values[name] = members[value] if value in members else _ENUM_FIELDS[name](value)
    return Job(**values, files=[JobFile(**_shared(_FILE_DEFAULTS, _known(_FILE_FIELDS, f))) for f in files])


def _shared(defaults: dict[str, str | int], record: dict[str, Any]) -> dict[str, Any]:
    """`record` with each value equal to its field's default replaced by the default itself: every
    decoded "GET" or 1209600 was an object of its own in each of 100,000 loaded jobs."""
    for name, default in defaults.items():
        value = record.get(name)
        if value == default and type(value) is type(default):
            record[name] = default
    return record


def _immutable_defaults(cls: type) -> dict[str, str | int]:
    """The str and int defaults that are objects of their own (CPython shares the ints -5..256)."""
    return {name: f.default for name, f in cls.__dataclass_fields__.items()  # type: ignore[attr-defined]
            if (type(f.default) is str and f.default) or (type(f.default) is int and not -5 <= f.default <= 256)}


_JOB_DEFAULTS = _immutable_defaults(Job)
_FILE_DEFAULTS = _immutable_defaults(JobFile)


def _known(fields: frozenset[str], record: dict[str, Any]) -> dict[str, Any]:
    if record.keys() <= fields:
        return record  # the usual case, checked in one set operation (100,000 jobs load at start-up)
    return {key: value for key, value in record.items() if key in fields}
