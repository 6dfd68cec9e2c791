"""Decides which jobs move bytes now, as BITS does.

FOREGROUND jobs all run at once. Background jobs (HIGH, NORMAL, LOW) run in
priority order, at most `max_background_transfers` at a time; inside one
priority they take turns in time slices (round robin), and a job of a higher
priority preempts a lower one. Every runner task is owned by the scheduler's
TaskGroup, and a job that leaves the action states has its runner cancelled
and awaited before anyone touches its files.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable

from ..enums import CostState, ErrorContext, JobPriority, JobState, JobType
from ..errors import BitsError, ErrorCode
from ..transport.base import Throttle
from ..waiting import wait_set
from ..transport.router import Transport
from .cost import CostMonitor, blocked_by_cost, cost_allows
from .logons import LogonMonitor, drop_tokens_of_logged_off
from ..model.job import Job
from .network import network_available
from .runner import DownloadRunner
from .upload_runner import UploadRunner
from .changes import JobChanges
from .service import JobService
from .transfers import Transfers

log = logging.getLogger("openbits.scheduler")

#: seconds between looks at the routing tables
NETWORK_POLL = 2.0
#: seconds the first pass waits for the first word on who is logged on (the system bus's call timeout)
LOGONS_KNOWN = 5.0

_RUNNING_STATES = (JobState.QUEUED, JobState.CONNECTING, JobState.TRANSFERRING)

#: The bandwidth seam: the Throttle (or None) a job's transfer passes its bytes through.
ThrottleSource = Callable[[Job], Throttle | None]


#: A background job's place outside a kept turn: (priority, monotonic time of its last turn, arrival).
_Key = tuple[int, float, int]


class Scheduler:
    def __init__(self, service: JobService, changes: JobChanges, transfers: Transfers, transport: Transport,
                 throttle_for: ThrottleSource, cost: CostMonitor, logons: LogonMonitor) -> None:
        self._service = service
        #: the network's cost state, against each job's cost flags (core/cost.py)
        self._cost = cost
        #: who is logged on: a job of an owner who is not stays QUEUED outside the run queue (core/logons.py)
        self._logons = logons
        #: set when someone may have logged off: the next pass drops the helper tokens they set
        self._logoff_check = False
        self._transport = transport
        self._throttle_for = throttle_for
        #: the running transfers (the service stops one too, for Suspend and Cancel)
        self._running = transfers.turns
        self._transfers = transfers
        #: monotonic time a job last got a turn; the round-robin order within a priority
        self._last_turn: dict[str, float] = {}
        #: jobs in action or transient-error states with the state, priority, cost flags and whether the
        #: owner is logged on, last seen, so a pass looks at these only and a progress save wakes nobody
        self._active: dict[str, tuple[JobState, JobPriority, int, bool]] = {}
        #: when each active job became active (a counter): ties in the background order go to the earlier one
        self._arrival: dict[str, int] = {}
        self._arrivals = itertools.count()
        #: active jobs by what a pass does with them: retry when due, run all (FOREGROUND), or run the first
        #: few by `_Key` (background). A pass touches only these few and the heap's head, never every
        #: queued job: sorting 3,000 queued jobs on every wake was a tenth of the daemon's time at 350 jobs/s.
        self._transient: dict[str, None] = {}
        self._foreground: dict[str, None] = {}
        self._background: dict[str, _Key] = {}
        #: heap of (*key, job id) over `_background`; an entry whose key is no longer the job's is skipped
        self._queue: list[tuple[int, float, int, str]] = []
        self._wake = asyncio.Event()
        for job in service.jobs.values():
            self._observe(job)
        changes.listen(self._observe)

    def _observe(self, job: Job) -> None:
        seen = (job.state, job.priority, job.cost_flags, self._logons.logged_on(job.owner_uid))
        if self._active.get(job.id) == seen:
            return
        if _waits_for(job, ErrorCode.BG_E_BLOCKED_BY_COST_TRANSFER_POLICY) and cost_allows(job.cost_flags,
                                                                                          self._cost.state):
            job.retry_at = 0.0  # SetProperty(COST_FLAGS) takes effect at once
        if job.state.is_active:
            if job.id not in self._active:
                self._arrival[job.id] = next(self._arrivals)
            self._active[job.id] = seen
        else:
            self._active.pop(job.id, None)
            self._arrival.pop(job.id, None)
            if job.state.is_final:  # never wants a turn again
                self._last_turn.pop(job.id, None)
        self._transient.pop(job.id, None)
        self._foreground.pop(job.id, None)
        self._background.pop(job.id, None)
        if job.state == JobState.TRANSIENT_ERROR:
            self._transient[job.id] = None
        elif job.state in _RUNNING_STATES and seen[3]:  # an owner who is not logged on: QUEUED, not filed
            if job.priority == JobPriority.FOREGROUND:
                self._foreground[job.id] = None
            else:
                self._enqueue(job.id, job.priority)
        self._wake.set()

    def _enqueue(self, job_id: str, priority: JobPriority) -> None:
        """(Re)file a background job under its current key."""
        key = (int(priority), self._last_turn.get(job_id, 0.0), self._arrival[job_id])
        if self._background.get(job_id) != key:
            self._background[job_id] = key
            heapq.heappush(self._queue, (*key, job_id))

    def _first(self, count: int) -> list[Job]:
        """Up to `count` background jobs that want to run now, first by `_Key`; O(count log n)."""
        jobs = self._service.jobs
        found: list[Job] = []
        kept: dict[str, tuple[int, float, int, str]] = {}
        while self._queue and len(found) < count:
            entry = heapq.heappop(self._queue)
            job_id = entry[3]
            if self._background.get(job_id) != entry[:3] or job_id in kept:
                continue  # stale: the job's key changed or it left the queue
            kept[job_id] = entry
            job = jobs.get(job_id)
            if job is not None and job.state in _RUNNING_STATES:  # not changed in memory, still unsaved
                found.append(job)
        for entry in kept.values():
            heapq.heappush(self._queue, entry)
        if len(self._queue) > 2 * len(self._background) + 64:
            self._queue = [(*key, job_id) for job_id, key in self._background.items()]
            heapq.heapify(self._queue)
        return found

    async def run(self) -> None:
        """The scheduling loop; returns (after stopping every transfer) when cancelled."""
        async with asyncio.TaskGroup() as group:
            watching = group.create_task(self._watch_network(), name="network watch")
            watching_cost = group.create_task(self._watch_cost(), name="cost watch")
            watching_logons = group.create_task(self._logons.watch(self._logons_changed), name="logon watch")
            await wait_set(self._logons.ready, LOGONS_KNOWN)  # the first pass knows who is logged on
            try:
                while True:
                    self._wake.clear()  # before the pass: a wake during its awaits (a commit) is not lost
                    delay = await self._schedule()
                    await wait_set(self._wake, delay)
            finally:
                watching.cancel()
                watching_cost.cancel()
                watching_logons.cancel()

    async def _watch_network(self) -> None:
        """When a route appears, jobs waiting for the network are retried at once, not after their delay."""
        connected = network_available()
        while True:
            await asyncio.sleep(NETWORK_POLL)
            was, connected = connected, network_available()
            if connected and not was:
                self._retry_waiting_for(ErrorCode.BG_E_NETWORK_DISCONNECTED)

    async def _watch_cost(self) -> None:
        """When the cost state changes (NetworkManager's signal, or a SIGHUP'd config), blocked jobs retry at
        once and running jobs the new state forbids stop (the next pass holds them)."""
        def changed(state: CostState) -> None:
            log.info("network cost state now %s (from the %s)", state.name, self._cost.source)
            self._retry_waiting_for(ErrorCode.BG_E_BLOCKED_BY_COST_TRANSFER_POLICY)

        await self._cost.watch(changed)

    def wake(self) -> None:
        """The configuration was reloaded: the next pass applies its bandwidth policy at once."""
        self._wake.set()

    def _logons_changed(self) -> None:
        """Someone logged on or off (logind's signal, or a SIGHUP'd [users]): their jobs are filed again."""
        log.debug("who is logged on may have changed (from the %s)", self._logons.source)
        for job_id in list(self._active):
            if (job := self._service.jobs.get(job_id)) is not None:
                self._observe(job)
        self._logoff_check = True
        self._wake.set()

    def _retry_waiting_for(self, code: int) -> None:
        """Jobs in TRANSIENT_ERROR for `code` retry now, not after their delay."""
        for job_id in self._active:
            job = self._service.jobs.get(job_id)
            if job is not None and _waits_for(job, code):
                job.retry_at = 0.0
        self._wake.set()

    async def _hold(self, wanted: list[Job]) -> list[Job]:
        """The jobs the network's cost state and the bandwidth policy allow; the others stop and wait in
        TRANSIENT_ERROR (BG_E_BLOCKED_BY_COST_TRANSFER_POLICY, BG_E_BLOCKED_BY_POLICY)."""
        state, limits = self._cost.state, self._service.config.bandwidth_limits_now()
        allowed = []
        for job in wanted:
            if not cost_allows(job.cost_flags, state):
                error = blocked_by_cost(job.cost_flags, state)
            elif job.priority != JobPriority.FOREGROUND and limits.blocks(job.priority.name):
                error = _blocked_by_policy(job.priority)
            else:
                allowed.append(job)
                continue
            await self._stop(job.id)
            job.last_progress_time = time.time()  # waiting for a cheaper network is not a lack of progress
            job.set_error(error, transient=True)
            await self._service.commit(job)
        return allowed

    async def _stop(self, job_id: str) -> None:
        await self._transfers.stop(job_id)

    async def _schedule(self) -> float:
        now, clock = time.time(), time.monotonic()
        config = self._service.config
        jobs = self._service.jobs
        next_wake = 60.0
        if self._logoff_check:
            self._logoff_check = False
            await drop_tokens_of_logged_off(self._service, self._logons)
        limits = config.bandwidth_limits_now()
        if config.bandwidth_schedule:  # a window may begin or end with the next minute
            next_wake = 60.0 - now % 60.0
        for job_id in list(self._transient):
            job = jobs.get(job_id)
            if job is not None and job.state == JobState.TRANSIENT_ERROR:
                if _waits_for(job, ErrorCode.BG_E_BLOCKED_BY_POLICY):
                    # BITS queues them again once the policy's interval ends (or a reload or SetPriority lifts it)
                    if job.priority == JobPriority.FOREGROUND or not limits.blocks(job.priority.name):
                        job.state = JobState.QUEUED
                        await self._service.commit(job)
                elif job.retry_at <= now:
                    job.state = JobState.QUEUED
                    await self._service.commit(job)
                else:
                    next_wake = min(next_wake, job.retry_at - now)
        for job_id, turn in list(self._running.items()):
            job = jobs.get(job_id)
            if turn.task.done() or job is None or job.state not in _RUNNING_STATES:
                await self._stop(job_id)
            elif job_id not in self._foreground and job_id not in self._background:  # its owner logged off
                await self._stop(job_id)
                job.state = JobState.QUEUED
                await self._service.commit(job)
        foreground = await self._hold(
            [job for job_id in sorted(self._foreground, key=self._arrival.__getitem__)
             if (job := jobs.get(job_id)) is not None and job.state in _RUNNING_STATES])
        limit = config.max_background_transfers
        while True:  # until the cost state holds none of them (a held job leaves the queue)
            running = [job for job_id in self._running if job_id in self._background
                       and (job := jobs.get(job_id)) is not None and job.state in _RUNNING_STATES]
            # The first `limit` in the full order are among the running jobs and the first
            # limit + len(running) by key; one more tells whether any job waits for a turn.
            candidates = {job.id: job for job in [*running, *self._first(limit + len(running) + 1)]}
            if len(await self._hold(list(candidates.values()))) == len(candidates):
                break

        def order(job: Job) -> tuple[int, int, float, int]:
            turn = self._running.get(job.id)
            keeps_turn = turn is not None and clock - turn.started < config.time_slice
            priority, last_turn, arrival = self._background[job.id]
            return (priority, 0 if keeps_turn else 1, last_turn, arrival)

        background = sorted(candidates.values(), key=order)
        chosen = foreground + background[:limit]
        chosen_ids = {j.id for j in chosen}
        for job in background[limit:]:
            if job.id in self._running:  # preempted by a higher priority or a turn that ended
                await self._stop(job.id)
                job.state = JobState.QUEUED
                await self._service.commit(job)
        for job in chosen:
            if job.id not in self._running:
                self._start(job)
        if len(background) > limit:
            for job_id in chosen_ids:
                turn = self._running[job_id]
                next_wake = min(next_wake, max(0.1, config.time_slice - (clock - turn.started)))
        return max(0.05, next_wake)

    def _start(self, job: Job) -> None:
        # upload jobs: the BITS upload protocol (core/upload_runner.py)
        runner_type = DownloadRunner if job.type == JobType.DOWNLOAD else UploadRunner
        runner = runner_type(self._service, self._transport, job, self._throttle_for(job))
        self._transfers.start(job.id, self._run_turn(job, runner))
        self._last_turn[job.id] = time.monotonic()
        if job.id in self._background:  # its turn came: to the back of its priority
            self._enqueue(job.id, job.priority)

    async def _run_turn(self, job: Job, runner: DownloadRunner | UploadRunner) -> None:
        try:
            await runner.run()
        except Exception as exc:  # a bug: it must cost this job, never the daemon
            log.exception("job %s: internal error in its transfer", job.id)
            job.set_error(BitsError(ErrorCode.E_FAIL, f"internal error in openbitsd ({exc!r}); the daemon log "
                                    "has the details - please report it", ErrorContext.GENERAL_QUEUE_MANAGER),
                          transient=False)
            await self._service.commit(job)
        finally:
            self._transfers.ended(job.id)
            self._wake.set()


def _blocked_by_policy(priority: JobPriority) -> BitsError:
    """The error of a background job while the bandwidth policy in force allows its priority nothing."""
    return BitsError(ErrorCode.BG_E_BLOCKED_BY_POLICY,
                     f"the bandwidth policy in force ([bandwidth] of the daemon's configuration) allows "
                     f"{priority.name} jobs no bandwidth now; the job continues when the policy's time window ends",
                     ErrorContext.GENERAL_QUEUE_MANAGER)


def _waits_for(job: Job, code: int) -> bool:
    return job.state == JobState.TRANSIENT_ERROR and job.error is not None and job.error["code"] == code
