"""The client library (sync facade and asyncio API) against a real daemon and a real HTTP server."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from openbits import AsyncManager, BitsError, DaemonUnavailableError, File, JobPriority, JobState, JobType, Manager
from openbits import Progress

from .daemon import DaemonProcess
from .servers.nginx import NginxServer

PAYLOAD_SIZE = 300_000


class Web:
    """The session's nginx with two fresh random files for this test."""

    def __init__(self, nginx: NginxServer) -> None:
        self.root = nginx.root
        self.names = {name: f"{uuid.uuid4().hex}-{name}" for name in ("payload.bin", "second.bin")}
        for served in self.names.values():
            (self.root / served).write_bytes(os.urandom(PAYLOAD_SIZE))
        self._nginx = nginx

    def url(self, name: str) -> str:
        return self._nginx.url(self.names[name])

    def content(self, name: str) -> bytes:
        return (self.root / self.names[name]).read_bytes()


@pytest.fixture
def web(nginx: NginxServer) -> Web:
    return Web(nginx)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_sync_download_end_to_end(manager: Manager, web: Web, tmp_path: Path) -> None:
    job = manager.create_job(unique("e2e"), JobType.DOWNLOAD)
    assert job.state is JobState.SUSPENDED
    assert job.type is JobType.DOWNLOAD
    target = tmp_path / "out.bin"
    job.add_file(web.url("payload.bin"), target)
    job.resume()
    assert job.wait(30) is JobState.TRANSFERRED
    assert job.progress == Progress(PAYLOAD_SIZE, PAYLOAD_SIZE, 1, 1)
    [file] = job.files
    assert isinstance(file, File)
    assert (file.remote_url, file.local_path, file.completed) == (web.url("payload.bin"), str(target), True)
    assert file.progress.bytes_transferred == PAYLOAD_SIZE
    assert job.error is None
    assert job.complete().state is JobState.ACKNOWLEDGED
    assert target.read_bytes() == web.content("payload.bin")


async def test_async_download_and_properties(daemon: DaemonProcess, web: Web, tmp_path: Path) -> None:
    async with AsyncManager(daemon.socket, autostart=False) as manager:
        job = await manager.create_job(unique("async"), priority=JobPriority.HIGH, description="two files")
        await job.add_files([(web.url("payload.bin"), tmp_path / "a.bin"), (web.url("second.bin"), tmp_path / "b.bin")])
        info = await job.set_properties(priority=JobPriority.FOREGROUND, minimum_retry_delay=60)
        assert (info.priority, info.minimum_retry_delay, info.description) == (JobPriority.FOREGROUND, 60, "two files")
        await job.resume()
        assert await job.wait(30) is JobState.TRANSFERRED
        assert await job.progress() == Progress(2 * PAYLOAD_SIZE, 2 * PAYLOAD_SIZE, 2, 2)
        assert [f.local_path for f in await job.files()] == [str(tmp_path / "a.bin"), str(tmp_path / "b.bin")]
        assert (await job.complete()).state is JobState.ACKNOWLEDGED
    assert (tmp_path / "b.bin").read_bytes() == web.content("second.bin")


def test_properties_round_trip(manager: Manager) -> None:
    job = manager.create_job(unique("props"))
    try:
        job.priority = JobPriority.LOW
        job.name = "renamed " + job.id
        job.description = "what it is for"
        job.minimum_retry_delay = 120
        job.no_progress_timeout = 600
        job.max_download_time = 3600
        job.custom_headers = ["X-One: 1", "X-Two: 2"]
        job.dynamic_content = True
        assert job.priority is JobPriority.LOW
        assert job.name == "renamed " + job.id
        assert job.description == "what it is for"
        assert (job.minimum_retry_delay, job.no_progress_timeout, job.max_download_time) == (120, 600, 3600)
        assert job.custom_headers == ["X-One: 1", "X-Two: 2"]
        assert job.dynamic_content is True
        job.custom_headers = []
        assert job.custom_headers == []
        assert job.info().owner_uid == os.getuid()
        assert job.owner
    finally:
        job.cancel()


def test_relative_local_path_is_made_absolute(manager: Manager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    job = manager.create_job(unique("relative"))
    job.add_file("http://127.0.0.1:9/x.bin", "sub/../x.bin")
    assert [f.local_path for f in job.files] == [str(tmp_path / "x.bin")]
    job.cancel()


def test_refusals_raise_bits_errors(manager: Manager) -> None:
    job = manager.create_job(unique("errors"))
    with pytest.raises(BitsError) as empty:
        job.resume()
    assert empty.value.name == "BG_E_EMPTY"
    job.cancel()
    with pytest.raises(BitsError) as cancelled:
        job.resume()
    assert cancelled.value.name in ("BG_E_INVALID_STATE", "BG_E_NOT_FOUND")
    with pytest.raises(BitsError) as missing:
        manager.get_job("{00000000-0000-0000-0000-000000000000}")
    assert missing.value.name == "BG_E_NOT_FOUND"


def test_invalid_values_are_refused_before_sending(manager: Manager) -> None:
    job = manager.create_job(unique("invalid"))
    try:
        with pytest.raises(BitsError) as bad:
            job.priority = "URGENT"  # type: ignore[assignment]
        assert bad.value.name == "E_INVALIDARG"
        with pytest.raises(BitsError):
            job.set_properties(colour="blue")
    finally:
        job.cancel()


def test_lookup_by_guid_and_name(manager: Manager) -> None:
    name = unique("named")
    job = manager.create_job(name)
    try:
        assert manager.get_job(name).id == job.id
        assert manager.get_job(job.id.strip("{}").lower()).id == job.id
        assert job.id in [j.id for j in manager.jobs()]
        twin = manager.create_job(name)
        with pytest.raises(BitsError) as ambiguous:
            manager.get_job(name)
        assert ambiguous.value.name == "E_INVALIDARG"
        twin.cancel()
    finally:
        job.cancel()


def test_wait_returns_at_once_for_a_suspended_job(manager: Manager) -> None:
    job = manager.create_job(unique("wait"))
    started = time.monotonic()
    assert job.wait(20) is JobState.SUSPENDED
    assert time.monotonic() - started < 5
    job.cancel()


def test_unreachable_daemon(tmp_path: Path) -> None:
    manager = Manager(tmp_path / "nobody.sock", autostart=False)
    with pytest.raises(DaemonUnavailableError):
        manager.jobs()
    manager.close()
    with pytest.raises(DaemonUnavailableError), Manager(tmp_path / "nobody.sock", autostart=False):
        pass


def _reap(pid: int) -> None:
    """Stop a daemon this process started, and wait for it to exit."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:  # already reaped by subprocess' own cleanup
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def test_autostart_starts_a_user_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("OPENBITS_SOCKET", raising=False)
    with Manager() as manager:
        status = manager.status()
        try:
            assert manager.socket_path == runtime / "openbits.sock"
            assert status.mode == "user" and status.on_demand and status.uid == os.geteuid()
            assert manager.create_job(unique("auto")).state is JobState.SUSPENDED
        finally:
            _reap(status.pid)
    assert (tmp_path / "state" / "openbits" / "openbitsd.log").exists()
