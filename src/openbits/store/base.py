"""The store interface, so a PostgreSQL backend can serve a fleet later."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..core.job import Job


class Store(Protocol):
    def load_jobs(self) -> list[Job]:
        """Every stored job with its files; called once at start-up, before the event loop runs."""

    async def save_job(self, job: Job, files: Sequence[int] = ()) -> None:
        """Make the job's fields (and the files at those indexes) durable; returns once they are."""

    async def delete_job(self, job_id: str) -> None:
        """Forget a job and its files for good."""

    async def close(self) -> None:
        """Finish pending writes and release the database."""
