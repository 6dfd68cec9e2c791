"""openbits: the Background Intelligent Transfer Service for Linux.

The public API, in BITS's vocabulary: a `Manager` (or `AsyncManager`) creates
`Job`s, a job holds `File`s, and every failure is a `BitsError` with the
documented name, number and context.
"""

from .version import __version__
from .client import AsyncJob, AsyncManager, DaemonUnavailableError, File, FileProgress, Job, Manager, Progress
from .enums import (
    LENGTH_TO_EOF,
    SIZE_UNKNOWN,
    CostState,
    ErrorContext,
    JobPriority,
    JobState,
    JobType,
    NotifyFlags,
    ProxyUsage,
    TokenFlags,
    TransferPolicy,
)
from .errors import BitsError, ErrorCode
from .client.logon import logon
from .client.tokens import impersonate

__all__ = [
    "LENGTH_TO_EOF",
    "SIZE_UNKNOWN",
    "AsyncJob",
    "AsyncManager",
    "BitsError",
    "CostState",
    "DaemonUnavailableError",
    "ErrorCode",
    "ErrorContext",
    "File",
    "FileProgress",
    "Job",
    "JobPriority",
    "JobState",
    "JobType",
    "Manager",
    "NotifyFlags",
    "Progress",
    "ProxyUsage",
    "TokenFlags",
    "TransferPolicy",
    "__version__",
    "impersonate",
    "logon",
]
