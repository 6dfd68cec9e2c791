"""The four benchmark parts: big file, small files, API rate, 100k queued jobs.

Each part takes a `Context` and returns table `Row`s; contenders run
interleaved (curl, openbits, curl, openbits, ...) against the same nginx,
each after a page-cache drop when the machine allows one. The big file's goal
row then reads the source back into memory: nginx on loopback stands for a
server on another machine, whose disk the download does not share.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from openbits import AsyncJob, AsyncManager, JobPriority, JobState
from openbits.locations import answers

from machine import (Stopwatch, children_rss_mib, drop_caches, fresh_dir, make_big_file, make_small_files, rss_mib,
                     thread_cpu_seconds)
from tests.daemon import DaemonProcess
from tests.servers.nginx import NginxServer

MB = 1_000_000
#: add_files requests carry at most this many files (the API takes 4 MiB bodies; answers list every file)
ADD_BATCH = 1000


@dataclass
class Sizes:
    """How much work each part does; `--quick` shrinks all of it."""

    big_bytes: int = 1 << 30
    small_count: int = 10_000
    small_bytes: int = 4096
    runs: int = 3
    #: the big file's runs, best of five: the row with the source read cold from the same disk varied
    #: 0.9-2.1 s a run for both curl and openbits
    big_runs: int = 5
    api_jobs: int = 3000
    api_tasks: int = 32
    api_sequential_jobs: int = 500
    queue_jobs: int = 100_000
    queue_tasks: int = 64
    #: seconds the 100k-job fill may take before the part measures what it has and extrapolates
    queue_budget: float = 300.0
    #: random 64 KiB reads of the big file, on demand (bench/ondemand.py)
    ondemand_reads: int = 200

    @classmethod
    def quick(cls) -> Sizes:
        return cls(big_bytes=64 << 20, small_count=500, runs=1, big_runs=1, api_jobs=300, api_sequential_jobs=100,
                   queue_jobs=2000, queue_budget=20.0, ondemand_reads=50)


@dataclass
class Row:
    """One line of the results table. `met` is None for figures without a goal."""

    measure: str
    ours: float
    unit: str
    competitor: str = ""
    theirs: float | None = None
    goal: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return None if not self.theirs else self.ours / self.theirs


@dataclass
class Context:
    scratch: Path
    sizes: Sizes
    #: method notes and raw figures, written under the table in RESULTS.md
    notes: list[str] = field(default_factory=list)
    cold_cache: bool = True

    @property
    def data(self) -> Path:
        return self.scratch / "www"

    def cold(self, served: Path | None = None) -> None:
        """Drop the page cache before a timed download (remembered as False when not permitted); then read
        `served` back in: a server's file in its own memory, not read from the disk the download writes."""
        if self.cold_cache:
            self.cold_cache = drop_caches()
        if served is not None:
            with served.open("rb") as source:
                while source.read(1 << 24):
                    pass

    def daemon(self, name: str, config: dict[str, Any]) -> DaemonProcess:
        """A fresh daemon (state under the scratch dir, on the same disk as the downloads)."""
        return DaemonProcess(fresh_dir(self.scratch / f"daemon-{name}"), config).start()


def _manager(daemon: DaemonProcess) -> AsyncManager:
    return AsyncManager(socket_path=daemon.socket, autostart=False)


async def _transfer(daemon: DaemonProcess, pairs: list[tuple[str, str]], ctx: Context,
                    served: Path | None = None, checksum: str | None = None) -> float:
    """One job with `pairs` (one file with `checksum`): seconds from Resume until Complete has answered."""
    async with _manager(daemon) as manager:
        job = await manager.create_job("bench", priority=JobPriority.FOREGROUND)
        if checksum is not None:
            await job.add_file(*pairs[0], checksums=[checksum])
        for start in range(0, len(pairs) if checksum is None else 0, ADD_BATCH):
            await job.add_files(pairs[start:start + ADD_BATCH])
        ctx.cold(served)
        with Stopwatch() as sw:
            await job.resume()
            info = await job.wait_info()
            if info.state != JobState.TRANSFERRED:
                raise RuntimeError(f"openbits job ended {info.state.name}: {info.error}")
            done = await job.complete()
        if done.state != JobState.ACKNOWLEDGED:
            raise RuntimeError(f"Complete left the job {done.state.name}")
        return sw.seconds


def _run(command: list[str], ctx: Context, served: Path | None = None) -> float:
    """Seconds a competitor's command takes, cold cache (but `served`); a failure stops the benchmark."""
    ctx.cold(served)
    with Stopwatch() as sw:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stderr.strip()[:500]}")
    return sw.seconds


def _check_files(directory: Path, names: list[str], size: int) -> None:
    """Every expected file landed with its size, and nothing else (no leftover temporary files)."""
    found = {p.name: p.stat().st_size for p in directory.iterdir()}
    wrong = [n for n in names if found.get(n) != size]
    extra = set(found) - set(names)
    if wrong or extra:
        raise RuntimeError(f"{directory}: {len(wrong)} files missing or short (e.g. {wrong[:3]}), "
                           f"{len(extra)} unexpected (e.g. {sorted(extra)[:3]})")


def _interleave(runs: int, contenders: dict[str, Callable[[int], float]], budget: float = 120.0) -> dict[str, list[float]]:
    """Run each contender once per round, `runs` rounds; a contender slower than `budget` s runs only once."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for attempt in range(runs):
        for name, once in contenders.items():
            if attempt and times[name][0] > budget:
                continue
            times[name].append(once(attempt))
            print(f"  {name} run {attempt + 1}: {times[name][-1]:.3f} s", flush=True)
    return times


def _fmt_times(times: list[float]) -> str:
    return ", ".join(f"{t:.3f}" for t in times) + " s"


# -- 1. one big file ---------------------------------------------------------------------------------

def bench_big(ctx: Context) -> list[Row]:
    """One big file: curl -o against one openbits job, throughput in MB/s, best of N. The goal's row has
    nginx serve the file from memory, as a server on another machine would (its disk is not ours);
    a second row, without a goal, has it read the file cold from the disk the download writes to."""
    size = ctx.sizes.big_bytes
    source = ctx.data / "big.bin"
    make_big_file(source, size)
    out = fresh_dir(ctx.scratch / "out-big")
    return [_big_row(ctx, out, source), _big_row(ctx, out, None)]


def _big_row(ctx: Context, out: Path, served: Path | None) -> Row:
    """curl and openbits into `out`, interleaved, each with the page cache dropped and then `served` read in."""
    size = ctx.sizes.big_bytes
    with NginxServer(ctx.data) as nginx:
        url = nginx.url("big.bin")
        daemon = ctx.daemon("big", {})
        try:
            def curl(attempt: int) -> float:
                dest = out / f"curl-{attempt}.bin"
                seconds = _run(["curl", "-s", "-f", "-o", str(dest), url], ctx, served)
                _check_files(out, [dest.name], size)
                dest.unlink()
                return seconds

            def ours(attempt: int) -> float:
                dest = out / f"ours-{attempt}.bin"
                seconds = asyncio.run(_transfer(daemon, [(url, str(dest))], ctx, served))
                _check_files(out, [dest.name], size)
                dest.unlink()
                return seconds

            print(f"  source {'in memory' if served else 'cold, on the same disk'}", flush=True)
            times = _interleave(ctx.sizes.big_runs, {"curl -o": curl, "openbits": ours})
        finally:
            daemon.stop()
    curl_rate = size / min(times["curl -o"]) / MB
    our_rate = size / min(times["openbits"]) / MB
    where = "served from memory" if served else "source read cold from the same disk"
    ctx.notes.append(f"Big file ({size / 2**20:.0f} MiB), {where}: curl {_fmt_times(times['curl -o'])}; "
                     f"openbits {_fmt_times(times['openbits'])} (FOREGROUND job, Resume to ACKNOWLEDGED).")
    if served:
        return Row(f"{size / 2**30:g} GiB file", our_rate, "MB/s", "curl -o", curl_rate, "≥ 1.2× curl",
                   our_rate >= 1.2 * curl_rate)
    return Row(f"{size / 2**30:g} GiB file, source cold", our_rate, "MB/s", "curl -o", curl_rate)


def bench_checksum(ctx: Context) -> list[Row]:
    """The big file with a sha256 checksum at AddFile against the same download without (served from memory,
    interleaved): the hashing must overlap the transfer."""
    size = ctx.sizes.big_bytes
    source = ctx.data / "big.bin"
    make_big_file(source, size)
    digest = hashlib.sha256()
    with source.open("rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    out = fresh_dir(ctx.scratch / "out-sha")
    with NginxServer(ctx.data) as nginx:
        url = nginx.url("big.bin")
        daemon = ctx.daemon("sha", {})
        cpu: dict[bool, list[float]] = {False: [], True: []}
        try:
            def run(checksum: str | None) -> Callable[[int], float]:
                def once(attempt: int) -> float:
                    dest = out / f"ours-{attempt}.bin"
                    assert daemon.proc is not None
                    before = thread_cpu_seconds(daemon.proc.pid)
                    seconds = asyncio.run(_transfer(daemon, [(url, str(dest))], ctx, source, checksum))
                    cpu[checksum is not None].append(thread_cpu_seconds(daemon.proc.pid) - before)
                    _check_files(out, [dest.name], size)
                    dest.unlink()
                    return seconds
                return once

            times = _interleave(ctx.sizes.big_runs, {"unverified": run(None),
                                                     "sha256": run(f"sha256:{digest.hexdigest()}")})
        finally:
            daemon.stop()
    plain, verified = (size / min(times[name]) / MB for name in ("unverified", "sha256"))
    ctx.notes.append(f"Big file with a sha256 checksum at AddFile: {_fmt_times(times['sha256'])}; the same "
                     f"without: {_fmt_times(times['unverified'])} (served from memory, interleaved). Daemon CPU "
                     f"(all threads) a run: {_fmt_times(cpu[True])} verified, {_fmt_times(cpu[False])} unverified: "
                     "the difference is the hashing thread, which follows the file right behind the writer.")
    return [Row(f"{size / 2**30:g} GiB file, sha256 verified", verified, "MB/s", "same, unverified", plain,
                "≥ 0.9× unverified", verified >= 0.9 * plain)]


# -- 2. many small files ------------------------------------------------------------------------------

def bench_small(ctx: Context) -> list[Row]:
    """N small files in one job into a fresh directory, against aria2c -j16 and curl -Z --parallel-max 16."""
    count, size = ctx.sizes.small_count, ctx.sizes.small_bytes
    names = make_small_files(ctx.data / "small", count, size)
    lists = fresh_dir(ctx.scratch / "lists")
    with NginxServer(ctx.data) as nginx:
        urls = [nginx.url(f"small/{name}") for name in names]
        aria_list = lists / "aria2.txt"
        aria_list.write_text("".join(f"{url}\n  out={name}\n" for url, name in zip(urls, names)))
        daemon = ctx.daemon("small", {"max_files_per_job": max(count, 200)})
        try:
            def aria2c(attempt: int) -> float:
                dest = fresh_dir(ctx.scratch / f"out-small/aria2c-{attempt}")
                seconds = _run(["aria2c", "-i", str(aria_list), "-j16", "-d", str(dest), "--allow-overwrite=true",
                                "--auto-file-renaming=false", "-q"], ctx)
                _check_files(dest, names, size)
                return seconds

            def curl(attempt: int) -> float:
                dest = fresh_dir(ctx.scratch / f"out-small/curl-{attempt}")
                config = lists / f"curl-{attempt}.cfg"
                config.write_text("".join(f'url = "{url}"\noutput = "{dest / name}"\n' for url, name in zip(urls, names)))
                seconds = _run(["curl", "-Z", "--parallel-max", "16", "-s", "-f", "-K", str(config)], ctx)
                _check_files(dest, names, size)
                return seconds

            def ours(attempt: int) -> float:
                dest = fresh_dir(ctx.scratch / f"out-small/openbits-{attempt}")
                seconds = asyncio.run(_transfer(daemon, [(url, str(dest / name)) for url, name in zip(urls, names)], ctx))
                _check_files(dest, names, size)
                return seconds

            times = _interleave(ctx.sizes.runs, {"aria2c": aria2c, "curl -Z": curl, "openbits": ours}, budget=60.0)
        finally:
            daemon.stop()
    rates = {name: count / min(t) for name, t in times.items()}
    ours_rate = rates["openbits"]
    ctx.notes.append(f"Small files ({count} × {size} B, one job): " + "; ".join(
        f"{name} {_fmt_times(t)}" for name, t in times.items()) + " (openbits: Resume to ACKNOWLEDGED; "
        "a run over 60 s is not repeated).")
    return [
        Row(f"{count:,} × {size // 1024} KiB files", ours_rate, "files/s", "aria2c -j16", rates["aria2c"],
            "≥ 3× aria2c", ours_rate >= 3 * rates["aria2c"]),
        Row(f"{count:,} × {size // 1024} KiB files", ours_rate, "files/s", "curl -Z --parallel-max 16",
            rates["curl -Z"], "≥ 0.6× curl -Z", ours_rate >= 0.6 * rates["curl -Z"]),
    ]


# -- 3. API rate --------------------------------------------------------------------------------------

class StallServer:
    """A TCP port that takes connections (the kernel's backlog) and never answers: a transfer that moves nothing."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(4096)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/never"

    def __enter__(self) -> StallServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


async def _api_rate(daemon: DaemonProcess, count: int, tasks: int, url: str,
                    dest: Path) -> tuple[float, float, float]:
    """Jobs/s created + added (one file) + resumed by `tasks` concurrent clients, and the daemon's event-loop
    CPU ms per job meanwhile (what the host's speed changes least); then cancels/s cancelling them."""
    pid = daemon.proc.pid
    async with _manager(daemon) as manager:
        numbers = iter(range(count))
        jobs: list[AsyncJob] = []

        async def client() -> None:
            for i in numbers:
                job = await manager.create_job(f"api-{i}", priority=JobPriority.LOW)
                await job.add_file(url, str(dest / f"j{i}.bin"))
                await job.resume()
                jobs.append(job)

        loop_cpu = thread_cpu_seconds(pid, pid)
        with Stopwatch() as created:
            await asyncio.gather(*(client() for _ in range(tasks)))
        loop_cpu = thread_cpu_seconds(pid, pid) - loop_cpu
        pending = iter(jobs)

        async def canceller() -> None:
            for job in pending:
                await job.cancel()

        with Stopwatch() as cancelled:
            await asyncio.gather(*(canceller() for _ in range(tasks)))
    return count / created.seconds, loop_cpu / count * 1000, count / cancelled.seconds


def bench_api(ctx: Context) -> list[Row]:
    """Create + AddFile + Resume per second through AsyncManager, 1 and N concurrent clients, fresh daemon each."""
    sizes = ctx.sizes
    config = {"max_jobs_per_user": sizes.api_jobs + 100, "max_background_transfers": 1}
    results: dict[int, tuple[int, float, float, float]] = {}
    with StallServer() as stall:
        for tasks, count in ((1, sizes.api_sequential_jobs), (sizes.api_tasks, sizes.api_jobs)):
            daemon = ctx.daemon(f"api-{tasks}", config)
            try:
                rate, loop_ms, cancel_rate = asyncio.run(
                    _api_rate(daemon, count, tasks, stall.url, fresh_dir(ctx.scratch / "out-api")))
            finally:
                daemon.stop()
            results[tasks] = (count, rate, loop_ms, cancel_rate)
            print(f"  {tasks} client(s): {count} jobs, {rate:.0f} jobs/s, event loop {loop_ms:.2f} ms CPU a job; "
                  f"cancel {cancel_rate:.0f} jobs/s", flush=True)
    ctx.notes.append(
        "API rate: each job is POST /v1/jobs (LOW), POST files (one file), POST resume; the URL points at a "
        "port that accepts and never answers and max_background_transfers = 1, so one job sits CONNECTING "
        "and the rest stay QUEUED - the figure is API plus durable bookkeeping, no bytes. " + "; ".join(
            f"{tasks} client(s): {count} jobs at {rate:.0f} jobs/s (daemon event loop {loop_ms:.2f} ms CPU a job), "
            f"then Cancel at {cancel:.0f} jobs/s" for tasks, (count, rate, loop_ms, cancel) in results.items()) +
        ". The clients run on the same 2 cores: the rate moves with the host's speed, the CPU per job much less.")
    n = sizes.api_tasks
    return [
        Row(f"API create+add+resume, {n} clients", results[n][1], "jobs/s", goal="≥ 1,000 jobs/s",
            met=results[n][1] >= 1000),
        Row("API create+add+resume, 1 client", results[1][1], "jobs/s"),
        Row(f"API event-loop CPU a job, {n} clients", results[n][2], "ms"),
    ]


# -- 4. 100k queued jobs ------------------------------------------------------------------------------

async def _fill(daemon: DaemonProcess, target: int, tasks: int, budget: float, dest: Path) -> tuple[int, float, str]:
    """Create up to `target` SUSPENDED one-file jobs, stopping after `budget` s; (jobs made, seconds, one id)."""
    async with _manager(daemon) as manager:
        numbers = iter(range(target))
        made: list[str] = []
        start = time.perf_counter()
        report = [start]

        async def client() -> None:
            for i in numbers:
                if time.perf_counter() - start > budget:
                    return
                job = await manager.create_job(f"q-{i}", priority=JobPriority.LOW)
                await job.add_file("http://127.0.0.1:9/never", str(dest / f"q{i}.bin"))
                made.append(job.id)
                if len(made) % 10_000 == 0:
                    now = time.perf_counter()
                    print(f"  {len(made):,} jobs after {now - start:.0f} s "
                          f"({10_000 / (now - report[0]):.0f} jobs/s for the last 10,000)", flush=True)
                    report[0] = now

        await asyncio.gather(*(client() for _ in range(tasks)))
        return len(made), time.perf_counter() - start, made[len(made) // 2]


def _start_timed(daemon: DaemonProcess, job_id: str | None) -> float:
    """Seconds from spawning openbitsd until its socket answers and (if given) GET of `job_id` succeeds."""
    with Stopwatch() as sw:
        try:
            daemon.start()
        except RuntimeError:
            if daemon.proc is None or daemon.proc.poll() is not None:
                raise
            while not answers(daemon.socket):  # slower than DaemonProcess's 15 s: keep timing
                if time.perf_counter() - sw.start > 600 or daemon.proc.poll() is not None:
                    raise
                time.sleep(0.02)
        if job_id is not None:
            asyncio.run(_get_raw(daemon, job_id))
    return sw.seconds


async def _get_raw(daemon: DaemonProcess, job_id: str) -> None:
    """GET one job as plain HTTP: the answer must be 200, whatever fields this checkout's models know."""
    connector = aiohttp.UnixConnector(path=str(daemon.socket))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"http://openbits/v1/jobs/{job_id}") as response:
            body = await response.text()
            if response.status != 200 or job_id not in body:
                raise RuntimeError(f"GET of job {job_id} after the restart: HTTP {response.status} {body[:300]}")


def bench_queue(ctx: Context) -> list[Row]:
    """RSS with N queued jobs, and the time a SIGTERM + start takes to serve one of them again."""
    sizes = ctx.sizes
    target = sizes.queue_jobs
    daemon = DaemonProcess(fresh_dir(ctx.scratch / "daemon-queue"), {"max_jobs_per_user": target + 100})
    empty_start = _start_timed(daemon, None)
    assert daemon.proc is not None
    empty_rss = rss_mib(daemon.proc.pid)
    try:
        made, fill_seconds, probe = asyncio.run(
            _fill(daemon, target, sizes.queue_tasks, sizes.queue_budget, fresh_dir(ctx.scratch / "out-queue")))
        rss = rss_mib(daemon.proc.pid)
        helpers = children_rss_mib(daemon.proc.pid)
        with Stopwatch() as stopping:
            daemon.stop()
        restart = _start_timed(daemon, probe)
        assert daemon.proc is not None
        rss_after = rss_mib(daemon.proc.pid)
    finally:
        daemon.stop()
    db = sum(p.stat().st_size for p in daemon.state_dir.glob("jobs.db*"))
    print(f"  {made:,} jobs in {fill_seconds:.0f} s; RSS {rss:.0f} MiB (empty {empty_rss:.0f}); "
          f"restart {restart:.2f} s (empty start {empty_start:.2f} s)", flush=True)
    scale = target / made
    label = "" if made >= target else f" (extrapolated from {made:,})"
    rss_goal = empty_rss + (rss - empty_rss) * scale
    rss_after_goal = empty_rss + (rss_after - empty_rss) * scale
    restart_goal = empty_start + (restart - empty_start) * scale
    ctx.notes.append(
        f"Queue: {made:,} SUSPENDED jobs (LOW, one file each, never resumed) created by {sizes.queue_tasks} "
        f"concurrent clients in {fill_seconds:.1f} s ({made / fill_seconds:.0f} jobs/s)"
        + ("" if made >= target else f", stopped by the {sizes.queue_budget:.0f} s budget before {target:,}")
        + f". Daemon VmRSS: {empty_rss:.0f} MiB empty, {rss:.0f} MiB with the jobs, {rss_after:.0f} MiB after the "
        f"restart; file-broker processes {helpers:.0f} MiB more. Job database {db / MB:.0f} MB. SIGTERM took "
        f"{stopping.seconds:.2f} s; start to answering + GET of one job {restart:.2f} s (empty daemon: "
        f"{empty_start:.2f} s)." + ("" if made >= target else
                                     " Figures for the full count are extrapolated linearly above the empty daemon."))
    return [
        Row(f"RSS, {target:,} queued jobs{label}", rss_goal, "MiB", goal="≤ 300 MB", met=rss_goal * 2**20 <= 300 * MB),
        Row(f"RSS after restart, {target:,} jobs{label}", rss_after_goal, "MiB", goal="≤ 300 MB",
            met=rss_after_goal * 2**20 <= 300 * MB),
        Row(f"restart, {target:,} queued jobs{label}", restart_goal, "s", goal="≤ 3 s", met=restart_goal <= 3.0),
        Row("jobs created (create+add) by the fill", made / fill_seconds, "jobs/s"),
    ]


PARTS: dict[str, Callable[[Context], list[Row]]] = {
    "big": bench_big,
    "checksum": bench_checksum,
    "small": bench_small,
    "api": bench_api,
    "queue": bench_queue,
}

__all__ = ["PARTS", "Context", "Row", "Sizes"]
