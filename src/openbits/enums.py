"""BITS enumerations with their numeric values from bits.idl (see ENUM-VALUES.md).

Shared by the daemon, the wire models and the client so every layer speaks the
same vocabulary as the BITS documentation.
"""

from __future__ import annotations

import enum


class BitsEnum(enum.IntEnum):
    """An IntEnum that prints as `JobState.TRANSFERRED` (Python 3.11 prints IntEnum as its number) and still
    compares, sorts and formats (`{:d}`, `{:x}`) as the integer it is."""

    __str__ = enum.Enum.__str__

    def __format__(self, spec: str) -> str:
        return str(self) if not spec else int.__format__(int(self), spec)


class BitsFlag(enum.IntFlag):
    """An IntFlag that prints as `NotifyFlags.JOB_TRANSFERRED|JOB_ERROR` and stays an int otherwise."""

    __str__ = enum.Flag.__str__

    def __format__(self, spec: str) -> str:
        return str(self) if not spec else int.__format__(int(self), spec)


class JobState(BitsEnum):
    QUEUED = 0
    CONNECTING = 1
    TRANSFERRING = 2
    SUSPENDED = 3
    ERROR = 4
    TRANSIENT_ERROR = 5
    TRANSFERRED = 6
    ACKNOWLEDGED = 7
    CANCELLED = 8

    @property
    def is_final(self) -> bool:
        """ACKNOWLEDGED and CANCELLED end a job's life: every further call fails."""
        return self in (JobState.ACKNOWLEDGED, JobState.CANCELLED)

    @property
    def is_active(self) -> bool:
        """States the scheduler owns: the job wants to (or does) move bytes."""
        return self in (JobState.QUEUED, JobState.CONNECTING, JobState.TRANSFERRING, JobState.TRANSIENT_ERROR)


class JobPriority(BitsEnum):
    FOREGROUND = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3


class JobType(BitsEnum):
    DOWNLOAD = 0
    UPLOAD = 1
    UPLOAD_REPLY = 2

    @property
    def phrase(self) -> str:
        """"a DOWNLOAD job", "an UPLOAD job": for messages."""
        return f"{'a' if self == JobType.DOWNLOAD else 'an'} {self.name} job"


class ProxyUsage(BitsEnum):
    """BG_JOB_PROXY_USAGE: which proxy a job's HTTP requests go through (SetProxySettings)."""

    #: the administrator's or the daemon's environment's proxy (openbits.core.proxy says which)
    PRECONFIG = 0
    NO_PROXY = 1
    #: the job's own proxy list and bypass list
    OVERRIDE = 2
    #: no WPAD on Linux: the same as PRECONFIG
    AUTODETECT = 3


class ErrorContext(BitsEnum):
    NONE = 0
    UNKNOWN = 1
    GENERAL_QUEUE_MANAGER = 2
    QUEUE_MANAGER_NOTIFICATION = 3
    LOCAL_FILE = 4
    REMOTE_FILE = 5
    GENERAL_TRANSPORT = 6
    REMOTE_APPLICATION = 7


class TokenFlags(BitsFlag):
    """IBitsTokenOptions::SetHelperTokenFlags values."""

    NONE = 0
    LOCAL_FILE = 0x1
    NETWORK = 0x2


class NotifyFlags(BitsFlag):
    """BG_NOTIFY_* values for IBackgroundCopyJob::SetNotifyFlags."""

    NONE = 0
    JOB_TRANSFERRED = 0x1
    JOB_ERROR = 0x2
    DISABLE = 0x4
    JOB_MODIFICATION = 0x8
    FILE_TRANSFERRED = 0x10
    FILE_RANGES_TRANSFERRED = 0x20


DEFAULT_NOTIFY_FLAGS = NotifyFlags.JOB_TRANSFERRED | NotifyFlags.JOB_ERROR


class SecurityFlags(enum.IntFlag):
    """IBackgroundCopyJobHttpOptions::SetSecurityFlags values (bits2_5.h)."""

    NONE = 0
    SSL_ENABLE_CRL_CHECK = 0x0001
    SSL_IGNORE_CERT_CN_INVALID = 0x0002
    SSL_IGNORE_CERT_DATE_INVALID = 0x0004
    SSL_IGNORE_UNKNOWN_CA = 0x0008
    SSL_IGNORE_CERT_WRONG_USAGE = 0x0010
    # HTTP_REDIRECT_POLICY_ALLOW_SILENT = 0x0000 is the policy when no other is set
    HTTP_REDIRECT_POLICY_ALLOW_REPORT = 0x0100
    HTTP_REDIRECT_POLICY_DISALLOW = 0x0200
    HTTP_REDIRECT_POLICY_ALLOW_HTTPS_TO_HTTP = 0x0800


class CertStoreLocation(enum.IntEnum):
    """BG_CERT_STORE_LOCATION, of which Linux has two: the owner's folder and the machine's (core/certificates.py)."""

    CURRENT_USER = 0
    LOCAL_MACHINE = 1


#: BG_HTTP_REDIRECT_POLICY_MASK: the bits that say the redirect policy (not ALLOW_HTTPS_TO_HTTP)
REDIRECT_POLICY_MASK = 0x0700
#: every flag SetSecurityFlags takes; any other bit is E_NOTIMPL
SECURITY_FLAGS_KNOWN = 0x001F | 0x0100 | 0x0200 | 0x0800

#: BG_SIZE_UNKNOWN: a size the server has not told us (yet).
SIZE_UNKNOWN = -1
#: BG_LENGTH_TO_EOF: a BG_FILE_RANGE that runs to the end of the remote file.
LENGTH_TO_EOF = 0xFFFFFFFFFFFFFFFF

# -- cost (issue 6): BITS_COST_STATE and BITS_JOB_TRANSFER_POLICY (bits5_0.h) --


class CostState(BitsFlag):
    """BITS_COST_STATE: what the network costs now (one state), and the bits a transfer policy combines."""

    UNRESTRICTED = 0x1
    CAPPED_USAGE_UNKNOWN = 0x2
    BELOW_CAP = 0x4
    NEAR_CAP = 0x8
    OVERCAP_CHARGED = 0x10
    OVERCAP_THROTTLED = 0x20
    USAGE_BASED = 0x40
    ROAMING = 0x80
    RESERVED = 0x40000000
    IGNORE_CONGESTION = 0x80000000  # BITS_COST_OPTION_IGNORE_CONGESTION


class TransferPolicy(BitsEnum):
    """BITS_JOB_TRANSFER_POLICY: the named values of BITS_JOB_PROPERTY_ID_COST_FLAGS (any OR of CostState is valid)."""

    ALWAYS = 0x800000FF
    NOT_ROAMING = 0x8000007F
    NO_SURCHARGE = 0x8000006F
    STANDARD = 0x80000067
    UNRESTRICTED = 0x80000021


#: How `openbits info`'s rate_reason begins for a job the network's cost state blocks.
BLOCKED_BY_COST = "blocked by cost"
#: ... and of a background job the bandwidth policy in force allows nothing (a cap of 0)
BLOCKED_BY_POLICY = "blocked by policy"
#: How it begins for a job whose owner is not logged on (core/logons.py): the job stays QUEUED.
NOT_LOGGED_ON = "owner not logged on"

#: Cost flags of a new job. BITS 5.0 (Windows 8) stopped background transfers while roaming by default.
DEFAULT_COST_FLAGS = TransferPolicy.NOT_ROAMING


def cost_flags_name(flags: int) -> str:
    """`STANDARD` for a named policy, else the flags in hex as BITS prints a DWORD."""
    try:
        return TransferPolicy(flags).name
    except ValueError:
        return f"0x{flags:08x}"

class AuthTarget(BitsEnum):
    """BG_AUTH_TARGET."""

    SERVER = 1
    PROXY = 2


class AuthScheme(BitsEnum):
    """BG_AUTH_SCHEME; openbits answers BASIC and DIGEST challenges."""

    BASIC = 1
    DIGEST = 2
    NTLM = 3
    NEGOTIATE = 4
    PASSPORT = 5
