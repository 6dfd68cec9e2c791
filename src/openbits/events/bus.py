"""The event bus: turns every durable change of a job into numbered, durable events and fans them out.

`record(job)` runs inside `JobService.commit`, before the save: it compares the
job with what it last saw and returns the events that change makes. The store
writes them in the same transaction as the job (group commit, no fsync of its
own), so an event is durable no later than the change it describes is
acknowledged. `publish` then hands them to the live subscribers.

Modification events (progress, properties) are throttled per job by the job's
minimum notification interval: one goes out at once, later ones within the
interval are held back and coalesced into one that `run()` emits when the
interval ends, so the last change always arrives. State changes, finished
files, JOB_TRANSFERRED and JOB_ERROR are never held back.

A subscriber that cannot keep up is dropped, never waited for: it reconnects
with its last sequence number and catches up from the store.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ..api.models import ErrorInfo, EventInfo
from ..api.views import file_info
from ..core.job import Job
from ..daemon.config import Config
from ..enums import JobState
from ..store import Store
from .model import NOTIFICATIONS, Event, EventKind, wanted

#: Events a live subscriber may have queued before it counts as too slow and is dropped.
SUBSCRIBER_BACKLOG = 20_000
#: Seconds between prunes of events past the retention.
PRUNE_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class _Seen:
    """What the last event of a job told, to find what changed since."""

    state: JobState
    properties: tuple[object, ...]
    progress: tuple[int, ...]
    completed: frozenset[int]

    @classmethod
    def of(cls, job: Job) -> _Seen:
        properties = (job.name, job.description, job.priority, job.minimum_retry_delay, job.no_progress_timeout,
                      job.max_download_time, tuple(job.custom_headers), job.dynamic_content, job.max_bandwidth,
                      job.owner_uid, job.helper_token_flags, job.notify_flags, tuple(job.notify_cmdline or ()),
                      job.minimum_notification_interval_ms, len(job.files))
        progress = (job.bytes_total, job.bytes_transferred)
        return cls(job.state, properties, progress, frozenset(i for i, f in enumerate(job.files) if f.completed))


@dataclass(eq=False)
class Subscription:
    """One open event stream: what it may see, and the events waiting to be written to it."""

    owner_uid: int | None  # None: every user's (an administrator with all_users)
    job_id: str | None
    id: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    queue: asyncio.Queue[Event | None] = field(default_factory=lambda: asyncio.Queue(SUBSCRIBER_BACKLOG))
    #: why the stream must end (too slow, superseded); the writer says it and closes
    ended: str | None = None

    def sees(self, event: Event) -> bool:
        return ((self.owner_uid is None or event.owner_uid == self.owner_uid)
                and (self.job_id is None or event.job_id == self.job_id))

    def end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
            while not self.queue.empty():  # drop the backlog; the client catches up from the store
                self.queue.get_nowait()
            self.queue.put_nowait(None)


class EventBus:
    def __init__(self, store: Store, jobs: Mapping[str, Job], config_source: Callable[[], Config]) -> None:
        self._store = store
        self._jobs = jobs
        self._config = config_source
        #: seq of the newest durable event
        self.head = store.last_event_seq()
        self._seq = itertools.count(self.head + 1)
        self._seen: dict[str, _Seen] = {job.id: _Seen.of(job) for job in jobs.values()}
        #: monotonic time of each job's last modification event
        self._last_modification: dict[str, float] = {}
        #: jobs with a modification held back, and when it is due
        self._held: dict[str, float] = {}
        #: jobs whose pending notification is to be sent again with the next commit
        self._again: set[str] = set()
        self._subscribers: set[Subscription] = set()
        self._wake = asyncio.Event()

    # -- producing ----------------------------------------------------------

    def record(self, job: Job) -> list[Event]:
        """The events the job's change since the last call makes; sets job.notify_pending (saved with them)."""
        before = self._seen.get(job.id)
        now = _Seen.of(job)
        self._seen[job.id] = now
        events = [self._event(job, EventKind.FILE_TRANSFERRED, index)
                  for index in sorted(now.completed - (before.completed if before else frozenset()))]
        if before is None or before.state != job.state:
            kind = NOTIFICATIONS.get(job.state)
            if kind is None:
                job.notify_pending = 0
                events.append(self._modification(job))
            else:
                events.append(self._event(job, kind))
                job.notify_pending = events[-1].seq
                self._held.pop(job.id, None)
        elif job.id in self._again and job.notify_pending:
            events.append(self._event(job, NOTIFICATIONS[job.state], redelivery=True))
            job.notify_pending = events[-1].seq
        elif before.properties != now.properties or before.progress != now.progress:
            due = self._last_modification.get(job.id, 0.0) + job.minimum_notification_interval_ms / 1000
            if time.monotonic() >= due:
                events.append(self._modification(job))
            elif job.id not in self._held:
                self._held[job.id] = due
                self._wake.set()
        self._again.discard(job.id)
        return events

    def again(self, job: Job) -> None:
        """Send the job's pending notification once more, as a new event, with its next commit."""
        self._again.add(job.id)

    def _modification(self, job: Job) -> Event:
        self._last_modification[job.id] = time.monotonic()
        self._held.pop(job.id, None)
        return self._event(job, EventKind.JOB_MODIFICATION)

    def _event(self, job: Job, kind: EventKind, file_index: int | None = None, *, redelivery: bool = False) -> Event:
        seq, now = next(self._seq), time.time()
        f = job.files[file_index] if file_index is not None else None
        info = EventInfo(
            seq=seq, time=now, kind=kind.value, job_id=job.id, job_name=job.name, owner_uid=job.owner_uid,
            state=job.state, notify=wanted(job.notify_flags, kind), redelivery=redelivery,
            bytes_total=job.bytes_total, bytes_transferred=job.bytes_transferred, files_total=len(job.files),
            files_transferred=job.files_transferred, file_index=file_index, file=file_info(f) if f else None,
            error=ErrorInfo.model_validate(job.error) if job.error and kind == EventKind.JOB_ERROR else None,
        )
        return Event(seq, now, job.id, job.owner_uid, kind, info.model_dump_json())

    def forget(self, job_id: str) -> None:
        """The job is gone from the daemon (past its retention); its stored events stay until theirs."""
        for table in (self._seen, self._last_modification, self._held):
            table.pop(job_id, None)

    # -- delivering ---------------------------------------------------------

    def publish(self, events: Iterable[Event]) -> None:
        """Hand durable events to the live streams that may see them; a full stream is dropped."""
        for event in events:
            self.head = max(self.head, event.seq)
            for sub in self._subscribers:
                if sub.ended is None and sub.sees(event):
                    try:
                        sub.queue.put_nowait(event)
                    except asyncio.QueueFull:
                        sub.end("too slow: reconnect with the last seq to catch up")

    def subscribe(self, owner_uid: int | None, job_id: str | None) -> Subscription:
        sub = Subscription(owner_uid, job_id)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    async def replay(self, sub: Subscription, after: int) -> AsyncIterator[Event]:
        """Stored events after `after` that `sub` may see, oldest first, in pages."""
        while True:
            page = await self._store.read_events(after, 1000, sub.owner_uid, sub.job_id)
            for event in page:
                yield event
            if len(page) < 1000:
                return
            after = page[-1].seq

    # -- the bus's own work -------------------------------------------------

    async def run(self) -> None:
        """Emit held-back modifications when their interval ends, and prune events past the retention."""
        next_prune = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_prune:
                config = self._config()
                await self._store.prune_events(time.time() - config.event_retention, config.max_events)
                next_prune = now + PRUNE_EVERY
            due = [job_id for job_id, at in self._held.items() if at <= now]
            events = [self._modification(job) for job_id in due
                      if (job := self._jobs.get(job_id)) is not None and self._held.pop(job_id, None) is not None]
            if events:
                await self._store.append_events(events)
                self.publish(events)
            wait = min([next_prune, *self._held.values()]) - time.monotonic()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, wait))
            except TimeoutError:
                pass
