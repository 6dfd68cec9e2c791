"""Final jobs kept for their owners, within a budget per user: the oldest go first.

Cancelled and acknowledged jobs stay queryable for final_job_retention, but a user who creates,
fills and cancels jobs in a loop must not grow the daemon's memory and the store without bound
while their live-job count stays 0 (issue 16, churn). Each owner's retained final jobs count
against max_retained_jobs_per_user jobs and max_retained_bytes_per_user bytes of state.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from ..model.config import Config
from ..model.job import Job

#: A job's own fields, beyond its files' names, as stored (a measured JSON document is ~1 KiB)
_JOB_BYTES = 1024
#: Per file, beyond its two names: sizes, times, validators
_FILE_BYTES = 256


def state_bytes(job: Job) -> int:
    """About how many bytes of state the job keeps in memory and in the store."""
    return _JOB_BYTES + sum(_FILE_BYTES + len(f.remote_url) + len(f.local_path) for f in job.files)


class RetainedJobs:
    """Per owner, the final jobs still kept, oldest first, and their bytes."""

    def __init__(self, config: Callable[[], Config]) -> None:
        self._config = config
        self._jobs: dict[int, collections.OrderedDict[str, int]] = {}
        self._bytes: collections.Counter[int] = collections.Counter()

    def add(self, job: Job) -> list[str]:
        """job became final: keep it; returns the ids of the owner's oldest final jobs that must go now."""
        kept = self._jobs.setdefault(job.owner_uid, collections.OrderedDict())
        size = state_bytes(job)
        kept[job.id] = size
        self._bytes[job.owner_uid] += size
        config, evicted = self._config(), []
        while len(kept) > 1 and (len(kept) > config.max_retained_jobs_per_user
                                 or self._bytes[job.owner_uid] > config.max_retained_bytes_per_user):
            oldest, size = kept.popitem(last=False)
            self._bytes[job.owner_uid] -= size
            evicted.append(oldest)
        return evicted

    def remove(self, job: Job) -> None:
        """job is forgotten (past its retention) or is no longer final."""
        kept = self._jobs.get(job.owner_uid)
        size = kept.pop(job.id, None) if kept is not None else None
        if size is not None:
            self._bytes[job.owner_uid] -= size
            if not kept:
                del self._jobs[job.owner_uid]
                del self._bytes[job.owner_uid]
