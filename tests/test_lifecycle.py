"""The BITS job life cycle, end to end through a real daemon (life-cycle-of-a-bits-job.md)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from openbits import BitsError, ErrorContext, JobPriority, JobState, JobType, Manager

from .daemon import DaemonProcess
from .test_security import CLI
from .users import make_user, require_root  # noqa: F401 (a fixture)
from .waiting import wait_until


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def www(nginx) -> Path:  # type: ignore[no-untyped-def]
    root = Path(nginx.root)
    for name, size in (("small.bin", 100_000), ("medium.bin", 3_000_000)):
        if not (root / name).exists():
            (root / name).write_bytes(os.urandom(size))
    return root


def test_new_job_is_suspended_and_empty_resume_is_refused(manager: Manager) -> None:
    job = manager.create_job("empty", JobType.DOWNLOAD)
    assert job.state == JobState.SUSPENDED
    with pytest.raises(BitsError) as refused:
        job.resume()
    assert refused.value.name == "BG_E_EMPTY"
    assert job.state == JobState.SUSPENDED


def test_download_lands_only_at_complete(manager: Manager, nginx, www: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dest = tmp_path / "out" / "small.bin"
    dest.parent.mkdir()
    job = manager.create_job("one file", JobType.DOWNLOAD)
    job.add_file(nginx.url("small.bin"), dest)
    job.resume()
    assert job.wait(30) == JobState.TRANSFERRED
    assert not dest.exists(), "nothing may sit under the final name before Complete"
    temp = Path(job.files[0].temp_path)
    assert temp.parent == dest.parent and temp.name.startswith(".")
    assert sha256(temp) == sha256(www / "small.bin")
    progress = job.progress
    assert (progress.bytes_total, progress.bytes_transferred) == (100_000, 100_000)
    assert (progress.files_total, progress.files_transferred) == (1, 1)
    assert job.complete().complete_result == "S_OK"
    assert job.state == JobState.ACKNOWLEDGED
    assert sha256(dest) == sha256(www / "small.bin")
    assert not temp.exists()
    assert sorted(os.listdir(dest.parent)) == ["small.bin"]


def test_final_states_refuse_every_call(manager: Manager, nginx, www: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job = manager.create_job("final", JobType.DOWNLOAD)
    job.add_file(nginx.url("small.bin"), tmp_path / "a.bin")
    job.cancel()
    assert job.state == JobState.CANCELLED
    calls = [job.resume, job.suspend, job.cancel, job.complete,
             lambda: job.add_file(nginx.url("small.bin"), tmp_path / "b.bin"),
             lambda: job.set_properties(priority=JobPriority.HIGH)]
    for call in calls:
        with pytest.raises(BitsError) as refused:
            call()
        assert refused.value.name == "BG_E_INVALID_STATE"
    assert job.id not in {j.id for j in manager.jobs()}, "final jobs leave the enumeration"


def test_complete_early_keeps_the_whole_files_and_deletes_the_rest(manager: Manager, nginx, www: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job = manager.create_job("early", JobType.DOWNLOAD)
    job.add_files([(nginx.url("small.bin"), tmp_path / "a.bin"), (nginx.url("medium.bin"), tmp_path / "b.bin")])
    job.set_properties(max_bandwidth=200_000)  # keeps the second file partial for a while
    job.resume()
    while not job.files[0].completed:
        job.wait_info(1)
    info = job.complete()  # TRANSFERRING: IBackgroundCopyJob::Complete may be called at any time
    assert (info.state, info.complete_result) == (JobState.ACKNOWLEDGED, "BG_S_PARTIAL_COMPLETE")
    assert os.listdir(tmp_path) == ["a.bin"] and sha256(tmp_path / "a.bin") == sha256(www / "small.bin")
    suspended = manager.create_job("suspended", JobType.DOWNLOAD)
    suspended.add_file(nginx.url("small.bin"), tmp_path / "c.bin")
    assert suspended.complete().complete_result == "BG_S_PARTIAL_COMPLETE" and os.listdir(tmp_path) == ["a.bin"]


def test_cancel_removes_every_file(manager: Manager, nginx, www: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job = manager.create_job("cancel me", JobType.DOWNLOAD)
    job.add_files([(nginx.url("small.bin"), tmp_path / "a.bin"), (nginx.url("medium.bin"), tmp_path / "b.bin")])
    job.set_properties(max_bandwidth=1_000_000)  # keeps the second file partial for a while
    job.resume()
    job.wait(0.5)
    job.cancel()
    assert job.state == JobState.CANCELLED
    assert os.listdir(tmp_path) == [], "finished and partial temporary files are all removed"


def test_complete_on_error_keeps_finished_files(manager: Manager, nginx, www: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job = manager.create_job("partial", JobType.DOWNLOAD)
    job.add_files([(nginx.url("small.bin"), tmp_path / "good.bin"), (nginx.url("missing.bin"), tmp_path / "bad.bin")])
    job.resume()
    assert job.wait(30) == JobState.ERROR
    error = job.error
    assert error is not None
    assert (error.name, error.context, error.http_status) == ("BG_E_HTTP_ERROR_404", ErrorContext.REMOTE_FILE, 404)
    assert "missing.bin" in error.description
    assert error.file is not None and (error.file.index, error.protocol) == (1, "http")  # GetFile, GetProtocol
    assert (error.file.remote_url, error.file.local_path) == (nginx.url("missing.bin"), str(tmp_path / "bad.bin"))
    assert job.complete().complete_result == "BG_S_PARTIAL_COMPLETE"
    assert sorted(os.listdir(tmp_path)) == ["good.bin"]


def test_resume_on_error_tries_again(manager: Manager, nginx, www: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job = manager.create_job("retry by hand", JobType.DOWNLOAD)
    job.add_file(nginx.url("later.bin"), tmp_path / "later.bin")
    job.resume()
    assert job.wait(30) == JobState.ERROR
    (www / "later.bin").write_bytes(b"now here")
    job.resume()
    assert job.wait(30) == JobState.TRANSFERRED
    assert job.error is None
    job.complete()
    assert (tmp_path / "later.bin").read_bytes() == b"now here"


def test_files_go_in_order_and_progress_per_file(manager: Manager, nginx, www: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job = manager.create_job("set", JobType.DOWNLOAD)
    job.add_files([(nginx.url("medium.bin"), tmp_path / f"{i}.bin") for i in range(3)])
    job.set_properties(max_bandwidth=4_000_000)
    job.resume()
    seen_partial = False
    while job.state not in (JobState.TRANSFERRED, JobState.ERROR):
        files = job.files
        done = [f.completed for f in files]
        assert done == sorted(done, reverse=True), f"files complete in order, got {done}"
        seen_partial |= any(0 < f.progress.bytes_transferred < f.progress.bytes_total for f in files)
        job.wait(0.2)
    assert job.state == JobState.TRANSFERRED
    assert seen_partial
    assert [f.progress.bytes_total for f in job.files] == [3_000_000] * 3
    job.complete()


def test_file_url_source(manager: Manager, tmp_path: Path) -> None:
    source = tmp_path / "source.txt"
    source.write_bytes(b"local bytes\n" * 1000)
    job = manager.create_job("local", JobType.DOWNLOAD)
    job.add_file(source.as_uri(), tmp_path / "copy.txt")
    job.resume()
    assert job.wait(30) == JobState.TRANSFERRED
    job.complete()
    assert (tmp_path / "copy.txt").read_bytes() == source.read_bytes()


def test_add_file_refuses_bad_names(manager: Manager, tmp_path: Path) -> None:
    job = manager.create_job("bad names", JobType.DOWNLOAD)
    cases = {
        ("ftp://example.org/x", tmp_path / "x"): "BG_E_PROTOCOL_NOT_AVAILABLE",
        ("gopher://example.org/x", tmp_path / "x"): "BG_E_PROTOCOL_NOT_AVAILABLE",
        ("http://127.0.0.1/x", tmp_path / "no-such-dir" / "x"): "ERROR_PATH_NOT_FOUND",
    }
    for (url, path), name in cases.items():
        with pytest.raises(BitsError) as refused:
            job.add_file(url, path)
        assert refused.value.name == name, (url, path)
        assert refused.value.description
    assert job.files == []


def test_limits_bind_users_not_administrators(tmp_path: Path, nginx, make_user) -> None:  # type: ignore[no-untyped-def]
    """MaxJobsPerUser, MaxJobsPerMachine and MaxFilesPerJob bind a regular user; root, an administrator, is
    free of them, as BITS's administrators are; a reload changes them without a restart."""
    require_root()
    base = Path(tempfile.mkdtemp(prefix="obt_limits_", dir="/var/tmp"))
    base.chmod(0o755)
    alice = make_user("alice")
    daemon = DaemonProcess(base / "d", {"max_jobs_per_user": 2, "max_jobs_per_machine": 3, "max_files_per_job": 3},
                           system=True).start()

    def as_alice(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(["/usr/sbin/runuser", "-u", alice.name, "--", str(CLI), "--socket", str(daemon.socket),
                               "--no-autostart", *args], input=stdin, capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "HOME": str(alice.home)})

    try:
        first = as_alice("create", "a")
        assert first.returncode == 0, first.stderr
        job = first.stdout.strip()
        files = "".join(f"{nginx.url('x')} {alice.home / str(i)}\n" for i in range(4))
        refused = as_alice("addfileset", job, "-", stdin=files)
        assert refused.returncode == 1 and "BG_E_TOO_MANY_FILES_IN_JOB" in refused.stderr
        assert as_alice("create", "b").returncode == 0
        refused = as_alice("create", "c")
        assert refused.returncode == 1 and "BG_E_TOO_MANY_JOBS_PER_USER" in refused.stderr, refused.stderr
        with daemon.manager() as manager:  # root: an administrator, free of the limits
            mine = [manager.create_job(f"root {i}", JobType.DOWNLOAD) for i in range(3)]
            mine[0].add_files([(nginx.url("x"), tmp_path / str(i)) for i in range(4)])
            daemon.reload({"max_jobs_per_user": 5, "max_jobs_per_machine": 5})
            refused = wait_until(lambda: (r := as_alice("create", "c")).returncode == 1
                                 and "BG_E_TOO_MANY_JOBS_PER_MACHINE" in r.stderr and r, 30,
                                 "the reloaded limits (5 jobs on the machine, which has 5)")
            assert "the limit (max_jobs_per_machine) is 5" in refused.stderr
            mine[0].cancel()
            assert as_alice("create", "c").returncode == 0  # a cancelled job no longer counts
    finally:
        daemon.stop()
        shutil.rmtree(base)


def test_lookup_by_display_name(manager: Manager) -> None:
    job = manager.create_job("unique-name", JobType.DOWNLOAD)
    assert manager.get_job("unique-name").id == job.id
    assert manager.get_job("{" + job.id.lower() + "}").id == job.id
    manager.create_job("twin", JobType.DOWNLOAD)
    manager.create_job("twin", JobType.DOWNLOAD)
    with pytest.raises(BitsError) as refused:
        manager.get_job("twin")
    assert refused.value.name == "E_INVALIDARG" and "GUID" in refused.value.description
    with pytest.raises(BitsError) as refused:
        manager.get_job("nobody")
    assert refused.value.name == "BG_E_NOT_FOUND"


def test_properties_round_trip(manager: Manager) -> None:
    job = manager.create_job("props", JobType.DOWNLOAD)
    assert (job.minimum_retry_delay, job.no_progress_timeout) == (600, 14 * 24 * 3600)
    job.priority = JobPriority.HIGH
    job.minimum_retry_delay = 5
    job.no_progress_timeout = 60
    job.max_download_time = 3600
    job.custom_headers = ["X-Test: 1", "X-Other: two"]
    job.dynamic_content = True
    job.description = "described"
    info = manager.get_job(job.id).info()
    assert (info.priority, info.minimum_retry_delay, info.no_progress_timeout, info.max_download_time) == (
        JobPriority.HIGH, 5, 60, 3600)
    assert info.custom_headers == ["X-Test: 1", "X-Other: two"]
    assert info.dynamic_content and info.description == "described"
    with pytest.raises(BitsError) as refused:
        job.custom_headers = ["no colon here"]
    assert refused.value.name == "E_INVALIDARG"


def test_acknowledged_change_survives_kill_9(daemon: DaemonProcess, nginx, www: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with daemon.manager() as manager:
        job = manager.create_job("durable", JobType.DOWNLOAD)
        job.add_file(nginx.url("small.bin"), tmp_path / "d.bin")
        job.priority = JobPriority.LOW
        job_id = job.id
    daemon.kill9()
    daemon.start()
    with daemon.manager() as manager:
        info = manager.get_job(job_id).info()
        assert info.name == "durable" and info.priority == JobPriority.LOW
        assert [f.local_path for f in info.files] == [str(tmp_path / "d.bin")]
        assert info.state == JobState.SUSPENDED


def test_sigterm_is_a_clean_shutdown_mid_transfer(daemon: DaemonProcess, nginx, www: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with daemon.manager() as manager:
        job = manager.create_job("interrupted", JobType.DOWNLOAD)
        job.add_file(nginx.url("medium.bin"), tmp_path / "m.bin")
        job.set_properties(max_bandwidth=500_000)
        job.resume()
        wait_until(lambda: job.progress.bytes_transferred > 0, 30, "the first bytes")
        job_id = job.id
    assert daemon.stop() == 0
    assert not daemon.socket.exists()
    daemon.start()
    with daemon.manager() as manager:
        job = manager.get_job(job_id)
        job.set_properties(max_bandwidth=0)
        assert job.wait(30) == JobState.TRANSFERRED
        job.complete()
    assert sha256(tmp_path / "m.bin") == sha256(www / "medium.bin")
