"""A log line at most once per interval, with how many like it were held back.

What a hostile client can trigger at will (refused connections, accept errors, requests cut off)
must not become a flood of the daemon's log: each kind is said once per interval, never with a
traceback, and the next line counts what was held back.
"""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    """One logger call per `interval` seconds; the calls in between are only counted."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0, level: int = logging.WARNING) -> None:
        self._logger = logger
        self._interval = interval
        self._level = level
        self._next = 0.0
        self._held = 0

    def __call__(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return
        held, self._held, self._next = self._held, 0, now + self._interval
        suffix = f" ({held} more like it in the last {self._interval:.0f} s)" if held else ""
        self._logger.log(self._level, message + suffix, *args)
