"""Many users, one hostile (issue 16): ten users' clients against a system daemon, with and without an attacker.

Each of USERS real users runs CLIENTS/USERS concurrent clients that create a job, add a file,
resume, ask for info and cancel, in a loop, for SECONDS. The run is made twice: alone, then while
one more user holds as many idle connections as the daemon lets them, trickles request bodies and
floods logons with wrong passwords. Printed: the users' operations and errors, their p99 `info`
latency in both runs, and the daemon's peak RSS. Loopback only (the daemon's Unix socket); needs root.

    python bench/hostile.py [--clients 1000] [--seconds 60] [--idle 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from tests.daemon import DaemonProcess  # noqa: E402
from tests.users import RealUser, RealUsers  # noqa: E402

PYTHON = Path(sys.prefix) / "bin" / "python"
USERS = 10

#: One user's clients: (operations, errors, sorted info latencies in seconds) as JSON on stdout.
WORKLOAD = """
import asyncio, json, os, sys, time
from openbits import AsyncManager
clients, seconds, folder = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
async def client(manager, n, stop, stats):
    i = 0
    while time.monotonic() < stop:
        i += 1
        try:
            job = await manager.create_job(f"load-{n}-{i}")
            await job.add_file("http://127.0.0.1:9/f", f"{folder}/{n}-{i}")
            await job.resume()
            start = time.monotonic()
            await job.info()
            stats["info"].append(time.monotonic() - start)
            await job.cancel()
            stats["ops"] += 5
        except Exception as exc:
            stats["errors"] += 1
            stats["first_error"] = stats.get("first_error") or repr(exc)[:300]
async def main():
    manager = AsyncManager(os.environ["OPENBITS_SOCKET"], autostart=False)
    stats = {"ops": 0, "errors": 0, "info": []}
    stop = time.monotonic() + seconds
    await asyncio.gather(*(client(manager, n, stop, stats) for n in range(clients)))
    await manager.close()
    stats["info"].sort()
    print(json.dumps(stats))
asyncio.run(main())
"""

#: The attacker: idle connections (as many as admitted), slow bodies, a flood of wrong logons.
ATTACK = """
import json, os, socket, sys, threading, time
idle, seconds = int(sys.argv[1]), float(sys.argv[2])
sock_path = os.environ["OPENBITS_SOCKET"]
stop = time.monotonic() + seconds
held, counts = [], {"idle": 0, "slow": 0, "logons": 0}
def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    return s
def hold():
    while time.monotonic() < stop and counts["idle"] < idle:
        try:
            held.append(connect())
            counts["idle"] += 1
        except OSError:
            time.sleep(0.05)
def slow():
    while time.monotonic() < stop:
        try:
            s = connect()
            s.sendall(b"POST /v1/jobs HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 4194304\\r\\n\\r\\n")
            counts["slow"] += 1
            while time.monotonic() < stop:
                s.sendall(b" ")
                time.sleep(1)
        except OSError:
            pass
def logons():
    body = json.dumps({"username": "root", "password": "wrong"}).encode()
    while time.monotonic() < stop:
        try:
            s = connect()
            s.sendall(b"POST /v1/logon HTTP/1.1\\r\\nHost: x\\r\\nContent-Type: application/json\\r\\n"
                      b"Content-Length: %d\\r\\nConnection: close\\r\\n\\r\\n%s" % (len(body), body))
            s.recv(4096)
            s.close()
            counts["logons"] += 1
        except OSError:
            time.sleep(0.01)
threads = [threading.Thread(target=f) for f in (hold, *[slow] * 20, *[logons] * 8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(counts))
"""


def _as(user: RealUser, daemon: DaemonProcess, script: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["/usr/sbin/runuser", "-u", user.name, "--", str(PYTHON), str(script), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"OPENBITS_SOCKET": str(daemon.socket), "PATH": "/usr/bin:/bin",
                                 "HOME": str(user.home)})


def _p99(latencies: list[float]) -> float:
    return latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan")


def peak_rss(daemon: DaemonProcess) -> int:
    """VmHWM of the daemon, bytes."""
    assert daemon.proc is not None
    for line in Path(f"/proc/{daemon.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def load(daemon: DaemonProcess, users: list[RealUser], world: Path, clients: int, seconds: float,
         hostile: RealUser | None = None, idle: int = 0) -> dict[str, Any]:
    """One run of every user's clients (and the attacker, if given): ops, errors, p99 info latency."""
    workload, attack = world / "workload.py", world / "attack.py"
    workload.write_text(WORKLOAD)
    attack.write_text(ATTACK)
    for script in (workload, attack):
        script.chmod(0o644)
    attacker = _as(hostile, daemon, attack, str(idle), str(seconds + 2)) if hostile is not None else None
    procs = []
    for user in users:
        folder = world / user.name
        folder.mkdir(exist_ok=True)
        os.chown(folder, user.uid, user.identity.gid)
        procs.append(_as(user, daemon, workload, str(max(1, clients // len(users))), str(seconds), str(folder)))
    ops = errors = 0
    latencies: list[float] = []
    first_error = ""
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=seconds + 120)
        if proc.returncode != 0:
            raise RuntimeError(f"a workload failed: {stderr[-2000:]}")
        stats = json.loads(stdout.strip().splitlines()[-1])
        ops, errors = ops + stats["ops"], errors + stats["errors"]
        latencies += stats["info"]
        first_error = first_error or stats.get("first_error", "")
    result: dict[str, Any] = {"ops": ops, "errors": errors, "first_error": first_error,
                              "p99_info_ms": round(_p99(sorted(latencies)) * 1000, 1)}
    if attacker is not None:
        stdout, _ = attacker.communicate(timeout=seconds + 60)
        result["attack"] = json.loads(stdout.strip().splitlines()[-1])
    return result


def both(made: RealUsers, world: Path, clients: int, seconds: float, idle: int) -> dict[str, Any]:
    """The run alone and the run under attack, on one fresh system daemon."""
    users = [made.create(f"load{n}") for n in range(USERS)]
    hostile = made.create("hostile")
    daemon = DaemonProcess(world / "daemon", system=True).start()
    try:
        alone = load(daemon, users, world, clients, seconds)
        attacked = load(daemon, users, world, clients, seconds, hostile, idle)
        return {"alone": alone, "attacked": attacked, "peak_rss_mib": round(peak_rss(daemon) / 2**20, 1)}
    finally:
        daemon.stop()


def report(result: dict[str, Any]) -> str:
    alone, attacked = result["alone"], result["attacked"]
    return (f"hostile: alone {alone['ops']} ops, {alone['errors']} errors, p99 info {alone['p99_info_ms']} ms; "
            f"attacked {attacked['ops']} ops, {attacked['errors']} errors, p99 info {attacked['p99_info_ms']} ms "
            f"(attacker: {attacked.get('attack')}); daemon peak RSS {result['peak_rss_mib']} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--idle", type=int, default=20000)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/hostile.py needs root: it creates real users and runs a system daemon")
    world = Path(tempfile.mkdtemp(prefix="obt_bench_hostile_", dir="/var/tmp"))
    world.chmod(0o755)
    try:
        with RealUsers() as made:
            print(report(both(made, world, args.clients, args.seconds, args.idle)), flush=True)
    finally:
        shutil.rmtree(world, ignore_errors=True)


if __name__ == "__main__":
    main()
