"""What every transport shares: the request (`DownloadSpec`), the remote file
version (`RemoteValidator`), and the seams the core plugs in (`DownloadSink`,
`Throttle`).

The core owns the job state; a transport only moves bytes into a descriptor
and tells the sink how far they got, so the same contract serves http(s),
file:// and, later, upload replies.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from http import HTTPStatus
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from ..enums import SIZE_UNKNOWN
from .tls import TlsSettings
from ..errors import ErrorCode, TransferError


@dataclass(frozen=True)
class RemoteValidator:
    """Identifies one version of a remote file (BITS: size and time stamp, plus the ETag)."""

    size: int
    etag: str | None
    last_modified: str | None
    #: the answer's header lines (BITS_FILE_PROPERTY_ID_HTTP_RESPONSE_HEADERS): shown, not part of the version
    headers: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def of_answer(cls, size: int, headers: Mapping[str, str], old: RemoteValidator | None = None,
                  lines: tuple[str, ...] | None = None) -> RemoteValidator:
        """The version an HTTP answer describes; a partial answer may leave out validators `old` has.
        `lines`: the header lines as received, when the caller has them (else they are written again)."""
        etag, last_modified = headers.get("ETag"), headers.get("Last-Modified")
        if old is not None:
            etag, last_modified = etag or old.etag, last_modified or old.last_modified
        if lines is None:
            lines = tuple(f"{name}: {value}" for name, value in headers.items())
        return cls(size, etag, last_modified, lines)

    @property
    def mtime(self) -> float | None:
        """Last-Modified as Unix time: the local file keeps the remote time, as BITS does."""
        return _unix_time(self.last_modified) if self.last_modified else None

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "etag": self.etag, "last_modified": self.last_modified}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RemoteValidator:
        return cls(int(d.get("size", SIZE_UNKNOWN)), d.get("etag"), d.get("last_modified"))

    @property
    def if_range(self) -> str | None:
        """The If-Range value that proves our bytes belong to this version (RFC 9110 wants a strong ETag)."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    def same_version(self, other: RemoteValidator) -> bool:
        """Whether `other` (a later response) describes the same file: no validator may disagree."""
        pairs = ((self.etag, other.etag), (self.last_modified, other.last_modified))
        if any(a is not None and b is not None and a != b for a, b in pairs):
            return False
        return SIZE_UNKNOWN in (self.size, other.size) or self.size == other.size


@functools.lru_cache(maxsize=1024)
def _unix_time(http_date: str) -> float | None:
    """An HTTP date as Unix time, or None; cached, since the files of one server share a few dates."""
    try:
        return email.utils.parsedate_to_datetime(http_date).timestamp()
    except (TypeError, ValueError):
        return None


class SmallAnswer(NamedTuple):
    """What a batch of small files got for one of them: its version and the answer's headers, and how to
    make the request and status lines that `transfer -v` shows (the per-file way tells them through its
    sink); made only when a stream watches, since a batch of 10,000 files made them all for nobody."""

    validator: RemoteValidator
    headers: Mapping[str, str]
    exchange: Callable[[], tuple[str, str]]


@dataclass(frozen=True)
class DownloadSpec:
    """One attempt at one file, as the core asks for it."""

    url: str
    #: Bytes already durable in the temporary file; 0 is a fresh start.
    offset: int
    #: Validator of the response that produced those bytes.
    validator: RemoteValidator | None
    #: The job's custom headers, sent on every request.
    headers: Mapping[str, str] = field(default_factory=dict)
    #: BITS_JOB_PROPERTY_DYNAMIC_CONTENT: no ranges, no size required, restart from 0 when interrupted.
    dynamic_content: bool = False
    #: SetHttpMethod: a method other than GET never resumes with a range and never takes the fast path.
    method: str = "GET"
    #: A file that ends up at most this large is written but not synced: the caller makes many
    #: such files durable with one sync (a per-file fdatasync would dominate their cost).
    defer_sync_below: int = 0
    #: The job's HTTP proxy ("http://host:port", no credentials), or None to connect directly.
    #: A fast path that cannot speak to proxies must leave requests with a proxy to aiohttp.
    proxy: str | None = None
    #: SetSecurityFlags (certificate checks and the redirect policy), the job's CA file and client certificate
    tls: TlsSettings = TlsSettings()


class VersionChanged(TransferError):
    """A range request found another version of the remote file than the bytes already here."""

    def __init__(self, shown: str) -> None:
        super().__init__(ErrorCode.E_FAIL, f"{shown} changed on the server while its ranges were fetched; the file starts again",
                         transient=True)


class DownloadSink(Protocol):
    """Implemented by the core; called on the event loop thread."""

    def started(self, validator: RemoteValidator, offset: int) -> None:
        """The response is accepted; bytes continue at `offset` (0 when the file restarted).

        Record `offset` before returning: on a restart the transport truncates the file next.
        """

    def received(self, offset: int) -> None:
        """Bytes [0, offset) are written, not yet durable: progress only, a few calls a second."""

    def durable(self, offset: int) -> None:
        """Bytes [0, offset) are fsync'ed in the temporary file: the core may record this offset."""

    def redirected(self, url: str) -> None:
        """The redirect policy (REPORT, DISALLOW) makes `url` the file's remote name."""

    def exchanged(self, request: str, response: str, headers: Mapping[str, str]) -> None:
        """One HTTP request line and the status line answering it (`openbits transfer -v`), with the answer's
        headers (a Content-Disposition names the file)."""


class Throttle(Protocol):
    """Bandwidth seam: wait until `nbytes` may pass. None means unlimited."""

    async def consume(self, nbytes: int) -> None: ...


@contextlib.contextmanager
def watching(throttle: Throttle | None, sock: socket.socket | None) -> Iterator[None]:
    """While a transfer runs, a throttle that senses the link (bandwidth/sensing.py) watches its socket."""
    attach, detach = getattr(throttle, "attach", None), getattr(throttle, "detach", None)
    if sock is None or attach is None or detach is None:
        yield
        return
    attach(sock)
    try:
        yield
    finally:
        detach(sock)


def status_phrase(status: int, fallback: str | None = None) -> str:
    """The reason phrase of an HTTP status, for descriptions a person reads."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return fallback or "Unknown"


class ProgressReporter:
    """Rate-limits `sink.received`: the core wants progress a few times a second, not a call per chunk."""

    def __init__(self, sink: DownloadSink, interval: float = 0.25) -> None:
        self._sink = sink
        self._interval = interval
        self._next = time.monotonic() + interval

    def update(self, offset: int) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._sink.received(offset)
            self._next = now + self._interval
