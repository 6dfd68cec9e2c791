"""SetRemoteName and ReplaceRemotePrefix: a file changes source and keeps its bytes when the version matches."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbits import BitsError, JobState, JobType, Manager

from .servers import faulty as faulty_server
from .servers.faulty import FaultyServer
from .test_cli import Cli, cli  # noqa: F401  (the fixture)


@pytest.fixture
def mirror() -> Iterator[FaultyServer]:
    """A second faulty server: the same paths serve the same bytes and validators as the first."""
    with FaultyServer() as server:
        yield server


def _partway(manager: Manager, url: str, dest: Path) -> tuple[object, int]:
    job = manager.create_job("mirrored", JobType.DOWNLOAD)
    job.add_file(url, dest)
    job.max_bandwidth = 400_000
    job.resume()
    while job.files[0].progress.bytes_transferred < 500_000:
        time.sleep(0.05)
    job.suspend()  # the bytes written so far are made durable
    return job, job.files[0].progress.bytes_transferred


def test_a_new_source_with_the_same_version_keeps_the_bytes(manager: Manager, faulty: FaultyServer,
                                                            mirror: FaultyServer, cli: Cli, tmp_path: Path) -> None:
    path_qs = "mirror/kept.bin?size=3m"
    job, kept = _partway(manager, faulty.url(path_qs), tmp_path / "kept.bin")
    assert kept > 0
    old, new = faulty.url(""), mirror.url("")
    assert cli.ok("replaceremoteprefix", job.id, old, new) == "1 remote name(s) replaced\n"
    assert cli.ok("replaceremoteprefix", job.id, old, new).startswith("S_FALSE")
    job.max_bandwidth = 0
    job.resume()
    assert job.wait(30) == JobState.TRANSFERRED
    job.complete()
    assert (tmp_path / "kept.bin").read_bytes() == faulty_server.content(path_qs)
    asked = [r for r in mirror.requests if r.path_qs == "/" + path_qs]
    assert len(asked) == 1 and asked[0].range == f"bytes={kept}-" and asked[0].status == 206
    assert mirror.bytes_sent == 3 * 1024 * 1024 - kept


def test_a_new_source_with_other_validators_restarts_the_file(manager: Manager, faulty: FaultyServer,
                                                              mirror: FaultyServer, tmp_path: Path) -> None:
    path_qs = "mirror/restart.bin?size=3m"
    job, _ = _partway(manager, faulty.url(path_qs), tmp_path / "restart.bin")
    weak = mirror.url(path_qs + "&etag=weak")  # the same bytes, but the ETag differs
    job.set_remote_name(0, weak)
    assert job.files[0].remote_url == weak
    job.max_bandwidth = 0
    job.resume()
    assert job.wait(30) == JobState.TRANSFERRED
    job.complete()
    assert (tmp_path / "restart.bin").read_bytes() == faulty_server.content(path_qs)
    assert mirror.bytes_sent == 3 * 1024 * 1024  # the whole file again


def test_remote_name_changes_bits_refuses(manager: Manager, faulty: FaultyServer, tmp_path: Path) -> None:
    job = manager.create_job("renames", JobType.DOWNLOAD)
    job.add_file(faulty.url("x.bin"), tmp_path / "x.bin")
    for call, name in ((lambda: job.set_remote_name(0, "gopher://x/y"), "BG_E_PROTOCOL_NOT_AVAILABLE"),
                       (lambda: job.set_remote_name(3, faulty.url("y.bin")), "E_INVALIDARG"),
                       (lambda: job.replace_remote_prefix("http://", "http://" + "x" * 2200), "E_INVALIDARG")):
        with pytest.raises(BitsError) as refused:
            call()
        assert refused.value.name == name
    with pytest.raises(BitsError) as upload:
        manager.create_job("up", JobType.UPLOAD).replace_remote_prefix("a", "b")
    assert upload.value.name == "E_NOTIMPL"
