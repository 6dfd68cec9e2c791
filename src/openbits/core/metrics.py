"""The daemon's Prometheus metrics (prometheus-client): what it does, computed when scraped.

Job series carry the owner's `uid` label, so a non-administrator's scrape keeps exactly their
own series (`OwnSeries`) and an administrator's has every user's and the daemon-wide ones.
Job counts and transferred bytes are read from the jobs at scrape time, not kept up to date on
every commit: a scrape is rare, a commit is not. Counters count from the daemon's start (the
bytes a job had when the daemon started are its baseline), as Prometheus expects of a counter.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..bandwidth import BandwidthPolicy, LinkSensor
from ..enums import JobType
from ..identity.logon import LogonChecker
from ..model.job import Job
from .service import JobService
from .transitions import Transitions

#: Seconds between two measurements of the event loop's lag.
LAG_INTERVAL = 1.0

_Key = tuple[str, int]  # (direction, owner uid)


def direction(job: Job) -> str:
    return "download" if job.type == JobType.DOWNLOAD else "upload"


class _Transferred:
    """Bytes and files moved since the daemon started, per (direction, uid), jobs that are gone included."""

    def __init__(self, jobs: dict[str, Job]) -> None:
        self._jobs = jobs
        #: what each job had at start (only those with something: 100,000 queued jobs keep nothing here)
        self._baseline = {job.id: (job.bytes_transferred, job.files_transferred) for job in jobs.values()
                          if job.files_transferred or job.bytes_transferred}
        #: the last count of each job that has moved something, to keep it once the job is forgotten
        self._last: dict[str, tuple[_Key, int, int]] = {}
        self._retired_bytes: Tally[_Key] = Tally()
        self._retired_files: Tally[_Key] = Tally()

    def totals(self) -> tuple[Tally[_Key], Tally[_Key]]:
        now: dict[str, tuple[_Key, int, int]] = {}
        for job in self._jobs.values():
            moved, files = job.bytes_transferred, job.files_transferred
            if moved or files:
                base = self._baseline.get(job.id, (0, 0))
                now[job.id] = ((direction(job), job.owner_uid), moved - base[0], files - base[1])
        for gone in self._last.keys() - now.keys():
            key, moved, files = self._last[gone]
            self._retired_bytes[key] += moved
            self._retired_files[key] += files
        self._last = now
        moved_bytes, moved_files = Tally(self._retired_bytes), Tally(self._retired_files)
        for key, moved, files in now.values():
            moved_bytes[key] += moved
            moved_files[key] += files
        return moved_bytes, moved_files


class _JobSeries(Collector):
    """Jobs by state and priority, transfers by direction, errors by BITS name: each per owner uid."""

    def __init__(self, service: JobService, transitions: Transitions) -> None:
        self._service = service
        self._transitions = transitions
        self._transferred = _Transferred(service.jobs)

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("openbits_jobs", "Jobs the daemon holds, by state and priority.",
                                 labels=["state", "priority", "uid"])
        counts = Tally((job.state.name, job.priority.name, job.owner_uid) for job in self._service.jobs.values())
        for (state, priority, uid), n in sorted(counts.items()):
            jobs.add_metric([state, priority, str(uid)], n)
        yield jobs
        moved_bytes, moved_files = self._transferred.totals()
        for name, doc, tally in (
            ("openbits_bytes_transferred", "Bytes of job files transferred since the daemon started.", moved_bytes),
            ("openbits_files_transferred", "Job files transferred completely since the daemon started.", moved_files),
        ):
            family = CounterMetricFamily(name, doc, labels=["direction", "uid"])
            for (way, uid), value in sorted(tally.items()):
                family.add_metric([way, str(uid)], value)
            yield family
        errors = CounterMetricFamily("openbits_job_errors", "Failed transfer attempts, by BITS error name.",
                                     labels=["error", "uid"])
        for (name, uid), n in sorted(self._transitions.errors.items()):
            errors.add_metric([name, str(uid)], n)
        yield errors


class _Bandwidth(Collector):
    """What the bandwidth controller allows background jobs now, and the competing traffic it sees."""

    def __init__(self, policy: BandwidthPolicy, sensors: dict[str, LinkSensor | None]) -> None:
        self._policy = policy
        self._sensors = sensors

    def collect(self) -> Iterator[Metric]:
        allowed = GaugeMetricFamily("openbits_bandwidth_allowed_bytes_per_second",
                                    "Rate all background jobs share now (0: unlimited).", labels=["direction"])
        other = GaugeMetricFamily("openbits_bandwidth_competing_bytes_per_second",
                                  "Other traffic seen on the shared link (0 while no background job crosses one).",
                                  labels=["direction"])
        for way, sensor in self._sensors.items():
            allowed.add_metric([way], self._policy.background_rate(way == "upload")[0])
            decision = sensor.decision() if sensor is not None else None
            other.add_metric([way], decision.other if decision is not None else 0)
        yield allowed
        yield other


def broker_processes() -> int:
    """File brokers running now: the children of our zygote (the child that runs our own command line)."""

    def children(pid: int) -> list[int]:
        try:
            return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []

    def cmdline(pid: int) -> bytes:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return b""

    ours = cmdline(os.getpid())
    return sum(len(children(pid)) for pid in children(os.getpid()) if cmdline(pid) == ours)


class Metrics:
    """The registry of one daemon, and the instruments the API and the loop update."""

    def __init__(self, service: JobService, transitions: Transitions, policy: BandwidthPolicy,
                 sensors: dict[str, LinkSensor | None], logons: LogonChecker, store_path: Path,
                 connections: Callable[[], int]) -> None:
        # auto_describe=False: describing would collect at start, counting 100,000 jobs for nothing
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_JobSeries(service, transitions))
        self.registry.register(_Bandwidth(policy, sensors))
        self.api_requests = Counter("openbits_api_requests", "API requests answered, by route and status.",
                                    ["route", "method", "status"], registry=self.registry)
        #: api_requests' series by (route, method, status): labels() checks and locks on every call, three a job
        self._request_series: dict[tuple[str, str, int], Counter] = {}
        Gauge("openbits_api_connections", "Open connections to the API socket.",
              registry=self.registry).set_function(connections)
        self.registry.register(_Single(CounterMetricFamily, "openbits_logons_failed",
                                       "Helper-token logons refused (bad password, unknown user, too many).",
                                       lambda: logons.failed))
        self.loop_lag = Gauge("openbits_event_loop_lag_seconds",
                              "How late the event loop ran a timer, last measured (once a second).",
                              registry=self.registry)
        Gauge("openbits_file_broker_processes", "File broker processes (one per user whose files are in use).",
              registry=self.registry).set_function(broker_processes)
        Gauge("openbits_store_size_bytes", "Size of the job database with its write-ahead log.",
              registry=self.registry).set_function(lambda: _size(store_path) + _size(Path(f"{store_path}-wal")))

    def count_request(self, route: str, method: str, status: int) -> None:
        """One answered API request in openbits_api_requests_total."""
        series = self._request_series.get((route, method, status))
        if series is None:
            series = self._request_series[route, method, status] = self.api_requests.labels(route, method, str(status))
        series.inc()

    async def measure_lag(self) -> None:
        """Sleep LAG_INTERVAL on the loop and record how much later than asked it woke."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(LAG_INTERVAL)
            self.loop_lag.set(max(0.0, loop.time() - start - LAG_INTERVAL))


class _Single(Collector):
    """One unlabelled sample read from a function when scraped."""

    def __init__(self, kind: Callable[..., Metric], name: str, doc: str, value: Callable[[], float]) -> None:
        self._kind, self._name, self._doc, self._value = kind, name, doc, value

    def collect(self) -> Iterator[Metric]:
        yield self._kind(self._name, self._doc, value=self._value())


class OwnSeries(Collector):
    """A registry seen by one non-administrator: only the samples labelled with their uid."""

    def __init__(self, registry: CollectorRegistry, uid: int) -> None:
        self._registry = registry
        self._uid = str(uid)

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            samples = [s for s in family.samples if s.labels.get("uid") == self._uid]
            if samples:
                family.samples = samples
                yield family


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
