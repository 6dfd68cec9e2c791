"""Events per second through openbitsd: client processes change jobs, other processes follow every event.

Every PATCH of a job whose minimum notification interval is 0 makes one event,
stored in the same transaction as the change (group commit). Writers and
followers run in processes of their own so the clients are not what is
measured. The figures: events made per second (acknowledged changes), events
per second each follower received, how far behind the followers were when the
writers stopped, and how fast a reconnecting client replays stored events.

    .venv/bin/python bench/events.py [--seconds 5] [--writers 4] [--tasks 32] [--followers 4] [--files]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from openbits import AsyncManager, JobPriority, JobType  # noqa: E402
from openbits.model.job import Job  # noqa: E402
from openbits.model.config import Config  # noqa: E402
from openbits.events.bus import EventBus  # noqa: E402
from openbits.store import SqliteStore  # noqa: E402
from tests.daemon import DaemonProcess  # noqa: E402


async def write(socket: Path, tasks: int, seconds: float) -> dict[str, float]:
    """One writer process: `tasks` jobs, each changed as fast as the daemon acknowledges."""
    async with AsyncManager(socket, autostart=False) as manager:
        jobs = [await manager.create_job("bench") for _ in range(tasks)]
        for job in jobs:
            await job.set_properties(minimum_notification_interval_ms=0)
        changes = 0
        deadline = time.monotonic() + seconds

        async def change(job) -> None:  # type: ignore[no-untyped-def]
            nonlocal changes
            while time.monotonic() < deadline:
                await job.set_properties(description=f"change {changes}")
                changes += 1

        async with asyncio.TaskGroup() as group:
            for job in jobs:
                group.create_task(change(job))
        return {"changes": changes}


async def download(socket: Path, jobs: int, folder: Path) -> dict[str, float]:
    """One downloader process: `jobs` FOREGROUND jobs of 200 small file:// files each, moved at once."""
    sources = sorted(folder.glob("src-*"))
    async with AsyncManager(socket, autostart=False) as manager:
        async def one(n: int) -> int:
            job = await manager.create_job("bench files", priority=JobPriority.FOREGROUND)
            await job.set_properties(minimum_notification_interval_ms=0)
            out = folder / f"out-{os.getpid()}-{n}"
            out.mkdir()
            await job.add_files([(src.as_uri(), out / src.name) for src in sources])
            await job.resume()
            await job.wait()
            await job.complete()
            return len(sources)

        async with asyncio.TaskGroup() as group:
            done = [group.create_task(one(n)) for n in range(jobs)]
        return {"changes": sum(task.result() for task in done)}


async def follow(socket: Path, since: int, quiet: float) -> dict[str, float]:
    """One follower process: every event after `since`, until none came for `quiet` seconds."""
    count, first, last_at, last_seq = 0, 0.0, 0.0, 0
    async with AsyncManager(socket, autostart=False) as manager:
        async for event in manager.events(since=since, idle=quiet):
            if event is None:
                if count:
                    break
                continue
            count += 1
            first = first or time.time()
            last_at, last_seq = time.time(), event.seq
    return {"count": count, "first": first, "last_at": last_at, "last_seq": last_seq}


async def head(socket: Path) -> tuple[int, float]:
    """The newest seq, and how fast the stored events replay."""
    async with AsyncManager(socket, autostart=False) as manager:
        started = time.monotonic()
        seqs = [e.seq async for e in manager.events(since=0, follow_live=False) if e is not None]
        return max(seqs, default=0), len(seqs) / (time.monotonic() - started)


async def capacity(folder: Path, seconds: float = 2.0, subscribers: int = 4) -> float:
    """The event path alone, in this process: record, store (group commit, synchronous=FULL), publish to streams."""
    store = SqliteStore(str(folder / "capacity.db"))
    jobs = {job.id: job for job in (Job.new(f"j{i}", JobType.DOWNLOAD, 0, JobPriority.NORMAL, "") for i in range(64))}
    bus = EventBus(store, jobs, Config)
    subs = [bus.subscribe(None, None) for _ in range(subscribers)]
    made = 0
    deadline = time.monotonic() + seconds

    async def change(job: Job) -> None:
        nonlocal made
        job.minimum_notification_interval_ms = 0
        while time.monotonic() < deadline:
            job.description = str(made)
            events = bus.record(job)
            await store.save_job(job, (), events)
            bus.publish(events)
            made += len(events)
            for sub in subs:
                while not sub.queue.empty():
                    sub.queue.get_nowait()

    started = time.monotonic()
    async with asyncio.TaskGroup() as group:
        for job in jobs.values():
            group.create_task(change(job))
    await store.close()
    return made / (time.monotonic() - started)


def role(argv: list[str]) -> None:
    socket = Path(argv[1])
    work = {"write": lambda: write(socket, int(argv[2]), float(argv[3])),
            "download": lambda: download(socket, int(argv[2]), Path(argv[3])),
            "follow": lambda: follow(socket, int(argv[2]), float(argv[3]))}[argv[0]]
    result = asyncio.run(work())
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--writers", type=int, default=4, help="writer processes")
    parser.add_argument("--tasks", type=int, default=32, help="jobs changed at once per writer")
    parser.add_argument("--followers", type=int, default=4, help="follower processes")
    parser.add_argument("--files", action="store_true",
                        help="writers download jobs of 200 small files (file_transferred and progress events) "
                             "instead of changing properties")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="openbits-bench-events-") as tmp:
        daemon = DaemonProcess(Path(tmp), {"max_jobs_per_user": 100_000}).start()
        try:
            since, _ = asyncio.run(head(daemon.socket))

            def spawn(*argv: object) -> subprocess.Popen[str]:
                return subprocess.Popen([sys.executable, __file__, "--role", *map(str, argv)], stdout=subprocess.PIPE,
                                        text=True)

            followers = [spawn("follow", daemon.socket, since, 2.0) for _ in range(args.followers)]
            time.sleep(1.0)  # the streams are open
            started = time.time()
            if args.files:
                for i in range(200):
                    (Path(tmp) / f"src-{i:03}").write_bytes(b"x" * 1024)
                writers = [spawn("download", daemon.socket, args.tasks, tmp) for _ in range(args.writers)]
            else:
                writers = [spawn("write", daemon.socket, args.tasks, args.seconds) for _ in range(args.writers)]
            made = sum(json.loads(w.communicate()[0])["changes"] for w in writers)
            stopped = time.time()
            seen = [json.loads(f.communicate()[0]) for f in followers]
            final, replay_rate = asyncio.run(head(daemon.socket))
        finally:
            daemon.stop()
    what = "files downloaded" if args.files else "acknowledged changes"
    print(f"{args.writers} writers x {args.tasks} jobs, {args.followers} followers")
    print(f"work:             {made / (stopped - started):9.0f} /s ({made} {what}; {final - since} events)")
    for i, f in enumerate(seen):
        rate = f["count"] / max(1e-9, f["last_at"] - f["first"])
        complete = "all" if f["last_seq"] == final else f"up to seq {f['last_seq']} of {final}"
        print(f"follower {i}:       {rate:9.0f} events/s ({f['count']} events, {complete})")
    print(f"followers behind: {max(f['last_at'] for f in seen) - stopped:9.3f} s after the writers stopped")
    print(f"replay from 0:    {replay_rate:9.0f} events/s")
    with tempfile.TemporaryDirectory(prefix="openbits-bench-events-") as tmp:
        rate = asyncio.run(capacity(Path(tmp)))
    print(f"event path alone: {rate:9.0f} events/s durable and fanned out to 4 streams (record, group commit, publish)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--role"]:
        role(sys.argv[2:])
    else:
        main()
