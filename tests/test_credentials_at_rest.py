"""SetCredentials for the life of the job (issue 21): sealed with the job, never in clear on disk.

A download behind nginx's `auth_basic` (the password file holds only a {SHA} hash) is the job;
the daemon is killed with -9 and restarted and the job still completes with its credentials.
Where systemd-creds is there (root), the data key is sealed with a host key of the test's own
(SYSTEMD_CREDENTIAL_SECRET), so "another machine" is a copy of the state directory started with
another host key. The key-file way (no systemd-creds, or not root) is checked on identity/sealing.py.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbits import JobState
from openbits.enums import AuthScheme, AuthTarget
from openbits.identity import sealing

from .daemon import DaemonProcess
from .servers import nginx

USER, PASSWORD = "carol", secrets.token_urlsafe(18)
needs_creds = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("systemd-creds") is None,
                                 reason="systemd-creds seals as root (Debian's systemd package)")
needs_nginx = pytest.mark.skipif(not nginx.available(), reason="nginx is not installed (make test installs it)")


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[nginx.NginxServer]:
    """nginx serving /private/ only to carol, her password kept as a {SHA} hash."""
    www = tmp_path_factory.mktemp("www")
    (www / "private").mkdir()
    (www / "private" / "data.bin").write_bytes(os.urandom(300_000))
    users = tmp_path_factory.mktemp("auth") / "htpasswd"
    users.write_text(f"{USER}:{{SHA}}{base64.b64encode(hashlib.sha1(PASSWORD.encode()).digest()).decode()}\n")
    location = f'location /private/ {{ auth_basic "private"; auth_basic_user_file {users}; }}\n'
    with nginx.NginxServer(www, locations=location) as server:
        yield server


@pytest.fixture
def host_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This "machine's" systemd-creds host key: a file of the test's, made by systemd-creds on first use."""
    path = tmp_path / "host-a.secret"
    monkeypatch.setenv("SYSTEMD_CREDENTIAL_SECRET", str(path))
    return path


def no_secret_under(*roots: Path) -> None:
    """Neither the password nor the Basic header it makes is in any file there."""
    needles = (PASSWORD.encode(), base64.b64encode(f"{USER}:{PASSWORD}".encode()))
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert not any(needle in data for needle in needles), f"the password is readable in {path}"


def job_with_credentials(daemon: DaemonProcess, url: str, dest: Path, *targets: AuthTarget) -> str:
    with daemon.manager() as manager:
        job = manager.create_job("creds")
        job.add_file(url, str(dest))
        for target in targets or (AuthTarget.SERVER,):
            job.set_credentials(target, AuthScheme.BASIC, USER, PASSWORD)
        return job.id


@needs_creds
@needs_nginx
def test_credentials_outlive_kill9_and_a_restart_and_are_never_in_clear(
        guarded: nginx.NginxServer, host_key: Path, tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path / "d").start()
    try:
        job_id = job_with_credentials(daemon, guarded.url("private/data.bin"), tmp_path / "out.bin")
        daemon.kill9()
        daemon.start()
        daemon.restart()
        assert (daemon.state_dir / sealing.SEALED_KEY).exists() and host_key.exists()
        no_secret_under(daemon.state_dir, daemon.log_path)
        with daemon.manager() as manager:
            job = manager.get_job(job_id)
            job.resume()
            assert job.wait(30) == JobState.TRANSFERRED, job.info().error
            no_secret_under(daemon.state_dir, daemon.log_path)
            job.complete()
        assert (tmp_path / "out.bin").read_bytes() == (guarded.root / "private" / "data.bin").read_bytes()
    finally:
        daemon.stop()
    no_secret_under(daemon.state_dir, daemon.log_path)


@needs_creds
@needs_nginx
def test_remove_credentials_erases_them_from_disk(guarded: nginx.NginxServer, host_key: Path, tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path / "d").start()
    try:
        job_id = job_with_credentials(daemon, guarded.url("private/data.bin"), tmp_path / "out.bin")
        with contextlib.closing(sqlite3.connect(daemon.state_dir / "jobs.db")) as db:
            (doc,) = db.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
        sealed = doc.split('"SERVER BASIC":"')[1].split('"')[0]
        with daemon.manager() as manager:
            job = manager.get_job(job_id)
            job.remove_credentials(AuthTarget.SERVER, AuthScheme.BASIC)
        for path in daemon.state_dir.rglob("*"):  # at once, the daemon still running
            assert sealed.encode() not in path.read_bytes(), f"the removed credential is still in {path}"
        daemon.restart()
        with daemon.manager() as manager:  # and the job has none any more: the server refuses it
            job = manager.get_job(job_id)
            job.resume()
            assert job.wait(30) == JobState.ERROR
            assert job.error is not None and job.error.name == "BG_E_HTTP_ERROR_401"
    finally:
        daemon.stop()


@needs_creds
@needs_nginx
def test_a_store_moved_to_another_machine_refuses_its_credentials(
        guarded: nginx.NginxServer, host_key: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = DaemonProcess(tmp_path / "a").start()
    job_id = job_with_credentials(first, guarded.url("private/data.bin"), tmp_path / "out.bin",
                                  AuthTarget.SERVER, AuthTarget.PROXY)
    first.stop()
    moved = DaemonProcess(tmp_path / "b")
    shutil.copytree(first.state_dir, moved.state_dir)
    monkeypatch.setenv("SYSTEMD_CREDENTIAL_SECRET", str(tmp_path / "host-b.secret"))  # another machine
    moved.start()
    try:
        with moved.manager() as manager:
            job = manager.get_job(job_id)
            error = job.error
            assert job.state == JobState.ERROR and error is not None and error.name == "BG_E_INVALID_CREDENTIALS"
            assert "SERVER BASIC and PROXY BASIC" in error.description and "set them again" in error.description
            job.set_credentials(AuthTarget.SERVER, AuthScheme.BASIC, USER, PASSWORD)
            job.resume()
            assert job.wait(30) == JobState.TRANSFERRED, job.info().error
            job.complete()
        assert (moved.state_dir / (sealing.SEALED_KEY + ".unusable")).exists()
        assert "does not open" in moved.log()
    finally:
        moved.stop()


def test_the_key_file_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without systemd-creds: a 0600 key file beside the store; another key, or another label, does not open."""
    monkeypatch.setattr(sealing, "_systemd_creds_usable", lambda: False)
    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()
    here = sealing.open_key(tmp_path / "here")
    key_file = tmp_path / "here" / sealing.PLAIN_KEY
    assert key_file.stat().st_mode & 0o777 == 0o600
    sealed = here.seal(b"secret", "job A SERVER BASIC")
    assert b"secret" not in sealed.encode() and sealing.open_key(tmp_path / "here").open(sealed, "job A SERVER BASIC") \
        == b"secret"
    with pytest.raises(sealing.SealBroken):
        here.open(sealed, "job B SERVER BASIC")
    with pytest.raises(sealing.SealBroken):
        sealing.open_key(tmp_path / "elsewhere").open(sealed, "job A SERVER BASIC")
    key_file.chmod(0o644)  # others may have read it: set aside, a new key
    with pytest.raises(sealing.SealBroken):
        sealing.open_key(tmp_path / "here").open(sealed, "job A SERVER BASIC")
    assert (tmp_path / "here" / (sealing.PLAIN_KEY + ".unusable")).exists()
