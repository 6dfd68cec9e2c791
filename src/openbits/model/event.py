"""What an event is: a numbered, durable record of one change of one job, serialized once."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..enums import JobState, NotifyFlags


class EventKind(enum.StrEnum):
    """The callback methods of IBackgroundCopyCallback3, by the Python names a client implements."""

    JOB_TRANSFERRED = "job_transferred"
    JOB_ERROR = "job_error"
    JOB_MODIFICATION = "job_modification"
    FILE_TRANSFERRED = "file_transferred"
    FILE_RANGES_TRANSFERRED = "file_ranges_transferred"

    @property
    def flag(self) -> NotifyFlags:
        return NotifyFlags[self.name]


#: The two events a callback must acknowledge and a command line answers (BITS retries only these).
NOTIFICATIONS = {JobState.TRANSFERRED: EventKind.JOB_TRANSFERRED, JobState.ERROR: EventKind.JOB_ERROR}


def wanted(flags: int, kind: EventKind) -> bool:
    """Whether SetNotifyFlags asked for `kind`; DISABLE silences everything. The ints' own `&`, as in
    core/cost.py cost_allows: enum.Flag's builds a flag for each answer, and every event asks."""
    return not int.__and__(flags, NotifyFlags.DISABLE) and bool(int.__and__(flags, kind.flag))


@dataclass(frozen=True, slots=True)
class Event:
    """One event as stored and streamed; `doc` is its wire form (schema.models.EventInfo) as JSON."""

    seq: int
    time: float
    job_id: str
    owner_uid: int
    kind: EventKind
    doc: str


@dataclass(frozen=True, slots=True)
class Exchange:
    """One HTTP request and the status line answering it, for streams that asked (`transfer -v`): live only,
    never stored and without a seq; `doc` is its wire form (schema.models.ExchangeInfo) as JSON."""

    job_id: str
    owner_uid: int
    doc: str
