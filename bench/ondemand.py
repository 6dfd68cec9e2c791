"""On-demand reads: random 64 KiB reads of a 1 GiB remote file through the client helper, against curl -r.

Our side is one on-demand job (FOREGROUND) whose file is read with `job.files[0].open()`: each
`seek` + `read` asks the daemon for the bytes it lacks (RequestFileRanges), resumes the job and waits
until they are in, then reads them from the temporary file. curl's side is `curl -r FIRST-LAST` per
read, a process each, as a script would run it. Both read the same offsets (one seed), interleaved
read by read against the same nginx; every read is checked against the source.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import time
from typing import BinaryIO

from openbits import JobPriority, JobType, Manager

from machine import fresh_dir, make_big_file
from parts import Context, Row
from tests.servers.nginx import NginxServer

READ = 64 * 1024
#: The offsets are the same in every run, for both contenders.
SEED = 18


def offsets(size: int, count: int) -> list[int]:
    """`count` random read offsets in a file of `size` bytes (SEED)."""
    pick = random.Random(SEED)
    return [pick.randrange(0, size - READ) for _ in range(count)]


def bench_ondemand(ctx: Context) -> list[Row]:
    size, count = ctx.sizes.big_bytes, ctx.sizes.ondemand_reads
    source = ctx.data / "big.bin"
    make_big_file(source, size)
    out = fresh_dir(ctx.scratch / "out-ondemand")
    ours: list[float] = []
    theirs: list[float] = []
    with NginxServer(ctx.data) as nginx, source.open("rb") as expected:
        url = nginx.url("big.bin")
        daemon = ctx.daemon("ondemand", {})
        try:
            ctx.cold(source)
            with Manager(socket_path=daemon.socket, autostart=False) as manager:
                job = manager.create_job("bench on demand", JobType.DOWNLOAD, priority=JobPriority.FOREGROUND)
                job.on_demand = True
                job.add_file(url, str(out / "ondemand.bin"))
                with job.files[0].open() as f:
                    f.seek(0, os.SEEK_END)  # the size: the job's first answer, before the clock runs
                    for at in offsets(size, count):
                        want = os.pread(expected.fileno(), READ, at)
                        ours.append(_timed_read(f, at, want))
                        theirs.append(_curl_read(url, at, want))
                job.cancel()
        finally:
            daemon.stop()
    rows = [Row(f"on-demand 64 KiB random reads, {size / 2**30:g} GiB file", count / sum(ours), "reads/s",
                "curl -r", count / sum(theirs))]
    for name, q in (("p50", 50), ("p99", 99)):
        rows.append(Row(f"on-demand 64 KiB read latency {name}", _percentile(ours, q) * 1000, "ms", "curl -r",
                        _percentile(theirs, q) * 1000))
    ctx.notes.append(
        f"On-demand: {count} random {READ // 1024} KiB reads (seed {SEED}) of a {size / 2**30:g} GiB file on nginx, "
        "interleaved read by read: openbits through `job.files[0].open()` of one FOREGROUND on-demand job (its "
        f"buffered reader asks for 1 MiB a read), {sum(ours):.2f} s in all; `curl -r FIRST-LAST` a process a read, "
        f"{sum(theirs):.2f} s. Latency p50/p99: openbits {_ms(ours)}; curl {_ms(theirs)}.")
    return rows


def _timed_read(f: BinaryIO, at: int, want: bytes) -> float:
    """Seconds one seek + read of the helper took; the bytes must be the source's."""
    start = time.perf_counter()
    f.seek(at)
    got = f.read(READ)
    seconds = time.perf_counter() - start
    if got != want:
        raise RuntimeError(f"openbits read other bytes at {at} than the source has")
    return seconds


def _curl_read(url: str, at: int, want: bytes) -> float:
    """Seconds `curl -r` took for the same range; the bytes must be the source's."""
    start = time.perf_counter()
    done = subprocess.run(["curl", "-s", "-f", "-r", f"{at}-{at + READ - 1}", url], capture_output=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0 or done.stdout != want:
        raise RuntimeError(f"curl -r {at}-{at + READ - 1} failed ({done.returncode}) or sent other bytes")
    return seconds


def _percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _ms(values: list[float]) -> str:
    return f"{_percentile(values, 50) * 1000:.1f} / {_percentile(values, 99) * 1000:.1f} ms"


__all__ = ["bench_ondemand"]
