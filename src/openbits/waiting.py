"""Waiting for an event with a time limit, in a way a cancellation cannot slip past.

asyncio.timeout rather than asyncio.wait_for: on Python 3.11, wait_for drops a cancellation that
arrives in the same loop step as the awaited event is set, so a loop waiting that way kept
running after it was cancelled (tests/test_scheduler.py shows it), and the daemon's shutdown hung.
"""

from __future__ import annotations

import asyncio
import contextlib


async def wait_set(event: asyncio.Event, timeout: float | None) -> None:
    """Until `event` is set or `timeout` seconds have passed (None: no limit)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
