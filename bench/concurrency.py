"""How many background jobs should move bytes at once? (`max_background_transfers`)

BITS runs one background job at a time. This measures a queue of mixed jobs —
large files and jobs of small files, all NORMAL priority — drained by a daemon
with 1, 2 and 4 concurrent background transfers, on loopback nginx, and prints
the time to drain the queue. The default in daemon/config.py is the smallest
value within a few percent of the best.

    .venv/bin/python bench/concurrency.py
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from machine import fresh_dir, make_big_file, make_small_files, machine_line  # noqa: E402

from openbits import AsyncManager, JobPriority, JobState, JobType  # noqa: E402
from tests.daemon import DaemonProcess  # noqa: E402
from tests.servers.nginx import NginxServer  # noqa: E402

WORK = Path("/var/tmp/openbits-bench-concurrency")
BIG_JOBS, BIG_SIZE = 3, 128 << 20
SMALL_JOBS, SMALL_FILES = 3, 500


async def drain(daemon: DaemonProcess, nginx: NginxServer, small: list[str], dest: Path) -> float:
    async with AsyncManager(socket_path=daemon.socket, autostart=False) as manager:
        jobs = []
        for i in range(BIG_JOBS):
            job = await manager.create_job(f"big {i}", JobType.DOWNLOAD, priority=JobPriority.NORMAL)
            await job.add_file(nginx.url("big.bin"), dest / f"big{i}.bin")
            jobs.append(job)
        for i in range(SMALL_JOBS):
            job = await manager.create_job(f"small {i}", JobType.DOWNLOAD, priority=JobPriority.NORMAL)
            await job.add_files([(nginx.url(f"small/{name}"), dest / f"s{i}-{name}") for name in small])
            jobs.append(job)
        started = time.monotonic()
        for job in jobs:
            await job.resume()
        for job in jobs:
            assert await job.wait(600) == JobState.TRANSFERRED
        elapsed = time.monotonic() - started
        for job in jobs:
            await job.cancel()
        return elapsed


def main() -> None:
    www = fresh_dir(WORK / "www")
    make_big_file(www / "big.bin", BIG_SIZE)
    small = make_small_files(www / "small", SMALL_FILES, 4096)
    nginx = NginxServer(www)
    print(machine_line())
    print(f"queue: {BIG_JOBS} jobs of one {BIG_SIZE >> 20} MiB file + {SMALL_JOBS} jobs of {SMALL_FILES} x 4 KiB")
    try:
        for concurrent in (1, 2, 4):
            times = []
            for run in range(2):
                daemon = DaemonProcess(fresh_dir(WORK / f"d{concurrent}-{run}"),
                                       {"max_background_transfers": concurrent, "max_files_per_job": 1000}).start()
                try:
                    times.append(asyncio.run(drain(daemon, nginx, small, fresh_dir(WORK / "dest"))))
                finally:
                    daemon.stop()
            print(f"max_background_transfers = {concurrent}: best {min(times):.2f} s  (runs: "
                  + ", ".join(f"{t:.2f}" for t in times) + ")")
    finally:
        nginx.stop()


if __name__ == "__main__":
    main()
