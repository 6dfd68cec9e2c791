"""The download sinks of one file (transport.base.DownloadSink): how its progress moves and is saved.

A whole file's progress is an offset; a file of ranges tells its version from the answers; ranges that
land at their own offsets (on-demand, Metalink pieces fetched again) are counted in by the runner.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..enums import JobState
from ..model.job import Job
from ..transport.base import RemoteValidator
from .digests import Verification
from .progress import SavedProgress
from .service import JobService


class FileSink(SavedProgress):
    """DownloadSink for one file: progress in memory, durable offsets to the store."""

    def __init__(self, service: JobService, job: Job, index: int,
                 on_started: Callable[[int, int], None] = lambda index, size: None,
                 verification: Verification | None = None) -> None:
        super().__init__(service, job, index)
        self._on_started = on_started
        self._verification = verification

    def started(self, validator: RemoteValidator, offset: int) -> None:
        f = self._file
        forgets_bytes = offset == 0 and f.durable_offset > 0
        if offset == 0:
            f.restart()
        f.validator, f.response_headers = validator.to_dict(), validator.headers
        f.bytes_total = validator.size
        if self._verification is not None:
            self._verification.answered(validator.headers, offset)
        self._on_started(self._index, validator.size)  # the runner may start the next small file
        # Save only what must be on record now: a restart from zero (the stored offset must not
        # outlive the bytes) or the job's move to TRANSFERRING. Otherwise the first durable offset
        # or the completion records the validator, saving a commit per small file.
        if forgets_bytes or self._job.state != JobState.TRANSFERRING:
            self._job.state = JobState.TRANSFERRING
            self._save()

    def received(self, offset: int) -> None:
        self.moved(offset, self._file.bytes_transferred)
        self._file.bytes_transferred = offset
        self.arrived()

    def durable(self, offset: int) -> None:
        if offset > self._file.bytes_transferred:  # a stopped transfer's last bytes, never shown (ProgressReporter)
            self.received(offset)
        self._file.durable_offset = offset
        self._save()

    def redirected(self, url: str) -> None:
        """REPORT or DISALLOW: the remote name becomes the URL the server redirected to (a JobModification)."""
        self._file.remote_url = url
        self._job.touch()
        self._service.events.modified(self._job)
        self._save()


class RangesSink(FileSink):
    """A file of ranges: the remote answers tell the version, the local size is the ranges' (set by the runner)."""

    def started(self, validator: RemoteValidator, offset: int) -> None:
        f = self._file
        f.validator, f.response_headers = validator.to_dict(), validator.headers
        if self._job.state != JobState.TRANSFERRING:
            self._job.state = JobState.TRANSFERRING
            self._save()


class PlacedSink(RangesSink):
    """Ranges that land at their own offsets (an on-demand job's, Metalink pieces fetched again): the runner
    counts them in as each is durable, not an offset."""

    def received(self, offset: int) -> None:
        self.moved(offset, 0)

    def durable(self, offset: int) -> None:
        pass  # the runner records a range once download_range has made it durable


def keep_remote_time(fd: int, validator: RemoteValidator) -> None:
    """The file's modification time is the remote Last-Modified (BITS keeps the remote time); the
    descriptor's, so no path is touched (the daemon's root may change the times of a file it may write)."""
    mtime = validator.mtime
    if mtime is not None:
        os.utime(fd, (mtime, mtime))
