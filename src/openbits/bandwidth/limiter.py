"""Rate caps: a global one shared by all background jobs - the idle-bandwidth
controller's rate, under the policy's cap and its time-of-day schedule - and
an optional one per job.

Rates are read on every refill, so a reloaded config, a changed job property
or a new decision of the controller takes effect on the next chunk, without
restarting any transfer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ..model.config import MIN_POLICY_RATE, BandwidthLimits
from ..model.job import Job
from ..enums import BLOCKED_BY_POLICY, JobPriority, JobType
from .controller import kbit
from .sensing import LinkSensor, SocketLike

#: Bytes a bucket may hold: enough for a large read, small enough to keep the rate smooth.
_BURST_SECONDS = 0.1
_MIN_BURST = 256 * 1024
#: The background uploads' bucket holds far less: what it lets through goes to the bottleneck at
#: once, in front of any foreground upload. A few ms of the rate still absorbs asyncio's late
#: wake-ups (rounded up to 1 ms) without losing rate; the pieces are sized in transport/upload.py.
UPLOAD_BURST_SECONDS = 0.005
UPLOAD_MIN_BURST = 8 * 1024
#: Longest single wait (s): the rate is re-read - and the link re-sampled - at least this often,
#: so a transfer held at the controller's floor sees the link free up within a tick.
MAX_WAIT = 0.1


class TokenBucket:
    """Throttle whose rate (bytes/s, 0 = unlimited) comes from a callable, read at each refill."""

    def __init__(self, rate: Callable[[], int], *, min_burst: int = _MIN_BURST,
                 burst_seconds: float = _BURST_SECONDS) -> None:
        self._rate = rate
        self._min_burst, self._burst_seconds = min_burst, burst_seconds
        self._tokens = 0.0
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def rate(self) -> int:
        """Bytes/s now (0 = unlimited)."""
        return self._rate()

    async def consume(self, nbytes: int) -> None:
        async with self._lock:  # FIFO among the jobs sharing the bucket
            while True:
                rate = self._rate()
                now = time.monotonic()
                if rate <= 0:
                    self._tokens, self._stamp = 0.0, now
                    return
                burst = max(self._min_burst, rate * self._burst_seconds)
                self._tokens = min(burst, self._tokens + (now - self._stamp) * rate)
                self._stamp = now
                if self._tokens > 0:
                    self._tokens -= nbytes  # may go negative: the debt is paid by the next wait
                    return
                await asyncio.sleep(min(MAX_WAIT, -self._tokens / rate + 0.001))


class _Chain:
    """A transfer's throttle; a background one also shows its sockets to the link sensor."""

    def __init__(self, buckets: list[TokenBucket], sensor: LinkSensor | None) -> None:
        self._buckets = buckets
        self._sensor = sensor

    async def consume(self, nbytes: int) -> None:
        for bucket in self._buckets:
            await bucket.consume(nbytes)

    def rate(self) -> int:
        """The rate the transfer may use now (0 = unlimited): what sizes an upload's writes."""
        return min((r for r in (b.rate() for b in self._buckets) if r > 0), default=0)

    def attach(self, sock: SocketLike) -> None:
        if self._sensor is not None:
            self._sensor.attach(sock)

    def detach(self, sock: SocketLike) -> None:
        if self._sensor is not None:
            self._sensor.detach(sock)


class BandwidthPolicy:
    """Hands each transfer the buckets that apply to its job.

    `background_limits` are the policy's caps now: of all background jobs together and of each
    priority's; `ignore_limits_when_idle` lifts them while the controller sees nobody else on the link.
    A cap of 0 (the policy blocks: the scheduler holds such jobs in BG_E_BLOCKED_BY_POLICY) lets a
    transfer that is still running crawl at 2 kbit/s until the scheduler stops it. Without a sensor
    (`idle_control = false`) background jobs run at the cap alone, like a fixed limit.
    Uploads have a sensor, a controller and a bucket of their own (`upload_sensor`):
    the way up is another bottleneck, shared with other uploads, not downloads.
    """

    def __init__(self, background_limits: Callable[[], BandwidthLimits], sensor: LinkSensor | None = None,
                 ignore_limits_when_idle: Callable[[], bool] = lambda: False,
                 upload_sensor: LinkSensor | None = None) -> None:
        self._limits = background_limits
        self._sensors = {False: sensor, True: upload_sensor}
        self._ignore_when_idle = ignore_limits_when_idle
        self._background = {
            False: TokenBucket(lambda: self.background_rate(False)[0]),
            True: TokenBucket(lambda: self.background_rate(True)[0], min_burst=UPLOAD_MIN_BURST,
                              burst_seconds=UPLOAD_BURST_SECONDS),
        }
        #: each background priority's downloads (uploads) together, under [bandwidth] high/normal/low
        self._per_priority = {
            (upload, priority): TokenBucket(lambda u=upload, p=priority: self._priority_rate(u, p))
            for upload in (False, True) for priority in JobPriority if priority != JobPriority.FOREGROUND}
        self._per_job: dict[str, TokenBucket] = {}

    def background_rate(self, upload: bool = False, priority: JobPriority | None = None,
                        limits: BandwidthLimits | None = None) -> tuple[int, str]:
        """Bytes/s all background downloads (or uploads; of `priority` only) share now (0 = unlimited), and why;
        `limits`: the caps in force, when the caller has just read them."""
        limits = self._limits() if limits is None else limits
        if limits.total == 0 or (priority is not None and limits.blocks(priority.name)):
            whose = "background jobs" if limits.total == 0 or priority is None else f"{priority.name} jobs"
            return MIN_POLICY_RATE, f"{BLOCKED_BY_POLICY}: the bandwidth policy in force allows {whose} nothing"
        cap, whose = _bucket_rate(limits.total), ""
        if priority is not None and (own := _bucket_rate(limits.of(priority.name))) and (not cap or own < cap):
            cap, whose = own, f" for {priority.name} jobs"
        sensor = self._sensors[upload]
        decision = None if sensor is None else sensor.decision()
        if decision is None and not cap:
            return cap, "no limit: no link is shared now"
        # the cap's words only when they are the answer: every API answer asks, most of them uncapped
        if decision is None or (cap and cap < decision.rate and not (decision.idle and self._ignore_when_idle())):
            return cap, f"capped by policy at {kbit(cap)}{whose}"
        return decision.rate, decision.reason

    def _priority_rate(self, upload: bool, priority: JobPriority) -> int:
        """Bytes/s of one priority's cap alone (0 = none, or lifted on an idle link)."""
        cap = self._limits().of(priority.name)
        if cap is None:
            return 0
        sensor = self._sensors[upload]
        decision = None if sensor is None else sensor.decision()
        lifted = cap and decision is not None and decision.idle and self._ignore_when_idle()
        return 0 if lifted else _bucket_rate(cap)

    def explain(self, job: Job) -> tuple[int, str]:
        """The rate `job` may use (0 = unlimited) and why, for `openbits info`."""
        if job.priority == JobPriority.FOREGROUND:
            rate, reason = 0, "foreground: not throttled, competes like any other flow"
        else:
            # read once: each read asks the clock and walks the schedule, and every API answer explains its job
            limits = self._limits()
            rate, reason = self.background_rate(job.type != JobType.DOWNLOAD, job.priority, limits)
            if limits.blocks(job.priority.name):
                return 0, reason
        if job.max_bandwidth and (rate == 0 or job.max_bandwidth < rate):
            rate, reason = job.max_bandwidth, f"capped by the job at {kbit(job.max_bandwidth)}"
        return rate, reason

    def throttle_for(self, job: Job) -> _Chain | None:
        background = job.priority != JobPriority.FOREGROUND
        upload = job.type != JobType.DOWNLOAD
        buckets = [self._background[upload], self._per_priority[upload, job.priority]] if background else []
        if job.max_bandwidth:
            bucket = self._per_job.get(job.id)
            if bucket is None:
                bucket = self._per_job[job.id] = TokenBucket(lambda: job.max_bandwidth)
            buckets.append(bucket)
        return _Chain(buckets, self._sensors[upload] if background else None) if buckets else None



def _bucket_rate(cap: int | None) -> int:
    """A policy cap as a bucket's rate: None is unlimited (0); a block (0) crawls at the smallest cap."""
    return 0 if cap is None else cap or MIN_POLICY_RATE
