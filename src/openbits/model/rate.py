"""How fast a file's bytes arrive now, as the daemon measures it: `monitor`, `info` and the bar show this
rate and the time left from it, rather than each client guessing from the progress it happens to see."""

from __future__ import annotations

import math

#: Seconds over which the rate follows a change (an exponential average of the samples).
TIME_CONSTANT = 2.0
#: Seconds without a sample after which nothing is arriving: the rate is 0.
STALE = 5.0


class RateMeter:
    """Fed the file's offset a few times a second (core/progress.py); read as bytes per second."""

    __slots__ = ("_offset", "_time", "_rate", "_sampled")

    def __init__(self, offset: int, now: float) -> None:
        self._offset, self._time, self._rate, self._sampled = offset, now, 0.0, False

    def sample(self, offset: int, now: float) -> None:
        elapsed = now - self._time
        if offset < self._offset:  # the file started again
            self.__init__(offset, now)  # type: ignore[misc]
            return
        if elapsed <= 0:
            return
        instant = (offset - self._offset) / elapsed
        weight = 1.0 - math.exp(-elapsed / TIME_CONSTANT) if self._sampled else 1.0
        self._rate += weight * (instant - self._rate)
        self._offset, self._time, self._sampled = offset, now, True

    def rate(self, now: float) -> int:
        return 0 if now - self._time > STALE else int(self._rate)
