"""Transports move one file's bytes into a descriptor and report how far they are durable.

The core picks one by URL scheme: `HttpTransport` for http(s), `copy_local`
for file:// sources the file broker opened.
"""

from .base import DownloadSink, DownloadSpec, RemoteValidator, Throttle
from .durable import DURABLE_STEP, DurableWriter
from .file import copy_local
from .http import HttpTransport

__all__ = [
    "DURABLE_STEP",
    "DownloadSink",
    "DownloadSpec",
    "DurableWriter",
    "HttpTransport",
    "RemoteValidator",
    "Throttle",
    "copy_local",
]
