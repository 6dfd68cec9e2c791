"""Resume after anything: kill -9 of the daemon mid-transfer, then a restart (file-transfer-consistency.md)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from openbits import JobState, JobType

from .daemon import DaemonProcess
from .servers.faulty import FaultyServer, sha256
from .test_retry import requests_for, sha256_file, unique
from .waiting import wait_until

pytestmark = pytest.mark.slow

SIZE = 200 * 1024 * 1024


def wait_bytes(daemon: DaemonProcess, job_id: str, at_least: int) -> int:
    with daemon.manager() as manager:
        job = manager.get_job(job_id)

        def enough() -> int:
            """The bytes done once they reach at_least (0 before); the job must not end before that."""
            if (done := job.progress.bytes_transferred) >= at_least:
                return done
            assert job.state not in (JobState.ERROR, JobState.TRANSFERRED), job.state
            return 0

        return wait_until(enough, 60, lambda: f"only {job.progress.bytes_transferred} bytes after 60 s",
                          interval=0.02)


@pytest.mark.parametrize("cut", [0.3, 0.7])
def test_kill_9_mid_transfer_resumes_from_durable_offset(daemon: DaemonProcess, faulty: FaultyServer,
                                                         tmp_path: Path, cut: float) -> None:
    path = unique(f"big.bin?size={SIZE // 2**20}m")
    dest = tmp_path / "big.bin"
    with daemon.manager() as manager:
        job = manager.create_job("crash", JobType.DOWNLOAD)
        job.add_file(faulty.url(path), dest)
        job.set_properties(max_bandwidth=60_000_000)  # slow enough to be caught mid-way
        job.resume()
        job_id = job.id
    wait_bytes(daemon, job_id, int(SIZE * cut))
    daemon.kill9()
    daemon.start()
    with daemon.manager() as manager:
        job = manager.get_job(job_id)
        job.set_properties(max_bandwidth=0)
        assert job.wait(120) == JobState.TRANSFERRED, job.error
        resumed = requests_for(faulty, path)[-1]
        assert resumed.range is not None and resumed.if_range
        total_sent = sum(r.bytes_sent for r in requests_for(faulty, path))
        # Bytes sent twice: everything beyond the file's size went over the wire again.
        assert total_sent - SIZE <= max(SIZE // 100, 16 * 2**20), f"re-downloaded {total_sent - SIZE} bytes"
        assert not dest.exists()
        job.complete()
    assert sha256_file(dest) == sha256(path)


def test_remote_change_while_daemon_is_down_restarts_the_file(daemon: DaemonProcess, faulty: FaultyServer,
                                                              tmp_path: Path) -> None:
    path = unique("v.bin?size=64m&changing=1&fail=1")
    dest = tmp_path / "v.bin"
    with daemon.manager() as manager:
        job = manager.create_job("changed", JobType.DOWNLOAD)
        job.add_file(faulty.url(path), dest)
        job.set_properties(max_bandwidth=20_000_000)
        job.resume()
        job_id = job.id
    wait_bytes(daemon, job_id, 20 * 2**20)
    daemon.kill9()
    daemon.start()
    with daemon.manager() as manager:
        job = manager.get_job(job_id)
        job.set_properties(max_bandwidth=0)
        assert job.wait(60) == JobState.TRANSFERRED
        assert requests_for(faulty, path)[-1].status == 200
        job.complete()
    assert sha256_file(dest) == sha256(path)


def test_every_job_continues_after_a_crash(daemon: DaemonProcess, faulty: FaultyServer, tmp_path: Path) -> None:
    paths = [unique(f"m{i}.bin?size=16m") for i in range(4)]
    with daemon.manager() as manager:
        ids = []
        for i, path in enumerate(paths):
            job = manager.create_job(f"job {i}", JobType.DOWNLOAD)
            job.add_file(faulty.url(path), tmp_path / f"m{i}.bin")
            job.set_properties(max_bandwidth=8_000_000)
            job.resume()
            ids.append(job.id)
    time.sleep(1)
    daemon.kill9()
    daemon.start()
    with daemon.manager() as manager:
        for i, job_id in enumerate(ids):
            job = manager.get_job(job_id)
            job.set_properties(max_bandwidth=0)
        for i, job_id in enumerate(ids):
            job = manager.get_job(job_id)
            assert job.wait(60) == JobState.TRANSFERRED
            job.complete()
            assert sha256_file(tmp_path / f"m{i}.bin") == sha256(paths[i])
