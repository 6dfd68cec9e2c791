"""JobChanges: who hears of every durable change of a job, wired by the composition root.

The service announces each change after it is saved; the scheduler and the deliveries are given
the same JobChanges when they are built and listen to it there, so nobody fills in another
object's hooks and the order of construction is not the wiring.
"""

from __future__ import annotations

from collections.abc import Callable

from ..model.job import Job

Listener = Callable[[Job], None]


class JobChanges:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def listen(self, listener: Listener) -> None:
        """Called with the job after every durable change, synchronously, in the order listeners came."""
        self._listeners.append(listener)

    def announce(self, job: Job) -> None:
        for listener in self._listeners:
            listener(job)
