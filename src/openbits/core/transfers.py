"""Transfers: the running transfer of each job, every one owned by one TaskGroup.

The scheduler starts and preempts them; the service stops one (Suspend, Cancel) and waits until
it has really stopped before anyone touches the job's files. Neither owns the other: the
composition root gives both the same Transfers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any


@dataclass
class Turn:
    task: asyncio.Task[None]
    #: monotonic time the turn began (a background job keeps its turn for the time slice)
    started: float


class Transfers:
    def __init__(self) -> None:
        #: job id -> its running turn
        self.turns: dict[str, Turn] = {}
        self._group: asyncio.TaskGroup | None = None

    async def run(self) -> None:
        """Own every transfer until cancelled; then each is cancelled and awaited."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            try:
                await asyncio.Future()
            finally:
                self._group = None
                for turn in self.turns.values():
                    turn.task.cancel()

    def start(self, job_id: str, work: Coroutine[Any, Any, None]) -> None:
        if self._group is None:
            work.close()
            raise RuntimeError("transfers start only while Transfers.run() runs")
        self.turns[job_id] = Turn(self._group.create_task(work, name=f"job {job_id}"), time.monotonic())

    def ended(self, job_id: str) -> None:
        """Called by the turn itself as it ends: forget it unless a newer turn replaced it."""
        turn = self.turns.get(job_id)
        if turn is not None and turn.task is asyncio.current_task():
            del self.turns[job_id]

    async def stop(self, job_id: str) -> None:
        """Cancel the job's transfer, if any, and return once it has really stopped."""
        turn = self.turns.pop(job_id, None)
        if turn is not None:
            turn.task.cancel()
            await asyncio.wait([turn.task])
