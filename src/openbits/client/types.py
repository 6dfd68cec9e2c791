"""Plain snapshots the client hands out: job progress and the files of a job.

They are values (frozen dataclasses), not live handles, so the sync and the
async API share them unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from ..schema.models import ErrorInfo, FileInfo, JobInfo
from ..enums import ProxyUsage
from ..errors import BitsError


@dataclass(frozen=True)
class Progress:
    """BG_JOB_PROGRESS: bytes_total is -1 (SIZE_UNKNOWN) while any file's size is unknown."""

    bytes_total: int
    bytes_transferred: int
    files_total: int
    files_transferred: int

    @classmethod
    def of(cls, info: JobInfo) -> Progress:
        return cls(info.bytes_total, info.bytes_transferred, info.files_total, info.files_transferred)


@dataclass(frozen=True)
class ReplyProgress:
    """BG_JOB_REPLY_PROGRESS: bytes_total is -1 (SIZE_UNKNOWN) until the reply begins."""

    bytes_total: int
    bytes_transferred: int

    @classmethod
    def of(cls, info: JobInfo) -> ReplyProgress:
        return cls(info.reply_bytes_total, info.reply_bytes_transferred)


@dataclass(frozen=True)
class ProxySettings:
    """GetProxySettings: the usage, and the proxy and bypass lists of OVERRIDE (None otherwise)."""

    usage: ProxyUsage
    proxy_list: str | None
    bypass_list: str | None

    @classmethod
    def of(cls, info: JobInfo) -> ProxySettings:
        return cls(info.proxy_usage, info.proxy_list, info.proxy_bypass_list)


@dataclass(frozen=True)
class FileProgress:
    """BG_FILE_PROGRESS: bytes_total is -1 until the server has told the size."""

    bytes_total: int
    bytes_transferred: int
    completed: bool


@dataclass(frozen=True)
class File:
    """One file of a job as the daemon last reported it (IBackgroundCopyFile's getters)."""

    remote_url: str
    local_path: str
    temp_path: str
    progress: FileProgress
    #: BITS_FILE_PROPERTY_ID_HTTP_RESPONSE_HEADERS: the last answer's 'Name: value' lines
    response_headers: tuple[str, ...] = ()
    #: GetFileRanges: (offset, length) pairs, length LENGTH_TO_EOF to the end; None for a whole file
    ranges: tuple[tuple[int, int], ...] | None = None
    #: GetFilledFileRanges of an on-demand job's file: (offset, length) of the bytes in; None for other jobs
    filled_ranges: tuple[tuple[int, int], ...] | None = None
    #: what open() does: set by the blocking client's Job.files
    opener: Callable[[], BinaryIO] | None = field(default=None, compare=False, repr=False)

    def open(self) -> BinaryIO:
        """Read the file while it downloads (an on-demand job; else a transferred file): reads ask for the ranges
        they need and wait for them."""
        if self.opener is None:
            raise TypeError("open() is a blocking client's: take the file from Manager().get_job(...).files")
        return self.opener()

    @property
    def completed(self) -> bool:
        return self.progress.completed

    @classmethod
    def of(cls, info: FileInfo) -> File:
        progress = FileProgress(info.bytes_total, info.bytes_transferred, info.completed)
        ranges = None if info.ranges is None else tuple((r.offset, r.length) for r in info.ranges)
        filled = None if info.filled_ranges is None else tuple((r.offset, r.length) for r in info.filled_ranges)
        return cls(info.remote_url, info.local_path, info.temp_path, progress, tuple(info.response_headers or ()), ranges,
                   filled)


def error_of(info: JobInfo) -> BitsError | None:
    """The job's last error (IBackgroundCopyJob::GetError) as the exception type callers already catch."""
    return None if info.error is None else bits_error(info.error)


def bits_error(error: ErrorInfo) -> BitsError:
    raised = BitsError(error.code, error.description, error.context, error.http_status)
    return raised if error.file is None else raised.of_file(error.file.index, error.file.remote_url,
                                                           error.file.local_path)
