"""Upload benchmark: a 1 GiB upload job through openbitsd vs `curl -T`, and concurrent sessions of openbits-server.

    .venv/bin/python bench/upload.py                  # 1 GiB, sessions 100/1000/4000
    .venv/bin/python bench/upload.py --size-mib 64 --sessions 100

curl cannot speak BITS, so its side is `curl -T FILE` (one PUT) to a plain
aiohttp PUT endpoint in this file that writes the body and fsyncs it once at
the end - the least a server must do to keep an upload. openbits goes
through the daemon (FOREGROUND job) to `openbits-server` (BITS fragments,
fsync every 16 MiB, Close-Session commit). Both run on loopback, on this
machine; each runs 3 times (--runs), interleaved, and the best counts; the ratio is
openbits time / curl time.

Sessions: N clients at once each Create-Session, send four 64 KiB fragments
and Close-Session against one openbits-server process; a round is sustained
when every session succeeds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from openbits import Manager  # noqa: E402
from openbits.enums import JobPriority, JobState, JobType  # noqa: E402
from openbits.uploadprotocol import PROTOCOL_BITS_1_5, Header, format_content_range  # noqa: E402
from tests.daemon import DaemonProcess  # noqa: E402

FRAGMENT = 64 * 1024


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


def one_gib(work: Path, size: int, runs: int) -> tuple[list[float], list[float]]:
    """Seconds per run for openbits (daemon -> openbits-server) and for curl -T (-> plain PUT), same file,
    interleaved; each run starts after a sync, so none pays for the writeback of the one before."""
    source = work / "source.bin"
    with source.open("wb") as f:
        for _ in range(size // (16 << 20)):
            f.write(os.urandom(16 << 20))
    (work / "bits").mkdir()
    (work / "put").mkdir()
    server, bits_port = _spawn([sys.executable, "-m", "openbits.server", "--root", str(work / "bits"),
                                "--listen", "127.0.0.1:0", "--log-level", "WARNING"])
    put, put_port = _spawn([sys.executable, __file__, "--put-server", str(work / "put")])
    daemon = DaemonProcess(work / "daemon").start()
    ours: list[float] = []
    curl: list[float] = []
    try:
        with daemon.manager() as manager:
            for attempt in range(runs):
                name = f"f{attempt}.bin"
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
                for landed in (work / "bits" / name, work / "put" / name):
                    assert landed.stat().st_size == size
                    landed.unlink()
        return ours, curl
    finally:
        daemon.stop()
        for proc in (server, put):
            proc.terminate()
            proc.wait()


async def _session(http: aiohttp.ClientSession, url: str, data: bytes) -> bool:
    async def send(packet: str, headers: dict[str, str], body: bytes | None = None) -> aiohttp.ClientResponse:
        async with http.request("BITS_POST", url, headers={Header.PACKET_TYPE: packet, **headers}, data=body) as r:
            await r.read()
            return r

    try:
        created = await send("Create-Session", {Header.SUPPORTED_PROTOCOLS: PROTOCOL_BITS_1_5})
        sid = created.headers[Header.SESSION_ID]
        for first in range(0, len(data), FRAGMENT):
            piece = data[first : first + FRAGMENT]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs of the upload; the best counts")
    parser.add_argument("--sessions", type=int, nargs="+", default=[100, 1000, 4000])
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
        ours, curl = one_gib(work, size, args.runs)
        mib = size / (1 << 20)
        print(f"upload {mib:.0f} MiB, best of {args.runs}: openbits {min(ours):.2f} s ({mib / min(ours):.0f} MiB/s), "
              f"curl -T to a plain PUT {min(curl):.2f} s ({mib / min(curl):.0f} MiB/s), "
              f"time ratio {min(ours) / min(curl):.2f}x (runs: openbits {', '.join(f'{t:.2f}' for t in ours)}; "
              f"curl {', '.join(f'{t:.2f}' for t in curl)} s)")
        for count, ok, seconds in asyncio.run(sessions(work, args.sessions)):
            print(f"concurrent sessions: {ok}/{count} succeeded in {seconds:.1f} s "
                  f"({'sustained' if ok == count else 'NOT sustained'})")


if __name__ == "__main__":
    main()
