"""Checksums at AddFile, the server's digest headers and SetValidationState, through a real daemon."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest

from openbits import BitsError, JobState, JobType, Manager

from .servers import faulty as faulty_server
from .servers.faulty import FaultyServer
from .servers.nginx import NginxServer
from .test_cli import Cli, cli  # noqa: F401  (the fixture)


def _served(nginx: NginxServer, size: int) -> tuple[str, bytes]:
    data = os.urandom(size)
    name = f"{uuid.uuid4().hex}.bin"
    (nginx.root / name).write_bytes(data)
    return nginx.url(name), data


def test_matching_checksums_validate_the_file(manager: Manager, nginx: NginxServer, tmp_path: Path) -> None:
    url, data = _served(nginx, 3_000_000)
    job = manager.create_job("good", JobType.DOWNLOAD)
    checksums = [f"sha256:{hashlib.sha256(data).hexdigest()}", f"SHA512:{hashlib.sha512(data).hexdigest().upper()}",
                 f"blake2b:{hashlib.blake2b(data).hexdigest()}"]
    job.add_file(url, tmp_path / "good.bin", checksums=checksums)
    job.resume()
    assert job.wait(30) == JobState.TRANSFERRED
    assert job.info().files[0].validation_state and job.info().files[0].checksums[1].startswith("sha512:")
    job.complete()
    assert (tmp_path / "good.bin").read_bytes() == data


def test_a_mismatch_is_an_error_naming_file_algorithm_and_digests(manager: Manager, nginx: NginxServer,
                                                                  tmp_path: Path) -> None:
    url, data = _served(nginx, 3_000_000)
    wrong = hashlib.sha256(b"something else").hexdigest()
    job = manager.create_job("bad", JobType.DOWNLOAD)
    job.add_file(url, tmp_path / "bad.bin", checksums=[f"sha256:{wrong}"])
    job.resume()
    assert job.wait(30) == JobState.ERROR
    error = job.error
    assert error is not None and error.name == "BG_E_VALIDATION_FAILED" and error.file is not None
    for part in (str(tmp_path / "bad.bin"), "sha256", wrong, hashlib.sha256(data).hexdigest()):
        assert part in error.description
    info = job.info().files[0]
    assert (info.bytes_transferred, info.completed, info.validation_state) == (0, False, False)
    assert os.path.getsize(info.temp_path) == 0  # the partial file is discarded


def test_a_resumed_file_is_hashed_whole_and_the_servers_digests_are_checked(manager: Manager, faulty: FaultyServer,
                                                                            tmp_path: Path) -> None:
    resumed = "sums/resumed.bin?size=3m&drop=1000000&fail=1&digest=repr"
    cases = [resumed, "sums/content.bin?size=100k&digest=content", "sums/legacy.bin?size=100k&digest=legacy"]
    job = manager.create_job("server digests", JobType.DOWNLOAD)
    job.minimum_retry_delay = 1
    for i, path_qs in enumerate(cases):
        job.add_file(faulty.url(path_qs), tmp_path / f"{i}.bin",
                     checksums=[f"sha256:{faulty_server.sha256(path_qs)}"] if i == 0 else None)
    job.resume()
    assert job.wait(60) == JobState.TRANSFERRED
    assert all(f.validation_state for f in job.info().files)
    assert [r.range for r in faulty.requests if r.path_qs == "/" + resumed][1] == "bytes=1000000-"
    lying = manager.create_job("lying server", JobType.DOWNLOAD)
    lying.add_file(faulty.url("sums/bad.bin?size=100k&digest=bad"), tmp_path / "lie.bin")
    lying.resume()
    assert lying.wait(30) == JobState.ERROR
    assert lying.error is not None and "Repr-Digest" in lying.error.description


def test_setvalidationstate_false_downloads_the_file_again(cli: Cli, faulty: FaultyServer, tmp_path: Path) -> None:
    path_qs = "sums/revalidate.bin?size=10k"
    job = cli.ok("create", "revalidate").strip()
    cli.ok("addfile", job, faulty.url(path_qs), str(tmp_path / "r.bin"), "--checksum",
           f"sha256:{faulty_server.sha256(path_qs)}")
    early = cli("setvalidationstate", job, "0", "false")
    assert early.returncode == 1 and "E_PENDING" in early.stderr
    cli.ok("resume", job)
    assert cli.ok("wait", job).strip() == "TRANSFERRED"
    assert cli.ok("getvalidationstate", job, "0") == "true\n"
    cli.ok("setvalidationstate", job, "0", "false")
    assert cli.ok("getstate", job) == "ERROR\n" and "BG_E_VALIDATION_FAILED" in cli.ok("geterror", job)
    cli.ok("resume", job)
    assert cli.ok("wait", job).strip() == "TRANSFERRED"
    assert sum(1 for r in faulty.requests if r.path_qs == "/" + path_qs) == 2
    bad = cli("addfile", job, faulty.url(path_qs), str(tmp_path / "x.bin"), "--checksum", "md5:00")
    assert bad.returncode == 1 and "E_INVALIDARG" in bad.stderr and "sha256" in bad.stderr


def test_checksums_need_a_whole_downloaded_file(manager: Manager, nginx: NginxServer, tmp_path: Path) -> None:
    job = manager.create_job("ranges and sums", JobType.DOWNLOAD)
    with pytest.raises(BitsError, match="without ranges"):
        job.add_file(nginx.url("x.bin"), tmp_path / "x.bin", ranges=[(0, 10)], checksums=["sha256:" + "0" * 64])
