"""The store interface, so a PostgreSQL backend can serve a fleet later."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..model.job import Job
from ..model.event import Event


class Store(Protocol):
    def load_jobs(self) -> list[Job]:
        """Every stored job with its files; called once at start-up, before the event loop runs."""

    async def save_job(self, job: Job, files: Sequence[int] = (), events: Sequence[Event] = ()) -> None:
        """Make the job's fields (and the files at those indexes, and the events the change made) durable in one
        transaction; returns once they are."""

    async def delete_job(self, job_id: str, with_events: bool = False) -> None:
        """Forget a job and its files for good (and its events: a job pruned for its owner's budget)."""

    async def checkpoint(self) -> None:
        """Leave no older copy of what changes replaced or removed on disk (a removed credential's sealed value):
        the database holds the newest of everything and its log is emptied."""

    # -- events (openbits.events) --

    def last_event_seq(self) -> int:
        """The highest seq ever stored (0 for none); called at start-up. The newest event is never pruned."""

    async def append_events(self, events: Sequence[Event]) -> None:
        """Make events durable that no job change carries (held-back modifications)."""

    async def read_events(self, after: int, limit: int, owner_uid: int | None, job_id: str | None) -> list[Event]:
        """Up to `limit` stored events with seq > after, oldest first, of that owner (None: all) and job."""

    async def prune_events(self, older_than: float, keep_at_most: int) -> None:
        """Drop events older than the Unix time `older_than`, and beyond the newest `keep_at_most`."""

    async def close(self) -> None:
        """Finish pending writes and release the database."""
