"""Reading a file of an on-demand job while it downloads: each read asks for the ranges it needs and waits.

`job.files[0].open()` gives a buffered binary file; a seek and a read request the missing bytes
(RequestFileRanges), resume the job and wait until they are in, then read them from the temporary
file (the owner's, so this process may read it). A player or an unzip can start before the end.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from typing import Protocol

from ..enums import JobState
from ..errors import BitsError, ErrorCode
from ..model.ranges import first_gap
from ..schema.models import FileInfo, JobInfo
from .types import bits_error


class Job(Protocol):
    """What the reader uses of the blocking client's Job."""

    @property
    def id(self) -> str: ...
    @property
    def last_info(self) -> JobInfo: ...
    @property
    def state(self) -> JobState: ...
    def info(self) -> JobInfo: ...
    def resume(self) -> JobInfo: ...
    def wait_info(self, timeout: float | None = None) -> JobInfo: ...
    def request_file_ranges(self, file_index: int, ranges: Iterable[tuple[int, int]]) -> JobInfo: ...

#: Bytes a buffered reader asks for at once (io's default of 8 KiB would be a request per 8 KiB).
BUFFER = 1024 * 1024
#: Seconds one wait for the requested bytes lasts before it looks again.
WAIT = 30.0


class RangeReader(io.RawIOBase):
    """The raw side; `open_file` wraps it in a BufferedReader."""

    def __init__(self, job: Job, index: int) -> None:
        super().__init__()
        self._job, self._index = job, index
        self._position = 0
        self._fd: int | None = None
        self._info = self._file()
        if not job.last_info.on_demand and not self._info.completed:
            raise BitsError(ErrorCode.BG_E_RANDOM_ACCESS_NOT_SUPPORTED, f"file {index} of job {job.id} is neither "
                            "transferred nor in an on-demand job (set on_demand before the job starts)")

    def _file(self) -> FileInfo:
        return self._job.info().files[self._index]

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    @property
    def size(self) -> int:
        if self._info.bytes_total < 0:
            self._wait_for(0, 1)
        return self._info.bytes_total

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self.size - self._position)
        if count <= 0:
            return 0
        self._wait_for(self._position, count)
        if self._fd is None:
            self._fd = os.open(self._info.temp_path, os.O_RDONLY | os.O_CLOEXEC)
        read = os.preadv(self._fd, [memoryview(buffer)[:count]], self._position)
        self._position += read
        return read

    def _wait_for(self, offset: int, count: int) -> None:
        """Until bytes [offset, offset + count) are in the temporary file."""
        while not self._has(offset, count):
            self._job.request_file_ranges(self._index, [(offset, count)])
            if self._job.state not in (JobState.QUEUED, JobState.CONNECTING, JobState.TRANSFERRING):
                self._job.resume()
            info = self._job.wait_info(WAIT)
            if info.state == JobState.ERROR and info.error is not None:
                raise bits_error(info.error)
            self._info = info.files[self._index]

    def _has(self, offset: int, count: int) -> bool:
        if self._info.completed:
            return True
        filled = [[r.offset, r.length] for r in self._info.filled_ranges or ()]
        return first_gap(filled, offset, offset + count) is None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        super().close()


def open_file(job: Job, index: int) -> io.BufferedReader:
    return io.BufferedReader(RangeReader(job, index), BUFFER)
