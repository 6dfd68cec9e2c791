"""Client library: `Manager` (blocking) and `AsyncManager` (asyncio) over the daemon's Unix-socket API."""

from .aio import AsyncJob, AsyncManager
from .discovery import DaemonUnavailableError
from .sync import Job, Manager
from .types import File, FileProgress, Progress, ProxySettings, ReplyProgress

__all__ = [
    "AsyncJob",
    "AsyncManager",
    "DaemonUnavailableError",
    "File",
    "FileProgress",
    "Job",
    "Manager",
    "Progress",
    "ProxySettings",
    "ReplyProgress",
]
