"""The one line `systemctl status openbitsd` shows: jobs held, jobs transferring, the current rate."""

from __future__ import annotations

import time
from collections.abc import Mapping

from ..enums import JobState
from ..model.job import Job


class Activity:
    """Samples the transferring jobs' bytes each time it is asked and reports the rate since the last time."""

    def __init__(self, jobs: Mapping[str, Job]) -> None:
        self._jobs = jobs
        self._bytes: dict[str, int] = {}
        self._stamp = time.monotonic()

    def line(self) -> str:
        now = time.monotonic()
        moving = {job.id: job.bytes_transferred for job in self._jobs.values() if job.state == JobState.TRANSFERRING}
        # a job that stopped transferring since the last sample still counts its last bytes
        for job_id in self._bytes.keys() - moving.keys():
            job = self._jobs.get(job_id)
            if job is not None:
                moving[job_id] = job.bytes_transferred
        moved = sum(max(0, count - self._bytes.get(job_id, count)) for job_id, count in moving.items())
        rate = moved / max(now - self._stamp, 1e-3)
        self._bytes = {job_id: count for job_id, count in moving.items()
                       if self._jobs[job_id].state == JobState.TRANSFERRING}
        self._stamp = now
        transferring = len(self._bytes)
        return f"{len(self._jobs)} jobs, {transferring} transferring, {rate / 1e6:.1f} MB/s"
