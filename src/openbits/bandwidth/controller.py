"""The idle-bandwidth controller: how fast background jobs may receive, and why.

BITS uses "only the idle portion of the network bandwidth" by watching the
interface's counters, and enables LEDBAT on its connections. We are the
receiver of a download and cannot choose the server's congestion control, so
we control our rate where we can - how fast we read, which closes the
receive window (see `sensing.py` for the socket side) - and decide that rate
from two signals, because each one alone fails a case we measured:

* Queueing delay (LEDBAT, RFC 6817): the receive-side RTT of our own
  sockets (TCP_INFO `tcpi_rcv_rtt`, from the timestamps the server echoes)
  over its minimum. It sees competing traffic from other hosts. The target is
  a few milliseconds, not LEDBAT's 25-100: servers that send with BBR keep the
  bottleneck queue short, and a 15 ms target never fired against them
  (DESIGN.md, "Scheduling").
* Interface counters minus our own bytes: competing traffic of this host,
  even when it started first and its standing queue looks like the base RTT
  (LEDBAT's latecomer problem). Traffic that appears or grows sends us to the
  floor at once; once it stops growing, our ceiling is the capacity less what
  the others take, less a headroom, so a foreground flow has nearly all.

Alone on the link we stay just under the capacity we learnt (the peak the
link delivered) and creep above it slowly to re-learn it: filling the
bottleneck ourselves would add the whole buffer's delay to every ping.
A floor keeps every job moving, as BITS does.

The core is pure: `update(sample)` in, `Decision` out - tests replay traces.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

#: Queueing delay we tolerate over the path's minimum (s); a few ms (see above).
TARGET_DELAY = 0.005
#: Share of the capacity we leave unused beside steady competing traffic. Growth is answered by the
#: floor at once (`_decide`), so this need only cover the estimates' error (1-2 % on the lab link).
HEADROOM = 0.05
#: Competing traffic below this share of the capacity is noise (ARP, DNS, acks of uploads).
OTHER_NOISE = 0.03
#: Competing traffic is "growing" while above this multiple of its value OTHER_MEMORY (s) ago, smoothed.
GROWTH, OTHER_MEMORY = 1.1, 1.0
#: Smoothing time (s) of the competing traffic: one tick. A newcomer first shows as ~5 Mbit/s in one
#: tick; smoothed over 0.3 s it crossed OTHER_NOISE a tick later, and each tick is ~3 % of a 30 MiB curl.
OTHER_SMOOTHING = 0.1
#: Every background transfer keeps moving (BITS): at least this share of the capacity...
FLOOR_SHARE = 0.01
#: ...and at least this many bytes/s.
MIN_FLOOR = 8 * 1024
#: Rate before anything is learnt: a modest start, then multiplicative growth.
INITIAL_RATE = 256 * 1024
#: Multiplicative decrease per second at full excess delay (x0.8 a tick): LEDBAT-like, gentle enough
#: that our own probing past the capacity costs a dip, not half the rate.
DECREASE_DELAY = 2.0
#: Additive increase per second, in capacities, at zero queueing delay: floor to the ceiling in ~2 s.
INCREASE = 0.5
#: Multiplicative increase per second while the capacity is unknown.
INCREASE_UNKNOWN = 1.5
#: Ceiling while alone, as a share of the learnt capacity; creeps up to PROBE_MAX to re-learn it.
PROBE_MIN, PROBE_MAX, PROBE_SPEED = 0.93, 1.05, 0.02
#: The rate may exceed what arrives by this factor (plus INITIAL_RATE): room to grow, not to run away.
RUNAWAY = 2.0
#: The learnt capacity fades with this time constant (s) unless the link shows it again.
CAPACITY_MEMORY = 300.0
#: Window (s) of the per-path minimum delay; LEDBAT keeps minutes of base history.
BASE_WINDOW = 120.0
#: Smoothing time (s) of measured rates and filter window (s) of the current delay.
RATE_SMOOTHING = 0.3
DELAY_FILTER = 0.3
#: Longest step a sample may represent; a stall is not a reason to leap.
MAX_STEP = 0.5


@dataclass(frozen=True)
class Sample:
    """What the sensors saw at one instant. Byte counts are cumulative and on the wire."""

    time: float
    #: Bytes our background sockets received.
    ours: int
    #: Bytes the interfaces that route to our servers received; None when unknown (loopback).
    link: int | None
    #: Current receive-side RTT (s) of each path we use, keyed by the server's address.
    delays: Mapping[str, float]


@dataclass(frozen=True)
class Decision:
    """The rate every background transfer shares, and the reason a person reads in `openbits info`."""

    rate: int
    reason: str
    #: Competing traffic seen on the interface (bytes/s).
    other: int = 0
    #: Queueing delay over the path's minimum (s), None without a sample.
    queueing: float | None = None
    #: Nobody else on the link: no competing traffic, no queue (the policy may then lift its caps).
    idle: bool = False


class _Path:
    """Minimum (base) and recent (current) delay of one server's path."""

    def __init__(self) -> None:
        self.base: deque[tuple[float, float]] = deque()  # (time, delay), increasing delays
        self.recent: deque[tuple[float, float]] = deque()

    def add(self, now: float, delay: float) -> float:
        """Record a sample; return the queueing delay (filtered current minus base)."""
        for window, span in ((self.base, BASE_WINDOW), (self.recent, DELAY_FILTER)):
            while window and window[-1][1] >= delay:
                window.pop()
            window.append((now, delay))
            while window[0][0] < now - span:
                window.popleft()
        return self.recent[0][1] - self.base[0][1]


def kbit(rate: float) -> str:
    """A rate (bytes/s) as people read link speeds."""
    return f"{rate * 8 / 1000:,.0f} kbit/s"


class IdleController:
    """Turns samples into the background rate; one per daemon (all background jobs share it)."""

    def __init__(self, *, target: float = TARGET_DELAY) -> None:
        self.target = target
        self.rate = float(INITIAL_RATE)
        self.capacity = 0.0
        #: Whether the capacity was seen at the bottleneck (a queue formed), not just at the server's pace.
        self.known = False
        self.probe = PROBE_MIN
        self.decision = Decision(INITIAL_RATE, "starting: measuring the link")
        self._last: Sample | None = None
        self._ours_rate = 0.0
        self._link_rate = 0.0
        self._other = 0.0
        self._other_slow = 0.0
        self._paths: dict[str, _Path] = {}

    def update(self, sample: Sample) -> Decision:
        last, self._last = self._last, sample
        if last is None or sample.time <= last.time:
            return self.decision
        dt = min(MAX_STEP, sample.time - last.time)
        alpha = 1 - math.exp(-dt / RATE_SMOOTHING)
        self._ours_rate += alpha * ((sample.ours - last.ours) / (sample.time - last.time) - self._ours_rate)
        if sample.link is not None and last.link is not None:
            link = (sample.link - last.link) / (sample.time - last.time)
            self._link_rate += alpha * (max(link, 0.0) - self._link_rate)
            # Below zero is only the sensor's way of erring on the safe side (see `LinkSensor._sample`).
            raw_other = max(0.0, link - (sample.ours - last.ours) / (sample.time - last.time))
            self._other += (1 - math.exp(-dt / OTHER_SMOOTHING)) * (raw_other - self._other)
        else:
            self._link_rate = self._ours_rate
            self._other = 0.0
        other = max(0.0, self._other)
        # While others are on the link we leave them room on purpose, so the link never shows its
        # capacity: forget it only while alone, where probing shows it again.
        if other <= OTHER_NOISE * self.capacity:
            self.capacity *= math.exp(-dt / CAPACITY_MEMORY)
        self.capacity = max(self.capacity, self._link_rate)
        queueing = max((self._path(peer).add(sample.time, d) for peer, d in sample.delays.items()), default=None)
        self.decision = self._decide(dt, other, queueing)
        return self.decision

    @property
    def arriving(self) -> float:
        """Bytes/s our background sockets receive now (smoothed), on the wire."""
        return self._ours_rate

    def _path(self, peer: str) -> _Path:
        path = self._paths.get(peer)
        if path is None:
            path = self._paths[peer] = _Path()
        return path

    def _decide(self, dt: float, other: float, queueing: float | None) -> Decision:
        floor = max(MIN_FLOOR, FLOOR_SHARE * self.capacity)
        crowded = self.capacity > 0 and other > OTHER_NOISE * self.capacity
        # Traffic that appears or still grows is a flow finding its rate (a download in slow start),
        # and it cannot find it while we hold the link: we go to the floor at once, and come back
        # (INCREASE) under the crowded ceiling below once it stops growing. Measured with
        # `make bench-politeness` (tbf 100 Mbit/s, 20 ms RTT, a 30 MiB curl beside a NORMAL job):
        # - waiting for the flow to push us out: the curl kept 64 %;
        # - cutting x0.5 a tick while it grew, else leaving it (1 - 0.10) x capacity less what it
        #   took: 86-91 % (bench), 78-85 % for curls 4 s apart. The trace shows why: the curl sat at
        #   7 Mbit/s for 0.4 s while we kept 92 (the ceiling let us: 90 less its 7), and reached
        #   the link only as the halvings, 0.6-1.2 s after its first bytes, let it;
        # - to the floor on its first tick: we are at ~1 Mbit/s 0.2 s after its first bytes, and the
        #   curl keeps 93-96 % (cubic) and 91-98 % (bbr) in 3 bench runs at load 0.5-1.6, 93-97 %
        #   for curls 4 s apart; alone, the job still gets 99-100 % of the link (+2-6 ms of ping)
        #   and is back at 85 % 1.8-2.3 s after the curl (INCREASE).
        growing = crowded and other > GROWTH * self._other_slow + OTHER_NOISE * self.capacity
        # The baseline rises slowly but falls with the traffic: traffic that left is no baseline for
        # the next flow (a curl 4 s after another one measured 78 %, not 85 %, against a decaying one).
        self._other_slow = min(other, self._other_slow + (1 - math.exp(-dt / OTHER_MEMORY)) * (other - self._other_slow))
        delayed = queueing is not None and queueing > self.target
        if delayed:
            # The first queue we see alone marks the link's capacity: what it delivered while it queued.
            self.known = self.known or not crowded
            self.probe = PROBE_MIN
        if growing:
            self.rate = floor
        elif delayed and queueing is not None:
            excess = min(1.0, (queueing - self.target) / self.target)
            # From what arrives, not from an allowance we were not using: LEDBAT shrinks the window in flight.
            self.rate = min(self.rate, self._ours_rate) * (1 - min(0.5, DECREASE_DELAY * dt * excess))
        else:  # no delay sample yet (the kernel measures none below 1 ms): the counters decide alone
            off_target = 1 - (queueing or 0.0) / self.target
            step = max(INCREASE * self.capacity, INCREASE_UNKNOWN * self.rate)
            self.rate += step * off_target * dt
        # Never far above what actually arrives: while the server is the limit, a rate
        # that ran away would flood the queue the moment the server speeds up.
        ceiling = RUNAWAY * self._ours_rate + INITIAL_RATE
        if self.known:
            alone = self.probe * self.capacity
            if self.rate >= alone and queueing is not None and queueing < self.target / 2:
                self.probe = min(PROBE_MAX, self.probe + PROBE_SPEED * dt)
            ceiling = min(ceiling, alone)
        if crowded:
            ceiling = min(ceiling, (1 - HEADROOM) * self.capacity - other)
        self.rate = max(floor, min(self.rate, ceiling))
        delay_ms = None if queueing is None else queueing * 1000
        if crowded:
            reason = f"yielding to {kbit(other)} of other traffic"
        elif delay_ms is not None and delay_ms > self.target * 1000:
            reason = f"yielding: the path queues {delay_ms:.0f} ms (traffic beyond this host)"
        elif self.capacity:
            reason = f"idle link: using the idle part of {kbit(self.capacity)}"
        else:
            reason = "starting: measuring the link"
        idle = not crowded and (queueing is None or queueing <= self.target)
        return Decision(int(self.rate), reason, int(other), queueing, idle)
