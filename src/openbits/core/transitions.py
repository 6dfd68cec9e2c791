"""Each job's state changes, seen once: one log line each, and the error counts the metrics show.

A JobChanges listener is called after every durable change, most of them progress; this one
remembers each job's last state so a change of state is told exactly once, whoever made it
(an API call, the scheduler, the retention sweep).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

from ..enums import JobState
from ..model.job import Job
from .changes import JobChanges

log = logging.getLogger("openbits.jobs")

#: The states a failed attempt puts a job in.
ERROR_STATES = (JobState.ERROR, JobState.TRANSIENT_ERROR)


class Transitions:
    """Logs every state change of a job and counts the errors by (BITS error name, owner uid)."""

    def __init__(self, jobs: Iterable[Job], changes: JobChanges) -> None:
        self._state: dict[str, JobState] = {job.id: job.state for job in jobs}
        changes.listen(self.observe)
        #: (error name, owner uid) -> failed attempts since the daemon started
        self.errors: Counter[tuple[str, int]] = Counter()

    def observe(self, job: Job) -> None:
        before = self._state.get(job.id)
        if before == job.state:
            return
        if job.state.is_final:
            self._state.pop(job.id, None)  # a final state never changes again
        else:
            self._state[job.id] = job.state
        fields = {"openbits_job": job.id, "openbits_user": job.owner_uid}
        if job.state in ERROR_STATES and job.error:
            name = str(job.error.get("name", "E_FAIL"))
            self.errors[(name, job.owner_uid)] += 1
            # ERROR waits for its owner: a warning; TRANSIENT_ERROR is retried by itself (or waits for a
            # policy, such as a metered network): information.
            level = logging.WARNING if job.state == JobState.ERROR else logging.INFO
            log.log(level, "job %s (%r): %s -> %s: %s: %s", job.id, job.name, _name(before), job.state.name, name,
                    job.error.get("description", ""), extra={**fields, "openbits_error": name})
        else:
            log.info("job %s (%r): %s -> %s", job.id, job.name, _name(before), job.state.name, extra=fields)


def _name(state: JobState | None) -> str:
    return state.name if state is not None else "(new)"
