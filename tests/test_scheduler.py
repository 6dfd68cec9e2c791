"""The scheduler in-process (core/scheduler.py): which jobs get a turn, in which order, and when a turn ends.

The Scheduler is the daemon's own, over the in-process core (tests/inprocess.py), running its real loop.
Only what a turn does is a stand-in: `Bench` subclasses Scheduler and overrides `_run_turn` to hand the
real turn (its error handling, its end, the wake-up) a `HeldRunner` instead of the download runner that
`_start` built. So `_start`'s own bookkeeping - the transfer's start, the job's last turn, its place at
the back of its priority - runs as in the daemon, and the test, not the bytes of a server, decides when
a turn ends and how: the runners are not the part under test (tests/test_scheduling.py runs them
against a daemon and a real server).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path


from openbits.core.attempt import run_attempt
from openbits.core.runner import DownloadRunner
from openbits.core.scheduler import Scheduler
from openbits.core.upload_runner import UploadRunner
from openbits.enums import ErrorContext, JobPriority, JobState, JobType
from openbits.errors import ErrorCode, TransferError
from openbits.model.job import Job

from .inprocess import Core

#: how long a test waits for a turn that must come (only a hang reaches it)
TURN_TIMEOUT = 10


class HeldRunner:
    """A turn of the runners' own attempt (core/attempt.py: states, errors, the shielded final commit) whose
    transfer says TRANSFERRING, as a runner does, then holds until the test ends it."""

    def __init__(self, bench: Bench, job: Job) -> None:
        self._bench, self._job = bench, job

    async def run(self) -> None:
        await run_attempt(self._bench.core.service, self._job, self._transfer)

    async def _transfer(self) -> None:
        job = self._job
        job.state = JobState.TRANSFERRING
        await self._bench.core.service.commit(job)
        outcome = self._bench.outcomes[job.id] = asyncio.get_running_loop().create_future()
        self._bench.turns.put_nowait(job.id)
        error = await outcome
        if error is not None:
            raise error
        for f in job.files:
            f.completed = True


class Bench(Scheduler):
    """The real Scheduler whose turns run HeldRunner; `next_turn()` is the job whose turn began next."""

    def __init__(self, core: Core) -> None:
        super().__init__(core.service, core.changes, core.transfers, core.transport, lambda job: None, core.cost(),
                         core.logons())
        self.core = core
        #: job ids, as their turns begin
        self.turns: asyncio.Queue[str] = asyncio.Queue()
        #: the running turn of each job: its result ends the turn (None: the files are done; else its error)
        self.outcomes: dict[str, asyncio.Future[TransferError | None]] = {}

    async def _run_turn(self, job: Job, runner: DownloadRunner | UploadRunner) -> None:
        await super()._run_turn(job, HeldRunner(self, job))  # type: ignore[arg-type]

    async def next_turn(self) -> Job:
        async with asyncio.timeout(TURN_TIMEOUT):
            return self.core.service.jobs[await self.turns.get()]

    async def turns_of(self, count: int) -> set[str]:
        return {(await self.next_turn()).id for _ in range(count)}

    def finish(self, job: Job) -> None:
        self.outcomes.pop(job.id).set_result(None)

    def fail(self, job: Job, error: TransferError) -> None:
        self.outcomes.pop(job.id).set_result(error)

    def running(self) -> set[str]:
        return set(self.core.transfers.turns)

    def no_turn_waits(self) -> bool:
        return self.turns.empty()


@asynccontextmanager
async def scheduling(core: Core) -> AsyncIterator[Bench]:
    """The scheduler's loop for the block; it sees the jobs that exist when it starts, as after a restart."""
    bench = Bench(core)
    loop = asyncio.create_task(bench.run(), name="scheduler")
    try:
        yield bench
    finally:
        await stopped(loop)


async def stopped(loop: asyncio.Task[None]) -> None:
    """Cancel the scheduler's loop and wait until it has ended."""
    loop.cancel()
    await asyncio.wait([loop])


async def job(core: Core, tmp_path: Path, name: str, priority: JobPriority = JobPriority.NORMAL, *,
              resume: bool = True, **properties: object) -> Job:
    made = await core.service.create(core.me, name, JobType.DOWNLOAD, priority, "")
    await core.service.add_files(core.me, made.id, [("https://example.test/f.bin", str(tmp_path / f"{name}.bin"))])
    if properties:
        await core.service.update(core.me, made.id, properties)
    if resume:
        await core.service.resume(core.me, made.id)
    return made


def ids(*jobs: Job) -> set[str]:
    return {j.id for j in jobs}


async def test_foreground_jobs_all_run_at_once_beside_the_background_limit(core: Core, tmp_path: Path) -> None:
    core.configure(max_background_transfers=1)
    foreground = [await job(core, tmp_path, f"fg{i}", JobPriority.FOREGROUND) for i in range(3)]
    background = [await job(core, tmp_path, f"bg{i}") for i in range(2)]
    async with scheduling(core) as bench:
        started = await bench.turns_of(4)
        assert ids(*foreground) < started and len(started & ids(*background)) == 1
        assert bench.running() == started and bench.no_turn_waits()
        waiting = next(j for j in background if j.id not in started)
        assert waiting.state == JobState.QUEUED


async def test_background_jobs_run_in_priority_order_up_to_the_limit(core: Core, tmp_path: Path) -> None:
    core.configure(max_background_transfers=2)
    low, normal, high, high2 = (await job(core, tmp_path, "low", JobPriority.LOW),
                                await job(core, tmp_path, "normal", JobPriority.NORMAL),
                                await job(core, tmp_path, "high", JobPriority.HIGH),
                                await job(core, tmp_path, "high2", JobPriority.HIGH))
    async with scheduling(core) as bench:
        assert await bench.turns_of(2) == ids(high, high2)
        assert bench.no_turn_waits() and low.state == normal.state == JobState.QUEUED
        bench.finish(high)
        assert (await bench.next_turn()) is normal
        bench.finish(high2)
        assert (await bench.next_turn()) is low
        assert bench.running() == ids(normal, low)
        bench.finish(normal)
        bench.finish(low)
        for done in (high, high2, normal, low):
            assert (await core.service.wait(core.me, done.id, TURN_TIMEOUT)).state == JobState.TRANSFERRED


async def test_a_higher_priority_preempts_and_a_lower_one_waits(core: Core, tmp_path: Path) -> None:
    core.configure(max_background_transfers=1)
    normal = await job(core, tmp_path, "normal")
    async with scheduling(core) as bench:
        assert (await bench.next_turn()) is normal
        low = await job(core, tmp_path, "low", JobPriority.LOW)
        high = await job(core, tmp_path, "high", JobPriority.HIGH)
        assert (await bench.next_turn()) is high
        assert normal.state == JobState.QUEUED and bench.running() == ids(high)  # its runner was stopped
        bench.finish(high)
        assert (await bench.next_turn()) is normal  # back to the preempted job, before the lower one
        assert low.state == JobState.QUEUED
        bench.finish(normal)
        assert (await bench.next_turn()) is low


async def test_jobs_of_one_priority_take_turns_in_time_slices(core: Core, tmp_path: Path) -> None:
    core.configure(max_background_transfers=1, time_slice=0.2)
    first, second = await job(core, tmp_path, "first"), await job(core, tmp_path, "second")
    async with scheduling(core) as bench:
        order = [await bench.next_turn() for _ in range(4)]
        assert order == [first, second, first, second]  # round robin: each turn ends with its slice
        assert len(bench.running()) == 1


async def test_a_job_alone_keeps_its_turn_past_the_slice(core: Core, tmp_path: Path) -> None:
    core.configure(max_background_transfers=1, time_slice=0.05)
    alone = await job(core, tmp_path, "alone")
    async with scheduling(core) as bench:
        assert (await bench.next_turn()) is alone
        outcome = bench.outcomes[alone.id]
        await asyncio.sleep(0.3)  # several slices: nobody waits, so nothing preempts it
        assert not outcome.done() and bench.no_turn_waits() and bench.running() == ids(alone)


async def test_a_transient_error_is_retried_when_it_is_due_and_not_before(core: Core, tmp_path: Path) -> None:
    core.configure(max_background_transfers=1)
    later = await job(core, tmp_path, "later", minimum_retry_delay=3600)
    busy = TransferError(ErrorCode.http(503), "busy", ErrorContext.REMOTE_FILE, 503, transient=True)
    async with scheduling(core) as bench:
        assert (await bench.next_turn()) is later
        bench.fail(later, busy)
        soon = await job(core, tmp_path, "soon", minimum_retry_delay=0)
        assert (await bench.next_turn()) is soon  # the limit is 1: `later`'s turn has ended, and it waits
        assert later.state == JobState.TRANSIENT_ERROR and later.retry_at > time.time() + 3000
        bench.fail(soon, busy)
        assert (await bench.next_turn()) is soon  # due at once: retried
        assert soon.error_count == 1
        bench.finish(soon)
        assert (await core.service.wait(core.me, soon.id, TURN_TIMEOUT)).state == JobState.TRANSFERRED
        assert later.state == JobState.TRANSIENT_ERROR and later.id not in bench.running()
        await core.service.resume(core.me, later.id)  # the owner's Resume retries at once
        assert (await bench.next_turn()) is later


async def test_suspend_stops_a_running_turn(core: Core, tmp_path: Path) -> None:
    core.configure(max_background_transfers=1)
    first, second = await job(core, tmp_path, "first"), await job(core, tmp_path, "second")
    async with scheduling(core) as bench:
        assert (await bench.next_turn()) is first
        await core.service.suspend(core.me, first.id)
        assert first.id not in bench.running()  # stopped before Suspend returned
        assert (await bench.next_turn()) is second
        assert first.state == JobState.SUSPENDED


async def test_the_scheduler_stops_when_cancelled_as_it_is_woken(core: Core) -> None:
    bench = Bench(core)
    loop = asyncio.create_task(bench.run(), name="scheduler")
    await asyncio.sleep(0.05)  # waiting for a wake
    bench._wake.set()  # a commit, as the daemon shuts down
    loop.cancel()
    await asyncio.wait([loop], timeout=1)
    lost = not loop.done()
    await stopped(loop)
    assert not lost, "the cancel was lost: the scheduler's loop went on"
