"""SavedProgress: what both runners share about one file's progress - it moves in memory, and is saved queued.

A transfer reports many offsets a second; each save is a commit (and its events). Saves of one
file never overlap and the newest offset always wins; the one save task belongs to this object,
and the runner awaits `flush()` before it leaves the file.
"""

from __future__ import annotations

import asyncio
import email.message
import time
from collections.abc import Mapping

from ..model.job import Job
from ..model.rate import RateMeter
from .service import JobService


def disposition_name(header: str | None) -> str | None:
    """The file name a Content-Disposition header gives (filename*= in UTF-8 included), as the server wrote
    it: whoever uses it must still make it a plain name (cli/transfer.py does)."""
    if not header:
        return None
    message = email.message.Message()
    message["Content-Disposition"] = header
    return message.get_filename()


class SavedProgress:
    def __init__(self, service: JobService, job: Job, index: int) -> None:
        self._service, self._job, self._index = service, job, index
        self._file = job.files[index]
        self._saving: asyncio.Task[None] | None = None
        self._dirty = False

    def moved(self, offset: int, before: int) -> None:
        """Bytes moved past `before`: the no-progress clock starts again."""
        if offset > before:
            self._job.last_progress_time = time.time()

    def arrived(self) -> None:
        """The file's progress moved in memory, not durable yet: its rate is sampled, and the event bus tells
        the job's streams (rate-limited) rather than waiting for the next saved offset."""
        f, now = self._file, time.monotonic()
        if f.meter is None:
            f.meter = RateMeter(f.bytes_transferred, now)
            if self._job.metered is None:
                self._job.metered = []
            self._job.metered.append(f)
        else:
            f.meter.sample(f.bytes_transferred, now)
        self._service.events.progressed(self._job, self._index)

    def exchanged(self, request: str, response: str, headers: Mapping[str, str]) -> None:
        """An HTTP request of this file and its answer: to the streams that asked for them (`transfer -v`)."""
        self._service.events.exchanged(self._job, self._index, request, response,
                                       disposition_name(headers.get("Content-Disposition")))

    def _save(self) -> None:
        """Queue a save of the job with this file."""
        if self._saving is None or self._saving.done():
            self._saving = asyncio.get_running_loop().create_task(self._save_loop())
        else:
            self._dirty = True

    async def _save_loop(self) -> None:
        while True:
            self._dirty = False
            await self._service.commit(self._job, (self._index,))
            if not self._dirty:
                return

    async def flush(self) -> None:
        """Wait for the last queued save."""
        if self._saving is not None:
            await self._saving
