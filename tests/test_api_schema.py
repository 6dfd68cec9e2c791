"""The API against its own OpenAPI document (schemathesis) and the error contract of bad requests.

The daemon under schemathesis runs in a network namespace of its own with only
loopback, so URLs the fuzzer invents can never send a packet anywhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbits.locations import answers

from .daemon import DaemonProcess

pytestmark = pytest.mark.slow


class UnixForwarder:
    """127.0.0.1:port -> Unix socket, so HTTP tools without Unix-socket support can reach the API."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.port = 0
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                pass
            finally:
                writer.close()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_unix_connection(str(self.socket_path))
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        async def main() -> None:
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            await server.serve_forever()

        self._loop.run_until_complete(main())


@pytest.fixture
def isolated_daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a network namespace with loopback only")
    daemon = DaemonProcess(tmp_path / "d", {"max_jobs_per_user": 100000})
    command = ["unshare", "--net", "--", "sh", "-c",
               'ip link set lo up && exec "$@"', "sh", sys.executable, "-m", "openbits.daemon", "--user",
               "--socket", str(daemon.socket), "--state-dir", str(daemon.state_dir), "--config",
               str(daemon.config_path)]
    with open(daemon.log_path, "ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=log)
    deadline = time.monotonic() + 15
    while not answers(daemon.socket):
        assert proc.poll() is None and time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)
    try:
        yield daemon
    finally:
        proc.terminate()
        proc.wait(20)


def test_schemathesis_finds_no_server_error_and_no_schema_violation(isolated_daemon: DaemonProcess,
                                                                     tmp_path: Path) -> None:
    forwarder = UnixForwarder(isolated_daemon.socket)
    schemathesis = Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [str(schemathesis), "run", f"http://127.0.0.1:{forwarder.port}/v1/openapi.json",
         "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance,"
                     "content_type_conformance,response_headers_conformance",
         "--max-examples", "30", "--generation-deterministic", "--request-timeout", "40",
         # GET /v1/events streams until the client leaves; tests/test_events.py covers it and its error contract
         "--exclude-path", "/v1/events",
         "--phases", "examples,coverage,fuzzing,stateful"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:] + isolated_daemon.log()[-3000:]
    assert "500" not in isolated_daemon.log()


def test_openapi_document_is_served(manager) -> None:  # type: ignore[no-untyped-def]
    raw = subprocess.run(["curl", "-s", "--unix-socket", str(manager.socket_path), "http://openbits/v1/openapi.json"],
                         capture_output=True, text=True, timeout=30).stdout
    document = json.loads(raw)
    assert document["openapi"].startswith("3.")
    assert "/v1/jobs/{job}/resume" in document["paths"]
