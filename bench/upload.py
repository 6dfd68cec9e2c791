"""Upload benchmark: a 1 GiB upload job through openbitsd vs `curl -T`, concurrent sessions of openbits-server,
and openbits-server as a farm on object storage (a Swift all-in-one with its S3 API) beside boto3.

    .venv/bin/python bench/upload.py                  # 1 GiB, sessions 100/1000/4000, farm 32 x 64 MiB
    .venv/bin/python bench/upload.py --size-mib 64 --sessions 100 --farm-files 8 --farm-mib 16
    .venv/bin/python bench/upload.py --parts farm     # the farm figures alone

curl cannot speak BITS, so its side is `curl -T FILE` (one PUT) to a plain
aiohttp PUT endpoint in this file that writes the body and fsyncs it once at
the end - the least a server must do to keep an upload. openbits goes
through the daemon (FOREGROUND job) to `openbits-server` (BITS fragments,
fsync every 16 MiB, Close-Session commit). Both run on loopback, on this
machine; each runs 5 times (--runs), interleaved, and the best counts (the median is
printed too: the host's writeback moves single runs by 2x); the ratio is
openbits time / curl time.

The 1 GiB upload runs against both storage backends: the local directory, and
object storage (one node on the Swift all-in-one: fragments into the store,
assembled there at Close-Session).

Sessions: N clients at once each Create-Session, send four 64 KiB fragments
and Close-Session against one openbits-server process; a round is sustained
when every session succeeds.

Memory: N sessions at once (8, 32, 100) against a fresh node on the store, the
same bytes each (8 MiB in 2 MiB fragments: pieces, joined at Close-Session):
the node's peak RSS (VmHWM), which should not grow with N.

Farm: F files of M MiB uploaded at once by the daemon (FOREGROUND jobs) through
nginx round-robin to 1 and to 3 openbits-server nodes on the store, against the
same files put straight into the store by boto3's multipart upload (F threads):
aggregate MB/s (10^6 bytes) from the first request to the last object in
place, and each node's peak RSS (VmHWM). Then one upload through the 3 nodes
with the node receiving a fragment killed with -9: seconds from the kill to
the next fragment acknowledged (nginx's log).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from openbits.enums import JobPriority, JobState, JobType  # noqa: E402
from openbits.uploadprotocol import PROTOCOL_BITS_1_5, Header, format_content_range  # noqa: E402
from tests.daemon import DaemonProcess  # noqa: E402
from tests.servers.farm import Farm, receiving_node, wait_for, write_config  # noqa: E402
from tests.servers.swift import ACCESS_KEY, SECRET_KEY, SwiftAllInOne, ensure_installed  # noqa: E402

BUCKET = "bench"

FRAGMENT = 64 * 1024
#: The figures --parts chooses from: the 1 GiB upload, concurrent sessions, a node's memory, the farm.
PARTS = ["one", "sessions", "memory", "farm"]
#: Each session of the memory figure: bytes, and the fragments they are sent in (all pieces, joined at Close).
MEMORY_BYTES, MEMORY_FRAGMENT = 8 << 20, 2 << 20


def _spawn(command: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """A server that prints `... listening on HOST:PORT` first."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"{command[0]} did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def put_server(directory: str) -> None:
    """The curl side: PUT /NAME writes the body to DIRECTORY/NAME and fsyncs once."""

    async def put(request: web.Request) -> web.Response:
        with open(os.path.join(directory, request.match_info["name"]), "wb") as f:
            async for chunk in request.content.iter_any():
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        return web.Response(status=201)

    async def serve() -> None:
        app = web.Application(client_max_size=0)
        app.router.add_put("/{name}", put)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(f"put-server listening on 127.0.0.1:{runner.addresses[0][1]}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


def _source(work: Path, size: int) -> Path:
    source = work / f"source-{size}.bin"
    if not source.exists():
        with source.open("wb") as f:
            for _ in range(max(1, size // (16 << 20))):
                f.write(os.urandom(min(size, 16 << 20)))
    return source


def one_gib(work: Path, size: int, runs: int,
            swift: SwiftAllInOne | None = None) -> tuple[list[float], list[float], list[float]]:
    """Seconds per run for openbits (daemon -> openbits-server) and for curl -T (-> plain PUT), same file,
    interleaved; each run starts after a sync, so none pays for the writeback of the one before. With
    `swift`, openbits-server stores in it (the object-storage backend) instead of a directory, and the
    third list is the file put straight into the store by boto3 in one PUT (the limit that node sits on)."""
    source = _source(work, size)
    bits, put_dir = work / f"bits-{swift is not None}", work / f"put-{swift is not None}"
    bits.mkdir()
    put_dir.mkdir()
    where = ["--root", str(bits)]
    if swift is not None:
        where = ["--config", str(write_config(work / "one-node", swift.endpoint, BUCKET, "one/", {"/": {}}))]
    server, bits_port = _spawn([sys.executable, "-m", "openbits.server", *where,
                                "--listen", "127.0.0.1:0", "--log-level", "WARNING"])
    put, put_port = _spawn([sys.executable, __file__, "--put-server", str(put_dir)])
    daemon = DaemonProcess(work / "daemon").start()
    ours: list[float] = []
    curl: list[float] = []
    plain: list[float] = []
    try:
        with daemon.manager() as manager:
            for attempt in range(runs):
                name = f"f{attempt}.bin"
                if swift is not None:
                    os.sync()
                    started = time.monotonic()
                    with source.open("rb") as body:
                        _boto3(swift, 1).put_object(Bucket=BUCKET, Key=f"plain/{name}", Body=body)
                    plain.append(time.monotonic() - started)
                os.sync()
                started = time.monotonic()
                subprocess.run(["curl", "-sS", "-o", "/dev/null", "-T", str(source),
                                f"http://127.0.0.1:{put_port}/{name}"], check=True)
                curl.append(time.monotonic() - started)
                os.sync()
                job = manager.create_job("bench upload", JobType.UPLOAD, priority=JobPriority.FOREGROUND)
                job.add_file(f"http://127.0.0.1:{bits_port}/{name}", source)
                started = time.monotonic()
                job.resume()
                state = job.wait(600)
                ours.append(time.monotonic() - started)
                assert state == JobState.TRANSFERRED, job.error
                job.complete()
                landed = put_dir / name
                assert landed.stat().st_size == size
                landed.unlink()
                if swift is None:
                    assert (bits / name).stat().st_size == size
                    (bits / name).unlink()
                else:
                    assert swift.client().head_object(Bucket=BUCKET, Key=f"one/{name}")["ContentLength"] == size
        return ours, curl, plain
    finally:
        daemon.stop()
        for proc in (server, put):
            proc.terminate()
            proc.wait()


async def _session(http: aiohttp.ClientSession, url: str, data: bytes, fragment: int = FRAGMENT) -> bool:
    async def send(packet: str, headers: dict[str, str], body: bytes | None = None) -> aiohttp.ClientResponse:
        async with http.request("BITS_POST", url, headers={Header.PACKET_TYPE: packet, **headers}, data=body) as r:
            await r.read()
            return r

    try:
        created = await send("Create-Session", {Header.SUPPORTED_PROTOCOLS: PROTOCOL_BITS_1_5})
        sid = created.headers[Header.SESSION_ID]
        for first in range(0, len(data), fragment):
            piece = data[first : first + fragment]
            ack = await send("Fragment", {Header.SESSION_ID: sid, Header.CONTENT_RANGE: format_content_range(
                first, first + len(piece) - 1, len(data))}, piece)
            if ack.status != 200:
                return False
        return (await send("Close-Session", {Header.SESSION_ID: sid})).status == 200
    except (aiohttp.ClientError, asyncio.TimeoutError, KeyError):
        return False


async def sessions(work: Path, counts: list[int]) -> list[tuple[int, int, float]]:
    """(sessions started, succeeded, seconds) per round against one openbits-server."""
    (work / "sessions").mkdir()
    server, port = _spawn([sys.executable, "-m", "openbits.server", "--root", str(work / "sessions"),
                           "--listen", "127.0.0.1:0", "--log-level", "WARNING"])
    data = os.urandom(4 * FRAGMENT)
    rounds = []
    try:
        for count in counts:
            connector = aiohttp.TCPConnector(limit=0)
            timeout = aiohttp.ClientTimeout(total=120)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
                started = time.monotonic()
                results = await asyncio.gather(*(_session(http, f"http://127.0.0.1:{port}/r{count}-{i}.bin", data)
                                                 for i in range(count)))
                rounds.append((count, sum(results), time.monotonic() - started))
    finally:
        server.terminate()
        server.wait()
    return rounds


def node_memory(work: Path, swift: SwiftAllInOne, counts: list[int]) -> list[tuple[int, int, float]]:
    """(sessions, succeeded, the node's peak RSS in MiB) per round: N raw BITS sessions at once against a
    fresh node on the store, each MEMORY_BYTES in MEMORY_FRAGMENT fragments (so Close-Session joins them)."""
    config = write_config(work / "memory", swift.endpoint, BUCKET, "memory/", {"/": {"allow_overwrites": True}})
    data = os.urandom(MEMORY_BYTES)
    rounds = []
    for count in counts:
        node, port = _spawn([sys.executable, "-m", "openbits.server", "--config", str(config),
                             "--listen", "127.0.0.1:0", "--log-level", "WARNING"])

        async def run() -> int:
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as http:
                done = await asyncio.gather(*(_session(http, f"http://127.0.0.1:{port}/m{i}.bin", data, MEMORY_FRAGMENT)
                                              for i in range(count)))
            return sum(done)

        try:
            rounds.append((count, asyncio.run(run()), _peak_rss_mib(node.pid)))
        finally:
            node.terminate()
            node.wait()
    return rounds


def _cpu_seconds(roots: list[int]) -> float:
    """User + system CPU seconds of these processes and their descendants (children reaped included)."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK"))
    counted, todo, total = set(), list(roots), 0.0
    while todo:
        pid = todo.pop()
        if pid in counted or pid not in stats:
            continue
        counted.add(pid)
        total += stats[pid][1]
        todo += [child for child, (parent, _) in stats.items() if parent == pid]
    return total


class CpuMeter:
    """CPU seconds per GiB of each group of processes over a stretch of the benchmark."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self._groups = groups
        self._start = {name: _cpu_seconds(pids) for name, pids in groups.items()}
        self._self = time.process_time()
        #: CPU seconds of all of them at the last per_gib().
        self.seconds = 0.0

    def per_gib(self, nbytes: int, in_process: str | None = None) -> str:
        """`in_process`: the name of what ran in this process meanwhile (boto3)."""
        used = {name: _cpu_seconds(pids) - self._start[name] for name, pids in self._groups.items()}
        if in_process:
            used[in_process] = time.process_time() - self._self
        gib = nbytes / (1 << 30)
        shown = ", ".join(f"{name} {seconds / gib:.1f}" for name, seconds in used.items())
        self.seconds = sum(used.values())
        return f"CPU s/GiB: {shown}; total {self.seconds / gib:.1f}"


def _boto3(swift: SwiftAllInOne, connections: int) -> Any:
    """A boto3 client of the store that sends payloads unsigned, as the nodes do."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=swift.endpoint, aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY, config=Config(
                            region_name="us-east-1", s3={"addressing_style": "path", "payload_signing_enabled": False},
                            max_pool_connections=connections, request_checksum_calculation="when_required"))


def direct(swift: SwiftAllInOne, source: Path, files: int) -> tuple[float, str]:
    """Seconds for boto3's multipart upload_file of `files` copies of `source` at once (one thread each),
    and the CPU it took. Like the daemon's uploads: one part of each file at a time (a BITS client sends
    one fragment at a time), parts the size of the nodes' (16 MiB), payload unsigned as the nodes send it."""
    from boto3.s3.transfer import TransferConfig

    from openbits.server.s3 import SLOT

    client = _boto3(swift, files)
    transfer = TransferConfig(multipart_chunksize=SLOT, max_concurrency=1, use_threads=False)
    meter = CpuMeter(swift.pids())
    started = time.monotonic()
    with ThreadPoolExecutor(files) as pool:
        list(pool.map(lambda i: client.upload_file(str(source), BUCKET, f"direct/{i}.bin", Config=transfer),
                      range(files)))
    return time.monotonic() - started, meter.per_gib(files * source.stat().st_size, "boto3")


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def through_farm(work: Path, swift: SwiftAllInOne, source: Path, files: int,
                 nodes: int) -> tuple[float, list[float], str, float]:
    """Seconds for `files` upload jobs at once through nginx to `nodes` nodes, each node's peak RSS (MiB),
    the CPU each part took and the CPU seconds of them all."""
    tag = f"farm{nodes}"
    config = write_config(work / tag, swift.endpoint, BUCKET, f"{tag}/", {"/": {}})
    farm = Farm(work / tag, config, count=nodes).start()
    daemon = DaemonProcess(work / f"{tag}-daemon").start()
    try:
        with daemon.manager() as manager:
            jobs = []
            for i in range(files):
                job = manager.create_job(f"farm {i}", JobType.UPLOAD, priority=JobPriority.FOREGROUND)
                job.add_file(farm.url(f"{i}.bin"), source)
                jobs.append(job)
            assert daemon.proc is not None and farm.nginx is not None
            meter = CpuMeter({"nodes": [n.pid for n in farm.nodes], **swift.pids(), "nginx": [farm.nginx.pid],
                              "client daemon": [daemon.proc.pid]})
            started = time.monotonic()
            for job in jobs:
                job.resume()
            for job in jobs:
                state = job.wait(1800)
                assert state == JobState.TRANSFERRED, job.error
            seconds = time.monotonic() - started
            cpu = meter.per_gib(files * source.stat().st_size)
            cpu_seconds = meter.seconds
            for job in jobs:
                job.complete()
        return seconds, [_peak_rss_mib(n.pid) for n in farm.nodes], cpu, cpu_seconds
    finally:
        daemon.stop()
        farm.stop()


def failover(work: Path, swift: SwiftAllInOne, source: Path, attempts: int = 5) -> float | None:
    """Seconds from kill -9 of the node receiving a fragment to the next fragment acknowledged. The upload
    is paced (8 MiB/s) so a fragment is on the wire most of the time; a kill that met no fragment (nginx
    logged no failed one) is not counted and the node comes back for another try."""
    config = write_config(work / "failover", swift.endpoint, BUCKET, "failover/", {"/": {}})
    farm = Farm(work / "failover", config).start()
    daemon = DaemonProcess(work / "failover-daemon").start()
    fragments = lambda: [s for s in farm.served() if s[1] == "Fragment"]  # noqa: E731
    try:
        with daemon.manager() as manager:
            job = manager.create_job("failover", JobType.UPLOAD, priority=JobPriority.FOREGROUND)
            job.add_file(farm.url("f.bin"), source)
            job.set_properties(minimum_retry_delay=0, max_bandwidth=8 << 20)
            job.resume()
            measured = None
            for _ in range(attempts):
                seen = len(fragments())
                wait_for(lambda: len(fragments()) >= seen + 1, 120)
                victim = wait_for(lambda: receiving_node(farm.nodes), 60, 0.005)
                time.sleep(0.05)  # well inside the fragment
                victim.kill9()
                killed = time.time()
                after = wait_for(lambda: [s for s in fragments()[seen:] if s[3] >= killed - 0.01], 120)
                victim.start()
                if after[0][2] != "200":  # the fragment the node died in
                    acked = wait_for(lambda: [s[3] for s in fragments()[seen:] if s[2] == "200" and s[3] > killed], 120)
                    measured = acked[0] - killed
                    break
            assert job.wait(600) == JobState.TRANSFERRED, job.error
            job.complete()
            return measured
    finally:
        daemon.stop()
        farm.stop()


def farm_figures(work: Path, swift: SwiftAllInOne, files: int, size: int) -> None:
    source = _source(work, size)
    total = files * size / 1e6
    seconds, cpu = direct(swift, source, files)
    print(f"farm: {files} x {size >> 20} MiB straight into the store (boto3 multipart, one part of each file at "
          f"a time): {seconds:.1f} s, {total / seconds:.0f} MB/s; {cpu}", flush=True)
    for nodes in (1, 3):
        farm_seconds, rss, cpu, cpu_seconds = through_farm(work, swift, source, files, nodes)
        best = cpu_seconds / (os.cpu_count() or 1)  # every core busy with nothing else
        print(f"farm: {files} x {size >> 20} MiB through {nodes} node(s): {farm_seconds:.1f} s, "
              f"{total / farm_seconds:.0f} MB/s = {seconds / farm_seconds:.2f}x boto3; peak RSS per node "
              f"{', '.join(f'{r:.0f}' for r in rss)} MiB; {cpu}; that CPU on {os.cpu_count()} cores takes at least "
              f"{best:.1f} s, at best {seconds / best:.2f}x boto3", flush=True)
    after = failover(work, swift, _source(work, 256 << 20))
    print("farm: kill -9 of the node receiving a fragment -> next fragment acknowledged after "
          + (f"{after:.2f} s (goal: 2 s)" if after is not None else "(no kill met a fragment in flight)"), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5, help="interleaved runs of the upload; the best counts")
    parser.add_argument("--sessions", type=int, nargs="+", default=[100, 1000, 4000])
    parser.add_argument("--memory-sessions", type=int, nargs="+", default=[8, 32, 100],
                        help="concurrent sessions against one node on the store, for its peak RSS")
    parser.add_argument("--farm-files", type=int, default=32, help="concurrent uploads through the farm")
    parser.add_argument("--farm-mib", type=int, default=64, help="size of each of them")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS, help="which figures (default: all)")
    parser.add_argument("--put-server", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.put_server:
        put_server(args.put_server)
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # servers inherit it: one descriptor per connection
    with tempfile.TemporaryDirectory(prefix="openbits-upload-bench-", dir="/var/tmp") as scratch:
        work = Path(scratch)
        size = args.size_mib << 20
        ensure_installed()
        with SwiftAllInOne() as swift:
            swift.make_bucket(BUCKET)
            for backend, store in (("local directory", None), ("object storage", swift))[:2 * ("one" in args.parts)]:
                ours, curl, plain = one_gib(work, size, args.runs, store)
                mib = size / (1 << 20)
                print(f"upload {mib:.0f} MiB ({backend}), best of {args.runs}: openbits {min(ours):.2f} s "
                      f"({mib / min(ours):.0f} MiB/s), curl -T to a plain PUT {min(curl):.2f} s "
                      f"({mib / min(curl):.0f} MiB/s), time ratio {min(ours) / min(curl):.2f}x, of the medians "
                      f"{statistics.median(ours) / statistics.median(curl):.2f}x (runs: openbits "
                      f"{', '.join(f'{t:.2f}' for t in ours)}; curl {', '.join(f'{t:.2f}' for t in curl)} s)",
                      flush=True)
                if plain:
                    print(f"upload {mib:.0f} MiB (object storage): boto3 in one PUT straight into the store "
                          f"{min(plain):.2f} s ({mib / min(plain):.0f} MiB/s), openbits through a node "
                          f"{min(ours) / min(plain):.2f}x its time, of the medians "
                          f"{statistics.median(ours) / statistics.median(plain):.2f}x "
                          f"(runs: {', '.join(f'{t:.2f}' for t in plain)} s)",
                          flush=True)
            for count, ok, seconds in asyncio.run(sessions(work, args.sessions if "sessions" in args.parts else [])):
                print(f"concurrent sessions: {ok}/{count} succeeded in {seconds:.1f} s "
                      f"({'sustained' if ok == count else 'NOT sustained'})", flush=True)
            for count, ok, rss in node_memory(work, swift, args.memory_sessions if "memory" in args.parts else []):
                print(f"node memory: {count} sessions at once ({MEMORY_BYTES >> 20} MiB each in "
                      f"{MEMORY_FRAGMENT >> 20} MiB fragments), {ok} succeeded: peak RSS {rss:.0f} MiB "
                      f"({rss / count:.1f} MiB a session)", flush=True)
            if "farm" in args.parts:
                farm_figures(work, swift, args.farm_files, args.farm_mib << 20)


if __name__ == "__main__":
    main()
