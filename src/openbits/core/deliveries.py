"""Who hears of a job's JOB_TRANSFERRED or JOB_ERROR: its callback interface, else its command line, until one did.

The protocol (BITS's rules for IBackgroundCopyCallback and SetNotifyCmdLine, over the event stream):

1. When a job enters TRANSFERRED or ERROR, the bus records a job_transferred / job_error event and, in the
   same transaction, makes its seq the job's `notify_pending`. The notification is pending until a callback
   or the command line handled it, or the job left that state (Complete, Cancel, Resume, ...).
2. A client registers a callback interface for a job by opening `GET /v1/events?job=J&callbacks=true`
   (SetNotifyInterface). The last registration wins; an earlier stream for the job gets `event: superseded`
   and ends. The stream's `ready` message carries the subscription id. A stream registered after the event
   gets the pending event first, whatever its `since` ("BITS calls your callback even if the event already
   occurred").
3. The client runs the callback and answers `POST /v1/events/{seq}/ack {subscription, ok, message}`:
   ok=true is S_OK, ok=false (the callback raised) is E_FAIL. Only the current interface's answer for the
   pending seq is accepted.
4. The callback counts as failed when it answers ok=false, does not answer within `callback_timeout`, or is
   unreachable: its stream is gone (the client exited or crashed) or none was ever registered while a
   command line is set.
5. On failure: with a command line, run it as the owner (notify.py); exit 0 handles the notification.
   Without one, or when the program exits non-zero, wait the job's minimum retry delay and, while the job is
   still TRANSFERRED/ERROR, try again: the event is sent anew (a new seq, `redelivery: true`) to the
   interface, then the command line.
6. Nobody registered and no command line: the notification waits, durably, for either to appear.
   NotifyFlags decide at every attempt: without the event's flag, or with DISABLE, nothing is sent or run.

State is `job.notify_pending` (in the store) plus the live interfaces and answers (in memory), so after a
daemon restart every pending notification is tried again (at least once delivery).
"""

from __future__ import annotations

import asyncio
import time

from ..model.job import Job
from ..events.bus import EventBus, Subscription
from ..events.notify import run_cmdline
from ..model.event import NOTIFICATIONS, wanted
from ..model.identity import Identity
from ..waiting import wait_set
from .changes import JobChanges
from .service import JobService


class Deliveries:
    def __init__(self, service: JobService, bus: EventBus, changes: JobChanges, socket_path: str) -> None:
        """`socket_path`: the daemon's, for the command lines it runs."""
        self._service, self._socket_path = service, socket_path
        self._bus = bus
        #: job id -> the stream registered as its callback interface
        self._interfaces: dict[str, Subscription] = {}
        #: (subscription id, seq) -> the callback's answer, until the job's delivery reads it
        self._answers: dict[tuple[str, int], bool] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._group: asyncio.TaskGroup | None = None
        changes.listen(self._observe)

    async def run(self) -> None:
        """Own one delivery task per job with a pending notification; start those left from before a restart."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            try:
                for job in list(self._service.jobs.values()):
                    self._observe(job)
                await asyncio.Future()  # until cancelled
            finally:
                self._group = None  # a save still finishing at shutdown starts no delivery in a closed group

    def _observe(self, job: Job) -> None:
        """After every durable change: start the job's delivery if it needs one, else let it look again."""
        self._poke(job.id)
        if job.notify_pending and job.id not in self._tasks and self._group is not None:
            self._tasks[job.id] = self._group.create_task(self._deliver(job.id), name=f"notify {job.id}")

    def _poke(self, job_id: str) -> None:
        wake = self._wakes.get(job_id)
        if wake is not None:
            wake.set()

    # -- the callback interface ----------------------------------------------

    def register(self, job: Job, sub: Subscription) -> None:
        """SetNotifyInterface: `sub` is now the job's interface; the previous one is told and ends."""
        previous = self._interfaces.get(job.id)
        if previous is not None:
            previous.end("superseded: another client registered a callback interface for the job")
        self._interfaces[job.id] = sub
        self._poke(job.id)

    def registered(self, job: Job) -> bool:
        """Whether a callback interface is registered for the job now (GetNotifyInterface)."""
        return job.id in self._interfaces

    def unregister(self, sub: Subscription) -> None:
        """The stream ended: its callbacks are unreachable from now on."""
        if sub.job_id is not None and self._interfaces.get(sub.job_id) is sub:
            del self._interfaces[sub.job_id]
            self._poke(sub.job_id)
        for key in [key for key in self._answers if key[0] == sub.id]:
            del self._answers[key]

    def answer(self, caller: Identity, seq: int, subscription: str, ok: bool) -> bool:
        """A callback's outcome; accepted only for a pending seq from the job's current interface."""
        for job_id, sub in self._interfaces.items():
            job = self._service.jobs.get(job_id)
            if (sub.id == subscription and job is not None and job.notify_pending == seq
                    and self._service.visible(caller, job)):
                self._answers[(sub.id, seq)] = ok
                self._poke(job_id)
                return True
        return False

    # -- one job's delivery --------------------------------------------------

    async def _deliver(self, job_id: str) -> None:
        wake = self._wakes[job_id] = asyncio.Event()
        asked: tuple[str, int] | None = None
        deadline = 0.0
        try:
            while (job := self._service.jobs.get(job_id)) is not None and job.notify_pending:
                seq = job.notify_pending
                if not wanted(job.notify_flags, NOTIFICATIONS[job.state]):
                    await self._sleep(wake, None)  # until the flags (or the state) change
                    continue
                interface = self._interfaces.get(job_id)
                if interface is not None:
                    key = (interface.id, seq)
                    if key not in self._answers:
                        if asked != key:
                            asked, deadline = key, time.monotonic() + self._service.config.callback_timeout
                        if time.monotonic() < deadline:
                            await self._sleep(wake, deadline - time.monotonic())
                            continue
                    if self._answers.pop(key, False):
                        await self._handled(job, seq)
                        return
                if job.notify_cmdline:
                    if await run_cmdline(job, self._socket_path) == 0:
                        await self._handled(job, seq)
                        return
                elif interface is None:
                    await self._sleep(wake, None)  # nobody to tell: wait for an interface or a command line
                    continue
                retry = time.monotonic() + job.minimum_retry_delay
                while job.notify_pending == seq and (left := retry - time.monotonic()) > 0:
                    await self._sleep(wake, left)
                if job.notify_pending == seq and self._interfaces.get(job_id) is not None:
                    self._bus.again(job)
                    await self._service.commit(job)
        finally:
            del self._wakes[job_id]
            del self._tasks[job_id]

    @staticmethod
    async def _sleep(wake: asyncio.Event, seconds: float | None) -> None:
        await wait_set(wake, seconds)
        wake.clear()

    async def _handled(self, job: Job, seq: int) -> None:
        if job.notify_pending == seq:
            job.notify_pending = 0
            await self._service.commit(job)
