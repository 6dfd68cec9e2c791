"""Rate caps: a global one shared by all background jobs (with its time-of-day
schedule) and an optional one per job.

Rates are read on every refill, so a reloaded config or a changed job property
takes effect on the next chunk, without restarting any transfer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ..core.job import Job
from ..enums import JobPriority

#: Bytes a bucket may hold: enough for a large read, small enough to keep the rate smooth.
_BURST_SECONDS = 0.1
_MIN_BURST = 256 * 1024


class TokenBucket:
    """Throttle whose rate (bytes/s, 0 = unlimited) comes from a callable, read at each refill."""

    def __init__(self, rate: Callable[[], int]) -> None:
        self._rate = rate
        self._tokens = 0.0
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def consume(self, nbytes: int) -> None:
        async with self._lock:  # FIFO among the jobs sharing the bucket
            while True:
                rate = self._rate()
                now = time.monotonic()
                if rate <= 0:
                    self._tokens, self._stamp = 0.0, now
                    return
                burst = max(_MIN_BURST, rate * _BURST_SECONDS)
                self._tokens = min(burst, self._tokens + (now - self._stamp) * rate)
                self._stamp = now
                if self._tokens > 0:
                    self._tokens -= nbytes  # may go negative: the debt is paid by the next wait
                    return
                await asyncio.sleep(-self._tokens / rate + 0.001)


class _Chain:
    def __init__(self, buckets: list[TokenBucket]) -> None:
        self._buckets = buckets

    async def consume(self, nbytes: int) -> None:
        for bucket in self._buckets:
            await bucket.consume(nbytes)


class BandwidthPolicy:
    """Hands each transfer the buckets that apply to its job."""

    def __init__(self, background_limit: Callable[[], int]) -> None:
        self._background = TokenBucket(background_limit)
        self._per_job: dict[str, TokenBucket] = {}

    def throttle_for(self, job: Job) -> _Chain | None:
        buckets = [] if job.priority == JobPriority.FOREGROUND else [self._background]
        if job.max_bandwidth:
            bucket = self._per_job.get(job.id)
            if bucket is None:
                bucket = self._per_job[job.id] = TokenBucket(lambda: job.max_bandwidth)
            buckets.append(bucket)
        return _Chain(buckets) if buckets else None

