"""The API rate of several revisions of openbits, alternated in one sitting: is a change within noise?

    .venv/bin/python bench/revisions.py 30e0847 fa774db HEAD            # 3 rounds of each, alternated
    .venv/bin/python bench/revisions.py --rounds 5 --jobs 3000 A B

This machine's speed moves by 10-20 % from one minute to the next, so figures of two revisions compare
only when measured together. Each revision is checked out (`git worktree add --detach`) under a scratch
directory; each round runs every revision once, in turn, with that revision's own daemon and bench
helpers: 32 clients create + AddFile + Resume JOBS jobs (as `bench/run.py --only api`), then cancel them.
The figures are the daemon's CPU (every thread) a job in each phase, which the host's speed changes less
than the rates, and the rates; the table gives each revision's median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
CLIENTS = 32


def daemon_cpu(pid: int) -> float:
    """User + system seconds of every thread of `pid`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(scratch: Path, jobs: int) -> dict[str, float]:
    """In a revision's checkout (the working directory): one daemon, create then cancel `jobs` jobs."""
    sys.path[:0] = [str(Path.cwd() / "bench"), str(Path.cwd()), str(Path.cwd() / "src")]
    from machine import fresh_dir
    from parts import Context, Sizes, StallServer, _manager

    from openbits import JobPriority

    async def run(daemon: Any, url: str, dest: Path) -> dict[str, float]:
        pid = daemon.proc.pid
        async with _manager(daemon) as manager:
            numbers, made = iter(range(jobs)), []
            pending = iter(made)  # in the order made, as bench/run.py cancels them

            async def create() -> None:
                for i in numbers:
                    job = await manager.create_job(f"api-{i}", priority=JobPriority.LOW)
                    await job.add_file(url, str(dest / f"j{i}.bin"))
                    await job.resume()
                    made.append(job)

            async def cancel() -> None:
                for job in pending:
                    await job.cancel()

            figures = {}
            for phase, work in (("create", create), ("cancel", cancel)):
                cpu, start = daemon_cpu(pid), time.perf_counter()
                await asyncio.gather(*(work() for _ in range(CLIENTS)))
                seconds = time.perf_counter() - start
                figures[f"{phase} jobs/s"] = jobs / seconds
                figures[f"{phase} ms CPU"] = (daemon_cpu(pid) - cpu) / jobs * 1000
            return figures

    ctx = Context(fresh_dir(scratch), Sizes())
    with StallServer() as stall:
        daemon = ctx.daemon("api", {"max_jobs_per_user": jobs + 100, "max_background_transfers": 1})
        try:
            return asyncio.run(run(daemon, stall.url, fresh_dir(scratch / "out")))
        finally:
            daemon.stop()


def compare(revisions: list[str], rounds: int, jobs: int, scratch: Path) -> None:
    trees = {}
    for rev in revisions:
        tree = scratch / "trees" / rev
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), rev], check=True)
        trees[rev] = tree
    figures: dict[str, list[dict[str, float]]] = {rev: [] for rev in revisions}
    try:
        for round_ in range(1, rounds + 1):
            for rev, tree in trees.items():
                out = subprocess.run(
                    [sys.executable, str(HERE), "--child", "--jobs", str(jobs), "--scratch", str(scratch / "run")],
                    cwd=tree, env={**os.environ, "PYTHONPATH": str(tree / "src")}, check=True,
                    stdout=subprocess.PIPE, text=True).stdout
                figures[rev].append(json.loads(out.strip().splitlines()[-1]))
                shown = ", ".join(f"{k} {v:,.2f}" for k, v in figures[rev][-1].items())
                print(f"round {round_} {rev}: {shown}", flush=True)
    finally:
        for tree in trees.values():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    keys = list(next(iter(figures.values()))[0])
    print(f"\nmedian of {rounds} rounds, {jobs} jobs, {CLIENTS} clients")
    print("revision".ljust(12) + "".join(k.rjust(16) for k in keys))
    for rev, runs in figures.items():
        print(rev.ljust(12) + "".join(f"{statistics.median(r[k] for r in runs):16,.2f}" for k in keys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revisions", nargs="*", help="git revisions to compare (commits, branches, HEAD)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--scratch", type=Path, help="scratch directory (default: a new one under /var/tmp)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.scratch, args.jobs)))
        return
    if not args.revisions:
        parser.error("name at least one revision, e.g. 30e0847 HEAD")
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="openbits-revisions-", dir="/var/tmp"))
    try:
        compare(args.revisions, args.rounds, args.jobs, scratch)
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
