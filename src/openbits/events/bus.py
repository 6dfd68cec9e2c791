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
import operator
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import orjson

from ..schema.models import ErrorInfo, EventInfo, ExchangeInfo, FileRange
from ..schema.views import built, file_info, file_values
from ..model.job import JOB_PROPERTIES, Job
from ..model.config import Config
from ..enums import SIZE_UNKNOWN, JobState
from ..store import Store
from ..waiting import wait_set
from ..model.event import NOTIFICATIONS, Event, EventKind, Exchange, wanted

#: Events a live subscriber may have queued before it counts as too slow and is dropped.
SUBSCRIBER_BACKLOG = 20_000
#: Seconds at least between progress events of bytes that arrived between commits (a link of 200 kB/s
#: commits a durable offset every few seconds; without these the stream showed only the start and the end).
RECEIVED_INTERVAL = 0.5
#: Seconds between prunes of events past the retention.
PRUNE_EVERY = 60.0


#: a file not counted yet
_NOTHING = (0, 0, False)
#: a file not started, and a job of such files: shared, not a tuple more in each of 100,000 queued jobs
_UNSTARTED = (SIZE_UNKNOWN, 0, False)
_NO_PROGRESS = (SIZE_UNKNOWN, 0)


class _Totals:
    """A job's progress, kept up to date from the files each commit names.

    A commit says which files it saves, so the totals change by those files alone: a job of
    10,000 small files must not be scanned on every one of its thousands of commits.
    """

    __slots__ = ("files", "unknown", "bytes_total", "bytes_transferred", "files_transferred")

    def __init__(self, job: Job) -> None:
        #: per file: (bytes_total, bytes_transferred, completed) as last counted (a list: 100,000 one-file
        #: jobs each keep one of these, and a list costs a third of a dict)
        self.files: list[tuple[int, int, bool]] = []
        self.unknown = self.bytes_total = self.bytes_transferred = self.files_transferred = 0
        self.update(job, range(len(job.files)))

    def update(self, job: Job, indexes: Iterable[int]) -> list[int]:
        """Count the named files again; returns those that became completed."""
        newly: list[int] = []
        for index in indexes:
            f = job.files[index]
            while len(self.files) <= index:
                self.files.append(_NOTHING)
            old = self.files[index]
            new = (f.bytes_total, f.bytes_transferred, f.completed)
            if new == _UNSTARTED:
                new = _UNSTARTED
            self.files[index] = new
            self.unknown += (new[0] == SIZE_UNKNOWN) - (old[0] == SIZE_UNKNOWN)
            self.bytes_total += new[0] - old[0]
            self.bytes_transferred += new[1] - old[1]
            self.files_transferred += new[2] - old[2]
            if new[2] and not old[2]:
                newly.append(index)
        return newly

    @property
    def progress(self) -> tuple[int, int]:
        progress = (SIZE_UNKNOWN if self.unknown else self.bytes_total, self.bytes_transferred)
        return _NO_PROGRESS if progress == _NO_PROGRESS else progress


class _Seen(NamedTuple):
    """What the last event of a job told, to find what changed since.

    A NamedTuple: one is built per job at start-up, and a frozen dataclass's constructor took
    0.36 s for 100,000 jobs against a tenth of that.
    """

    state: JobState
    properties: tuple[object, ...]
    progress: tuple[int, ...]

    @classmethod
    def of(cls, job: Job, totals: _Totals) -> _Seen:
        # the lists as copies: a list changed in place still shows as a change; one flat tuple, not
        # one per kind (100,000 queued jobs keep one of these each)
        return cls(job.state, (*_PLAIN(job), *[tuple(v) if v else () for v in _LISTED(job)], job.owner_uid,
                               len(job.files)), totals.progress)


#: The properties whose change is a JOB_MODIFICATION event (model/properties.py), each kind read in one C call.
_PLAIN = operator.attrgetter(*(p.name for p in JOB_PROPERTIES if p.how.notifies and not p.is_list))
_LISTED = operator.attrgetter(*(p.name for p in JOB_PROPERTIES if p.how.notifies and p.is_list))


@dataclass(eq=False)
class Subscription:
    """One open event stream: what it may see, and the events waiting to be written to it."""

    owner_uid: int | None  # None: every user's (an administrator with all_users)
    job_id: str | None
    id: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    queue: asyncio.Queue[Event | Exchange | None] = field(default_factory=lambda: asyncio.Queue(SUBSCRIBER_BACKLOG))
    #: the stream asked for the HTTP exchanges of the jobs it sees (exchanges=true)
    exchanges: bool = False
    #: why the stream must end (too slow, superseded); the writer says it and closes
    ended: str | None = None

    def sees(self, event: Event | Exchange) -> bool:
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
        self._totals: dict[str, _Totals] = {job.id: _Totals(job) for job in jobs.values()}
        self._seen: dict[str, _Seen] = {job.id: _Seen.of(job, self._totals[job.id]) for job in jobs.values()}
        #: monotonic time of each job's last modification event
        self._last_modification: dict[str, float] = {}
        #: jobs with a modification held back, and when it is due
        self._held: dict[str, float] = {}
        #: jobs whose pending notification is to be sent again with the next commit
        self._again: set[str] = set()
        #: jobs changed where no property compared here shows it (a file's remote name)
        self._modified: set[str] = set()
        self._subscribers: set[Subscription] = set()
        self._wake = asyncio.Event()

    # -- producing ----------------------------------------------------------

    def record(self, job: Job, files: Iterable[int] = (),
               ranges: tuple[int, list[list[int]]] | None = None) -> list[Event]:
        """The events the job's change since the last call makes; sets job.notify_pending (saved with them).

        `files` are the indexes of the files the change saves (the only ones whose progress moved); `ranges`:
        a file's requested ranges that are all in now (FILE_RANGES_TRANSFERRED).
        """
        before = self._seen.get(job.id)
        totals = self._totals.get(job.id)
        if totals is None:
            totals = self._totals[job.id] = _Totals(job)
            newly = [i for i, f in enumerate(job.files) if f.completed]
        else:
            newly = totals.update(job, files)
        now = _Seen.of(job, totals)
        self._seen[job.id] = now
        events = self._file_events(job, totals, sorted(newly)) if newly else []
        if ranges is not None:
            events.append(self._event(job, EventKind.FILE_RANGES_TRANSFERRED, totals, ranges[0], ranges=ranges[1]))
        if before is None or before.state != job.state:
            kind = NOTIFICATIONS.get(job.state)
            if kind is None:
                job.notify_pending = 0
                events.append(self._modification(job, totals))
            else:
                events.append(self._event(job, kind, totals))
                job.notify_pending = events[-1].seq
                self._held.pop(job.id, None)
        elif job.id in self._again and job.notify_pending:
            events.append(self._event(job, NOTIFICATIONS[job.state], totals, redelivery=True))
            job.notify_pending = events[-1].seq
        elif before.properties != now.properties or before.progress != now.progress or job.id in self._modified:
            due = self._last_modification.get(job.id, 0.0) + job.minimum_notification_interval_ms / 1000
            if time.monotonic() >= due:
                events.append(self._modification(job, totals))
            elif job.id not in self._held:
                self._held[job.id] = due
                self._wake.set()
        self._again.discard(job.id)
        self._modified.discard(job.id)
        return events

    def progressed(self, job: Job, index: int) -> None:
        """Bytes of file `index` arrived that are not durable yet (no commit): a progress event goes out no
        sooner than the job's notification interval and RECEIVED_INTERVAL after the last one, from run().

        BITS's BytesTransferred counts what arrived; the durable offset stays what resume uses.
        """
        totals = self._totals.get(job.id)
        if totals is None or job.id in self._held:
            return
        totals.update(job, (index,))
        interval = max(job.minimum_notification_interval_ms / 1000, RECEIVED_INTERVAL)
        self._held[job.id] = self._last_modification.get(job.id, 0.0) + interval
        self._wake.set()

    def again(self, job: Job) -> None:
        """Send the job's pending notification once more, as a new event, with its next commit."""
        self._again.add(job.id)

    def modified(self, job: Job) -> None:
        """The job's next commit makes a JobModification even if no compared property changed."""
        self._modified.add(job.id)

    def _modification(self, job: Job, totals: _Totals | None = None) -> Event:
        self._last_modification[job.id] = time.monotonic()
        self._held.pop(job.id, None)
        return self._event(job, EventKind.JOB_MODIFICATION, totals or self._totals.get(job.id) or _Totals(job))

    def _event(self, job: Job, kind: EventKind, totals: _Totals, file_index: int | None = None, *,
               redelivery: bool = False, ranges: list[list[int]] | None = None) -> Event:
        seq, now = next(self._seq), time.time()
        f = job.files[file_index] if file_index is not None else None
        info = built(EventInfo, dict(
            seq=seq, time=now, kind=kind.value, job_id=job.id, job_name=job.name, owner_uid=job.owner_uid,
            state=job.state, notify=wanted(job.notify_flags, kind), redelivery=redelivery,
            bytes_total=totals.progress[0], bytes_transferred=totals.bytes_transferred, files_total=len(job.files),
            files_transferred=totals.files_transferred, file_index=file_index, file=file_info(f) if f else None,
            transfer_rate=job.rate_now(),
            error=ErrorInfo.model_validate(job.error) if job.error and kind == EventKind.JOB_ERROR else None,
            ranges=None if ranges is None else [built(FileRange, {"offset": o, "length": n}) for o, n in ranges],
        ))
        return Event(seq, now, job.id, job.owner_uid, kind, info.model_dump_json())

    def _file_events(self, job: Job, totals: _Totals, indexes: list[int]) -> list[Event]:
        """FILE_TRANSFERRED for each of `indexes`: the job's part serialised once, then only the file's
        (a batch of small files finishes hundreds at a time; an `_event` each was ~40 us a file)."""
        kind = EventKind.FILE_TRANSFERRED
        events = [self._event(job, kind, totals, indexes[0])]
        doc = orjson.loads(events[0].doc)
        for index in indexes[1:]:
            seq, now = next(self._seq), time.time()
            doc.update(seq=seq, time=now, file_index=index, file=file_values(job.files[index]))
            # orjson writes what model_dump_json writes (compact, UTF-8 kept), ten times as fast as json
            events.append(Event(seq, now, job.id, job.owner_uid, kind, orjson.dumps(doc).decode()))
        return events

    def forget(self, job_id: str) -> None:
        """The job is gone from the daemon (past its retention); its stored events stay until theirs."""
        self._modified.discard(job_id)
        for table in (self._seen, self._totals, self._last_modification, self._held):
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

    def hears_exchanges(self) -> bool:
        """Whether a live stream asked for HTTP exchanges: if none did, nobody need describe them."""
        return any(sub.exchanges and sub.ended is None for sub in self._subscribers)

    def exchanged(self, job: Job, index: int, request: str, response: str, file_name: str | None) -> None:
        """An HTTP request of the job and its answer, to the live streams that asked for them (not stored)."""
        listening = [sub for sub in self._subscribers if sub.exchanges and sub.ended is None]
        if not listening:
            return
        info = ExchangeInfo(time=time.time(), job_id=job.id, file_index=index, request=request, response=response,
                            file_name=file_name)
        exchange = Exchange(job.id, job.owner_uid, info.model_dump_json())
        for sub in listening:
            if sub.sees(exchange):
                try:
                    sub.queue.put_nowait(exchange)
                except asyncio.QueueFull:
                    sub.end("too slow: reconnect with the last seq to catch up")

    def subscribe(self, owner_uid: int | None, job_id: str | None, exchanges: bool = False) -> Subscription:
        sub = Subscription(owner_uid, job_id, exchanges=exchanges)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def end_streams(self, reason: str) -> None:
        """The daemon stops: every open stream ends now with `reason` (its clients reconnect when it is back)."""
        for sub in self._subscribers:
            sub.end(reason)

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
            await wait_set(self._wake, max(0.0, wait))

