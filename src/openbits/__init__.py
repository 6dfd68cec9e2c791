"""openbits: the Background Intelligent Transfer Service for Linux.

The public API, in BITS's vocabulary: a `Manager` (or `AsyncManager`) creates
`Job`s, a job holds `File`s, and every failure is a `BitsError` with the
documented name, number and context.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__
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

if TYPE_CHECKING:
    from .client import AsyncJob, AsyncManager, DaemonUnavailableError, File, FileProgress, Job, Manager, Progress
    from .client.logon import logon
    from .client.tokens import impersonate

#: The client's names, imported on first use (PEP 562): openbitsd and openbits-server live in this
#: package, and importing it must not load the client into them.
_CLIENT = {name: ".client" for name in ("AsyncJob", "AsyncManager", "DaemonUnavailableError", "File",
                                        "FileProgress", "Job", "Manager", "Progress")}
_CLIENT.update(logon=".client.logon", impersonate=".client.tokens")


def __getattr__(name: str) -> Any:
    if name not in _CLIENT:
        raise AttributeError(f"module 'openbits' has no attribute {name!r}")
    value = getattr(importlib.import_module(_CLIENT[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

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
