"""What every benchmark part shares: the machine line, the scratch directory, test data, timing."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def machine_line() -> str:
    """nproc, memory, kernel, Python version and date on one line."""
    with open("/proc/meminfo") as fh:
        total_kib = int(next(line for line in fh if line.startswith("MemTotal:")).split()[1])
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (f"nproc {os.cpu_count()}, {total_kib / 1024 / 1024:.1f} GiB RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()} ({sys.executable}), {date}")


def source_line(root: Path) -> str:
    """The commit the daemon's code came from, and whether the work tree differed from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False).stdout

    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src").strip()
    return f"openbits {git('rev-parse', '--short', 'HEAD').strip()}" + (" + uncommitted changes in src/" if dirty else "")


def load_average() -> str:
    """The 1-minute load average: other work on the machine skews every figure."""
    return Path("/proc/loadavg").read_text().split()[0]


def tool_versions() -> str:
    """The competitors' and the server's versions, as they report them."""
    def first_line(command: list[str]) -> str:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        return (done.stdout or done.stderr).splitlines()[0].strip()

    return "; ".join([first_line(["curl", "--version"]).split(" (")[0], first_line(["aria2c", "--version"]),
                      first_line(["/usr/sbin/nginx", "-v"]).replace("nginx version: ", "")])


def check_disk(path: Path, needed: int) -> None:
    """Stop early, saying how much is missing, when `path`'s file system cannot hold `needed` bytes."""
    probe = path if path.exists() else path.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise SystemExit(f"bench: {probe} has {free / 2**30:.1f} GiB free, the benchmark needs "
                         f"{needed / 2**30:.1f} GiB; free some space or pass --scratch DIR (or --quick)")
    print(f"disk: {free / 2**30:.1f} GiB free under {probe}, {needed / 2**30:.1f} GiB needed")


def drop_caches() -> bool:
    """sync and drop the page cache (root only), so every contender starts cold; False when not allowed."""
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError:
        return False
    return True


def _journal_less(path: Path) -> bool:
    """Whether `path` lies on an ext4 mounted without a journal (this machine's root is: see scratch_volume)."""
    probe = str(path if path.exists() else path.parent)
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    under = [m for m in mounts if probe == m[1] or probe.startswith(m[1].rstrip("/") + "/")]
    if not under:
        return False
    device, _, kind = max(under, key=lambda m: len(m[1]))[:3]
    name = Path(device).name
    # a journaled ext4 has a jbd2 entry named after its device
    return kind == "ext4" and Path(f"/sys/fs/ext4/{name}").exists() and not any(Path("/proc/fs/jbd2").glob(f"{name}-*"))


@contextmanager
def scratch_volume(path: Path, size: int) -> Iterator[str]:
    """Mount a fresh ext4 (mkfs.ext4's defaults, with its journal) at `path` for the run, when `path` lies on
    an ext4 without a journal and we are root; yields a line saying what the scratch is.

    Why: without a journal, ext4's inode allocator passes over every inode freed in the last 60-360 s
    (fs/ext4/ialloc.c, recently_deleted()), and each pass costs CPU. On this machine's journal-less root,
    creating 10,000 empty files took 0.25 to 2.9 s of CPU depending on what anyone had deleted just before
    (the previous run's outputs, other work's tests); on a journaled ext4 it took 0.21 s whatever came before.
    A small-files figure should not depend on that, for us or for curl and aria2c.
    """
    host = f"scratch {path} on the host's file system"
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4") or not _journal_less(path):
        yield host
        return
    image = path.with_name(path.name + ".img")
    if os.path.ismount(path):  # left by a run that was killed
        subprocess.run(["umount", str(path)], check=False)
    fresh_dir(path)
    with open(image, "wb") as fh:
        fh.truncate(0)
        fh.truncate(size)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(image)],
                          capture_output=True, text=True, check=False)
    mounted = made.returncode == 0 and subprocess.run(["mount", "-o", "loop", str(image), str(path)],
                                                      capture_output=True, check=False).returncode == 0
    try:
        yield (f"scratch {path} on a fresh {size / 2**30:.0f} GiB ext4 image with a journal, loop-mounted for "
               "the run (the host's ext4 has none: see bench/machine.py scratch_volume)") if mounted else (
               f"{host} (a journaled ext4 image could not be mounted there)")
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=False)
        image.unlink(missing_ok=True)
        if not os.path.ismount(path):
            shutil.rmtree(path, ignore_errors=True)


def fresh_dir(path: Path) -> Path:
    """An empty directory at `path` (whatever was there is removed)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def make_big_file(path: Path, size: int) -> None:
    """`size` bytes of incompressible data (a random MiB repeated; nobody compresses here anyway)."""
    if path.exists() and path.stat().st_size == size:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(1 << 20)
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            left -= fh.write(block[: min(left, len(block))])


def make_small_files(directory: Path, count: int, size: int) -> list[str]:
    """`count` files of `size` random bytes; returns their names."""
    directory.mkdir(parents=True, exist_ok=True)
    names = [f"f{i:05d}.bin" for i in range(count)]
    for name in names:
        target = directory / name
        if not (target.exists() and target.stat().st_size == size):
            target.write_bytes(os.urandom(size))
    return names


def best_of(runs: int, budget: float, once: Callable[[int], float]) -> tuple[float, list[float]]:
    """Call `once(attempt)` (it returns seconds) up to `runs` times, fewer when one run alone exceeds `budget`."""
    times: list[float] = []
    for attempt in range(runs):
        times.append(once(attempt))
        if times[-1] > budget:
            break
    return min(times), times


def rss_mib(pid: int) -> float:
    """VmRSS of a process, in MiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def children_rss_mib(pid: int) -> float:
    """Summed VmRSS of the direct children of `pid` (the file broker's zygote and brokers hang below it)."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                total += rss_mib(int(child)) + children_rss_mib(int(child))
            except (OSError, RuntimeError):
                pass
    return total


def thread_cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU time of one thread of `pid` (tid == pid: its main thread, the event loop), or of
    all its threads (tid None)."""
    stat = Path(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stopwatch:
    """`with Stopwatch() as sw: ...; sw.seconds`."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
