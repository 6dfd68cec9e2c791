"""Loss of the network is not an error (users-and-network-connections.md).

The daemon runs in a network namespace of its own (addresses from 192.0.2.0/24,
the documentation range): first with loopback only, so every connection fails
with "network unreachable"; then a route appears and the job goes on at once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbits import JobState, JobType

from .daemon import DaemonProcess
from .waiting import wait_state

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2 for a network namespace")


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"obt-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_job_waits_for_the_network_then_continues(namespace: str, tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "f.bin").write_bytes(os.urandom(50_000))
    daemon = DaemonProcess(tmp_path / "d", wrap=["ip", "netns", "exec", namespace]).start()
    server = None
    try:
        with daemon.manager() as manager:
            job = manager.create_job("offline", JobType.DOWNLOAD)
            job.add_file("http://192.0.2.1:8080/f.bin", tmp_path / "f.bin")
            job.set_properties(no_progress_timeout=1, minimum_retry_delay=600)
            job.resume()
            wait_state(job, JobState.TRANSIENT_ERROR)
            error = job.error
            assert error is not None and error.name == "BG_E_NETWORK_DISCONNECTED"
            time.sleep(2.5)
            assert job.state == JobState.TRANSIENT_ERROR, "no network is not a lack of progress"

            for command in (["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
                            ["addr", "add", "192.0.2.1/24", "dev", "v0"],
                            ["link", "set", "v1", "up"], ["link", "set", "v0", "up"]):
                subprocess.run(["ip", "-n", namespace, *command], check=True)
            server = subprocess.Popen(["ip", "netns", "exec", namespace, sys.executable, "-m", "http.server",
                                       "--bind", "192.0.2.1", "--directory", str(www), "8080"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # The minimum retry delay is 600 s: only the network coming back can start it again this soon.
            assert job.wait(30) == JobState.TRANSFERRED, job.error
            job.complete()
        assert (tmp_path / "f.bin").read_bytes() == (www / "f.bin").read_bytes()
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        daemon.stop()
