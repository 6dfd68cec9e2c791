"""`make run`: one download through the daemon, the way a user would do it.

Serves a sample file from a local HTTP server, then runs
`openbits transfer URL PATH`, which finds (or starts on demand) the daemon,
creates a job, shows a live progress bar, completes the job and exits.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from aiohttp import web

DEMO_DIR = Path(os.environ.get("OPENBITS_DEMO_DIR", "/tmp/openbits-demo"))
SIZE = 96 * 1024 * 1024
#: paced so the progress bar is visible for a few seconds
RATE = 32 * 1024 * 1024


def make_sample(path: Path) -> str:
    if not path.exists() or path.stat().st_size != SIZE:
        block = hashlib.sha256(b"openbits").digest() * (1024 * 1024 // 32)
        with open(path, "wb") as fh:
            for _ in range(SIZE // len(block)):
                fh.write(block)
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def paced_file(request: web.Request) -> web.StreamResponse:
    """A static file with Range support, sent at RATE bytes/s."""
    data = request.app["data"]
    start = request.http_range.start or 0
    response = web.StreamResponse(status=206 if start else 200)
    response.content_length = len(data) - start
    response.headers["ETag"] = '"demo-1"'
    response.headers["Accept-Ranges"] = "bytes"
    if start:
        response.headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
    await response.prepare(request)
    step = RATE // 20
    for offset in range(start, len(data), step):
        await response.write(data[offset:offset + step])
        await asyncio.sleep(0.05)
    return response


def serve(data: bytes) -> tuple[str, threading.Event]:
    started = threading.Event()
    url: list[str] = []

    def run() -> None:
        async def main() -> None:
            app = web.Application()
            app["data"] = data
            app.router.add_get("/sample.bin", paced_file)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            url.append(f"http://127.0.0.1:{port}/sample.bin")
            started.set()
            await asyncio.Event().wait()

        asyncio.run(main())

    threading.Thread(target=run, daemon=True).start()
    started.wait(10)
    return url[0], started


def main() -> int:
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    sample = DEMO_DIR / "sample.bin"
    print(f"openbits demo: serving a {SIZE // 2**20} MiB sample file from a local server")
    digest = make_sample(sample)
    url, _ = serve(sample.read_bytes())
    downloads = DEMO_DIR / "downloads"
    shutil.rmtree(downloads, ignore_errors=True)
    downloads.mkdir()
    dest = downloads / "sample.bin"
    cli = [sys.executable, "-m", "openbits.cli"]
    print(f"$ openbits transfer {url} {dest}")
    code = subprocess.call([*cli, "transfer", url, str(dest)])
    if code != 0:
        print(f"openbits demo: the transfer failed (exit {code})", file=sys.stderr)
        return code
    ok = hashlib.sha256(dest.read_bytes()).hexdigest() == digest
    print(f"openbits demo: the file is at {dest} ({dest.stat().st_size} bytes, sha256 {'matches' if ok else 'DIFFERS'})")
    subprocess.call([*cli, "status"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
