"""Waiting in tests for what another process or thread does: poll until it holds, or fail saying what did not.

    wait_until(lambda: job.state == JobState.TRANSFERRED, 10, "the job to finish")
    wait_state(job, JobState.TRANSIENT_ERROR)
    await until(lambda: job.info(), lambda info: info.bytes_transferred > 0)

A timeout only bounds a wait that would otherwise hang; no test asserts how long something took.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from openbits import Job, JobState

T = TypeVar("T")

#: what is awaited ("timed out waiting for ..."), or a function asked at the timeout for the whole message
#: (to show the state then)
What = str | Callable[[], str]


def _failure(what: What) -> str:
    return what() if callable(what) else f"timed out waiting for {what}"


def wait_until(check: Callable[[], T], timeout: float = 15.0, what: What = "the condition",
               interval: float = 0.05) -> T:
    """Call `check` until it returns something true, and return that; fail the test after `timeout` seconds.
    `check` may itself assert what must stay true meanwhile."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, _failure(what)
        time.sleep(interval)
    return value


def wait_state(job: Job, wanted: JobState, timeout: float = 30) -> None:
    wait_until(lambda: job.state == wanted, timeout, lambda: f"job stayed {job.state.name}, wanted {wanted.name}")


async def until(read: Callable[[], Awaitable[T]], done: Callable[[T], object], timeout: float = 20,
                interval: float = 0.05) -> T:
    """The asyncio form: await `read()` until `done` holds for what it returned, and return that."""
    async with asyncio.timeout(timeout):
        while not done(value := await read()):
            await asyncio.sleep(interval)
    return value
