"""BITS error codes (HRESULTs from bits-return-values.md) and the one exception type.

The daemon raises `BitsError` for every refusal; the API turns it into a 4xx
JSON body and the client turns that body back into the same `BitsError`, so a
caller sees the same name, number and description wherever it stands.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .enums import BitsEnum, ErrorContext


class ErrorCode(BitsEnum):
    """HRESULT values, named as in the BITS documentation (without the BG_E_ prefix for BITS codes)."""

    S_OK = 0
    E_PENDING = 0x8000000A
    E_FAIL = 0x80004005
    E_INVALIDARG = 0x80070057
    E_ACCESSDENIED = 0x80070005
    E_OUTOFMEMORY = 0x8007000E
    E_NOTIMPL = 0x80004001
    ERROR_FILE_NOT_FOUND = 0x80070002
    ERROR_PATH_NOT_FOUND = 0x80070003
    ERROR_FILE_EXISTS = 0x80070050
    ERROR_DISK_FULL = 0x80070070
    ERROR_LOGON_FAILURE = 0x8007052E
    ERROR_BAD_NETPATH = 0x80070035
    ERROR_BAD_NET_NAME = 0x80070043
    ERROR_INTERNET_CANNOT_CONNECT = 0x80072EFD
    ERROR_INTERNET_TIMEOUT = 0x80072EE2
    ERROR_INTERNET_CONNECTION_RESET = 0x80072EFF
    ERROR_INTERNET_NAME_NOT_RESOLVED = 0x80072EE7
    ERROR_HTTP_REDIRECT_FAILED = 0x80072F7C
    ERROR_INTERNET_INVALID_URL = 0x80072EE5
    ERROR_INTERNET_SECURE_FAILURE = 0x80072F8F
    # TLS certificate checks (SetSecurityFlags): HRESULT_FROM_WIN32 of the WinHTTP codes BITS reports
    ERROR_WINHTTP_SECURE_CERT_DATE_INVALID = 0x80072F05
    ERROR_WINHTTP_SECURE_CERT_CN_INVALID = 0x80072F06
    ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED = 0x80072F0C
    ERROR_WINHTTP_SECURE_INVALID_CA = 0x80072F0D
    ERROR_WINHTTP_SECURE_CERT_REV_FAILED = 0x80072F19
    ERROR_WINHTTP_SECURE_INVALID_CERT = 0x80072F89
    ERROR_WINHTTP_SECURE_CERT_REVOKED = 0x80072F8A
    ERROR_WINHTTP_SECURE_CERT_WRONG_USAGE = 0x80072F93
    # BG_HTTP_REDIRECT_POLICY_DISALLOW: HRESULT_FROM_WIN32(HTTP_STATUS_*) of the redirect
    HTTP_STATUS_AMBIGUOUS = 0x8007012C
    HTTP_STATUS_MOVED = 0x8007012D
    HTTP_STATUS_REDIRECT = 0x8007012E
    HTTP_STATUS_REDIRECT_METHOD = 0x8007012F
    HTTP_STATUS_REDIRECT_KEEP_VERB = 0x80070133
    HTTP_STATUS_PERMANENT_REDIRECT = 0x80070134
    BG_E_NOT_FOUND = 0x80200001
    BG_E_INVALID_STATE = 0x80200002
    BG_E_EMPTY = 0x80200003
    BG_E_FILE_NOT_AVAILABLE = 0x80200004
    BG_E_PROTOCOL_NOT_AVAILABLE = 0x80200005
    BG_E_DESTINATION_LOCKED = 0x8020000D
    BG_E_NETWORK_DISCONNECTED = 0x80200010
    BG_E_MISSING_FILE_SIZE = 0x80200011
    BG_E_INSUFFICIENT_HTTP_SUPPORT = 0x80200012
    BG_E_INSUFFICIENT_RANGE_SUPPORT = 0x80200013
    BG_E_INVALID_RANGE = 0x8020002B
    BG_E_OVERLAPPING_RANGES = 0x8020002C
    BG_E_RANDOM_ACCESS_NOT_SUPPORTED = 0x8020006D
    BG_E_REMOTE_NOT_SUPPORTED = 0x80200014
    BG_E_PROXY_LIST_TOO_LARGE = 0x80200018
    BG_E_PROXY_BYPASS_LIST_TOO_LARGE = 0x80200019
    BG_E_TOO_MANY_FILES = 0x8020001C
    BG_E_LOCAL_FILE_CHANGED = 0x8020001D
    BG_E_TOO_LARGE = 0x80200020
    BG_E_STRING_TOO_LONG = 0x80200021
    BG_E_USERNAME_TOO_LARGE = 0x80200025
    BG_E_PASSWORD_TOO_LARGE = 0x80200026
    BG_E_INVALID_AUTH_TARGET = 0x80200027
    BG_E_INVALID_AUTH_SCHEME = 0x80200028
    BG_E_NO_PROGRESS = 0x80200024
    BG_E_BLOCKED_BY_POLICY = 0x8020003E
    BG_E_INVALID_PROXY_INFO = 0x8020003F
    BG_E_INVALID_CREDENTIALS = 0x80200040
    BG_E_TOKEN_REQUIRED = 0x80200056
    BG_E_TOO_MANY_JOBS_PER_USER = 0x80200049
    BG_E_TOO_MANY_JOBS_PER_MACHINE = 0x80200050
    BG_E_TOO_MANY_FILES_IN_JOB = 0x80200051
    BG_E_TOO_MANY_RANGES_IN_FILE = 0x80200052
    BG_E_VALIDATION_FAILED = 0x80200053
    BG_E_MAXDOWNLOAD_TIMEOUT = 0x80200054
    BG_E_BLOCKED_BY_COST_TRANSFER_POLICY = 0x80200059
    BG_E_HTTP_ERROR_100 = 0x80190064

    @classmethod
    def http(cls, status: int) -> int:
        """BG_E_HTTP_ERROR_<status> is 0x80190000 + status (e.g. 404 -> 0x80190194)."""
        return 0x80190000 + status


def code_name(code: int) -> str:
    """The documented name of an HRESULT, e.g. BG_E_HTTP_ERROR_404 or E_ACCESSDENIED."""
    if 0x80190000 <= code <= 0x801903E7:
        return f"BG_E_HTTP_ERROR_{code - 0x80190000}"
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"0x{code:08X}"


#: Which HTTP status of the API answers which refusal; everything else is 400.
_API_STATUS = {
    ErrorCode.BG_E_NOT_FOUND: 404,
    ErrorCode.E_ACCESSDENIED: 403,
    ErrorCode.BG_E_INVALID_STATE: 409,
    ErrorCode.BG_E_EMPTY: 409,
    ErrorCode.BG_E_TOO_MANY_JOBS_PER_USER: 429,
    ErrorCode.BG_E_TOO_MANY_JOBS_PER_MACHINE: 429,
    ErrorCode.ERROR_LOGON_FAILURE: 403,
}


@dataclass(frozen=True)
class ErrorFile:
    """IBackgroundCopyError::GetFile: the file of the job whose transfer failed."""

    index: int
    remote_url: str
    local_path: str


class BitsError(Exception):
    """A BITS-style failure: an HRESULT, its context, and a description a person can act on."""

    def __init__(
        self,
        code: int,
        description: str,
        context: ErrorContext = ErrorContext.NONE,
        http_status: int | None = None,
    ) -> None:
        super().__init__(description)
        self.code = int(code)
        self.description = description
        self.context = ErrorContext(context)
        self.http_status = http_status
        #: GetFile and GetProtocol ("http", "https", "file"): set when the failure belongs to one file
        self.file: ErrorFile | None = None
        self.protocol: str | None = None

    def of_file(self, index: int, remote_url: str, local_path: str) -> BitsError:
        """This error, naming the job's file it happened to (the first one named stays)."""
        if self.file is None:
            self.file = ErrorFile(index, remote_url, local_path)
            self.protocol = remote_url.partition(":")[0].lower()
        return self

    @property
    def name(self) -> str:
        return code_name(self.code)

    @property
    def api_status(self) -> int:
        """HTTP status the API answers this refusal with (always 4xx)."""
        return _API_STATUS.get(self.code, 400)  # type: ignore[call-overload]

    def to_dict(self) -> dict[str, Any]:
        named = {} if self.file is None else {"file": asdict(self.file), "protocol": self.protocol}
        return {
            "context": self.context.name,
            "code": self.code,
            "name": self.name,
            "description": self.description,
            "http_status": self.http_status,
            **named,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BitsError:
        error = cls(
            data["code"], data.get("description", ""), ErrorContext[data.get("context", "NONE")], data.get("http_status")
        )
        if data.get("file"):
            error.of_file(data["file"]["index"], data["file"]["remote_url"], data["file"]["local_path"])
        return error

    def __str__(self) -> str:
        return f"{self.name} (0x{self.code:08X}): {self.description}"


class TransferError(BitsError):
    """A failed transfer attempt: transient ones go to TRANSIENT_ERROR and retry."""

    def __init__(
        self,
        code: int,
        description: str,
        context: ErrorContext = ErrorContext.REMOTE_FILE,
        http_status: int | None = None,
        *,
        transient: bool,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(code, description, context, http_status)
        self.transient = transient
        #: Seconds the server asked us to wait (Retry-After), if it said.
        self.retry_after = retry_after
