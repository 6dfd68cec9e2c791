"""Transports move one file's bytes into a descriptor and report how far they are durable.

The core calls one interface, `Transport` (router.py), which picks by URL scheme:
`HttpTransport` for http(s), `copy_local` for file:// sources the file broker opened.
"""

from .base import DownloadSink, DownloadSpec, RemoteValidator, Throttle
from .durable import DURABLE_STEP, DurableWriter
from .file import copy_local
from .http import HttpTransport
from .router import RemoteAccess, Transport

__all__ = [
    "DURABLE_STEP",
    "DownloadSink",
    "DownloadSpec",
    "DurableWriter",
    "HttpTransport",
    "RemoteAccess",
    "RemoteValidator",
    "Throttle",
    "Transport",
    "copy_local",
]
