"""SMB downloads from a real Samba share: smb:// and \\\\server\\share\\path names, NTLM logons with the
job's credentials, resume at an offset while size and last-write time are unchanged, restart when they
changed, and the errors of a wrong password, a missing share or file, and no credentials; and uploads onto
the share (a plain file copy, resumed from what the share holds)."""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from openbits import BitsError, Job, JobPriority, JobState, Manager
from openbits.enums import AuthScheme, AuthTarget, JobType
from openbits.transport.smb import SmbPath

from .daemon import DaemonProcess
from .servers.samba import SHARE, SambaServer

ACCOUNT = "nobody"  # smbpasswd wants a Linux account; the share serves every file as it


@pytest.fixture(scope="module")
def share(samba: SambaServer) -> tuple[SambaServer, str]:
    password = "smb-" + secrets.token_hex(6)
    samba.add_user(ACCOUNT, password)
    return samba, password


def url(samba: SambaServer, name: str, share: str = SHARE) -> str:
    return f"smb://127.0.0.1:{samba.port}/{share}/{name}"


def start(m: Manager, remote: str, dest: Path, credential: tuple[str, str] | None, cap: int = 0) -> Job:
    job = m.create_job("smb", priority=JobPriority.FOREGROUND)  # the whole link: no idle-bandwidth ramp
    job.set_properties(max_bandwidth=cap)
    if credential is not None:
        job.set_credentials(AuthTarget.SERVER, AuthScheme.NTLM, *credential)
    job.add_file(remote, str(dest))
    job.resume()
    return job


def test_download_and_errors(manager: Manager, share: tuple[SambaServer, str], daemon: DaemonProcess,
                             tmp_path: Path) -> None:
    samba, password = share
    data = os.urandom(300_000)
    (samba.root / "dir").mkdir(exist_ok=True)
    (samba.root / "dir" / "f.bin").write_bytes(data)
    job = start(manager, url(samba, "dir/f.bin"), tmp_path / "f", (ACCOUNT, password))
    assert job.wait(30) == JobState.TRANSFERRED, job.error
    job.complete()
    assert (tmp_path / "f").read_bytes() == data
    for remote, credential, expected, words in [
        (url(samba, "dir/f.bin"), (ACCOUNT, "wrong"), "ERROR_LOGON_FAILURE", "refused the logon"),
        (url(samba, "f.bin", "noshare"), (ACCOUNT, password), "ERROR_BAD_NET_NAME", "no share 'noshare'"),
        (url(samba, "dir/missing"), (ACCOUNT, password), "ERROR_FILE_NOT_FOUND", "does not exist"),
        (url(samba, "dir/f.bin"), None, "ERROR_LOGON_FAILURE", "no usable Kerberos ticket"),
    ]:
        job = start(manager, remote, tmp_path / "x", credential)
        assert job.wait(30) == JobState.ERROR
        error = job.error
        assert error is not None and error.name == expected and words in error.description, error
        job.cancel()
    for path in [*daemon.state_dir.rglob("*"), daemon.log_path]:  # the daemon logs at DEBUG here
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path


def test_resume_keeps_bytes_of_the_same_version_only(manager: Manager, share: tuple[SambaServer, str],
                                                     tmp_path: Path) -> None:
    """Suspended halfway, the file is replaced by other bytes: with its size and last-write time kept the job
    resumes (the first part stays the old bytes); with a new time it starts over."""
    samba, password = share
    size = 4 << 20
    source = samba.root / "big.bin"
    for changed_time, dest in ((False, tmp_path / "kept"), (True, tmp_path / "restarted")):
        old, new = os.urandom(size), os.urandom(size)
        source.write_bytes(old)
        # about 4 s for the file at 1 MiB/s: time to suspend on the way
        job = start(manager, url(samba, "big.bin"), dest, (ACCOUNT, password), cap=1 << 20)
        deadline = time.monotonic() + 30
        while job.files[0].progress.bytes_transferred < size // 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        job.suspend()
        done = job.files[0].progress.bytes_transferred
        assert 0 < done < size
        stat = source.stat()
        source.write_bytes(new)
        if not changed_time:
            os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        job.set_properties(max_bandwidth=0)
        job.resume()
        assert job.wait(60) == JobState.TRANSFERRED, job.error
        job.complete()
        got = dest.read_bytes()
        if changed_time:
            assert got == new
        else:
            kept = len(os.path.commonprefix([got, old]))
            assert kept > 0 and got[kept:] == new[kept:] and got != new  # resumed where the durable bytes ended


def test_remote_names(manager: Manager) -> None:
    assert SmbPath.parse(r"\\fs.corp\share\dir\f.txt") == SmbPath("fs.corp", 445, "share", r"dir\f.txt")
    assert SmbPath.parse("smb://fs.corp:1445/share/a%20b/c") == SmbPath("fs.corp", 1445, "share", r"a b\c")
    job = manager.create_job("unc")
    job.add_file(r"\\fs.corp\share\dir\f.txt", "/tmp/unc-f")
    with pytest.raises(BitsError, match="needs"):
        job.add_file(r"\\fs.corp\share", "/tmp/unc-g")
    job.cancel()


def upload(m: Manager, remote: str, local: Path, credential: tuple[str, str] | None,
           before: Callable[[Job], None] = lambda job: None) -> Job:
    job = m.create_job("smb-up", JobType.UPLOAD, priority=JobPriority.FOREGROUND)
    if credential is not None:
        job.set_credentials(AuthTarget.SERVER, AuthScheme.NTLM, *credential)
    job.add_file(remote, str(local))
    before(job)
    job.resume()
    return job


def test_upload_is_a_file_copy_onto_the_share(manager: Manager, share: tuple[SambaServer, str],
                                              tmp_path: Path) -> None:
    """BITS's SMB uploads: the bytes go to a hidden file beside the name, which resumes from what the share holds
    and takes the name (and the local last-write time) when it is whole; upload-reply jobs have no SMB."""
    samba, password = share
    folder = samba.root / "up"
    folder.mkdir(exist_ok=True)
    shutil.chown(folder, ACCOUNT)
    data = os.urandom(3 * 1024 * 1024 + 5)
    local = tmp_path / "u.bin"
    local.write_bytes(data)
    os.utime(local, ns=(1_600_000_000_123_456_700, 1_600_000_000_123_456_700))
    (folder / "u.bin").write_bytes(b"the old version")

    def half_there(job: Job) -> None:  # an earlier attempt left the first MiB (other bytes, to tell them apart)
        hidden = folder / f".u.bin.{job.id[:8]}.bits"
        hidden.write_bytes(b"\0" * (1 << 20))
        shutil.chown(hidden, ACCOUNT)

    job = upload(manager, url(samba, "up/u.bin"), local, (ACCOUNT, password), half_there)
    assert job.wait(30) == JobState.TRANSFERRED, job.error
    job.complete()
    got = (folder / "u.bin").read_bytes()
    assert got[: 1 << 20] == b"\0" * (1 << 20) and got[1 << 20:] == data[1 << 20:]  # resumed, not sent again
    assert (folder / "u.bin").stat().st_mtime_ns == local.stat().st_mtime_ns
    assert [p.name for p in folder.iterdir()] == ["u.bin"]  # the hidden file took the name
    for remote, credential, expected, words in [
        (url(samba, "up/w.bin"), (ACCOUNT, "wrong"), "ERROR_LOGON_FAILURE", "refused the logon"),
        (url(samba, "w.bin", "noshare"), (ACCOUNT, password), "ERROR_BAD_NET_NAME", "no share 'noshare'"),
        (url(samba, "nofolder/w.bin"), (ACCOUNT, password), "ERROR_FILE_NOT_FOUND", "does not exist"),
        (url(samba, "up/w.bin"), None, "ERROR_LOGON_FAILURE", "no usable Kerberos ticket"),
    ]:
        job = upload(manager, remote, local, credential)
        assert job.wait(30) == JobState.ERROR
        error = job.error
        assert error is not None and error.name == expected and words in error.description, error
        job.cancel()
    job = manager.create_job("smb-cancel", JobType.UPLOAD)  # Cancel removes what an attempt left on the share
    job.set_credentials(AuthTarget.SERVER, AuthScheme.NTLM, ACCOUNT, password)
    job.add_file(url(samba, "up/c.bin"), str(local))
    half_there_c = folder / f".c.bin.{job.id[:8]}.bits"
    half_there_c.write_bytes(b"partial")
    shutil.chown(half_there_c, ACCOUNT)
    job.cancel()
    assert not half_there_c.exists() and sorted(p.name for p in folder.iterdir()) == ["u.bin"]
    reply = manager.create_job("smb-reply", JobType.UPLOAD_REPLY)
    with pytest.raises(BitsError) as refused:
        reply.add_file(url(samba, "up/r.bin"), str(local))
    assert refused.value.name == "BG_E_PROTOCOL_NOT_AVAILABLE" and "upload-reply" in refused.value.description
    reply.cancel()
