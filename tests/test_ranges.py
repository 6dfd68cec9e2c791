"""AddFileWithRanges / GetFileRanges (IBackgroundCopyJob3, IBackgroundCopyFile2) through a real daemon."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from openbits import LENGTH_TO_EOF, BitsError, JobState, JobType, Manager

from .servers import faulty as faulty_server
from .servers.faulty import FaultyServer
from .servers.nginx import NginxServer
from .test_cli import Cli, cli  # noqa: F401  (the fixture)


@pytest.fixture
def served(nginx: NginxServer) -> tuple[str, bytes]:
    data = os.urandom(10_000)
    name = f"{uuid.uuid4().hex}.bin"
    (nginx.root / name).write_bytes(data)
    return nginx.url(name), data


def test_ranges_are_written_one_after_another_in_the_order_given(manager: Manager, served: tuple[str, bytes],
                                                                  tmp_path: Path) -> None:
    url, data = served
    job = manager.create_job("ranges", JobType.DOWNLOAD)
    job.add_file(url, tmp_path / "parts.bin", ranges=[(900, 100), (100, 100), (9000, LENGTH_TO_EOF)])
    job.add_file(url, tmp_path / "tail.bin", ranges=[(9990, LENGTH_TO_EOF)])
    assert job.files[0].ranges == ((900, 100), (100, 100), (9000, LENGTH_TO_EOF))
    job.resume()
    assert job.wait(30) == JobState.TRANSFERRED
    assert [f.progress.bytes_total for f in job.files] == [1200, 10]
    job.complete()
    assert (tmp_path / "parts.bin").read_bytes() == data[900:1000] + data[100:200] + data[9000:]
    assert (tmp_path / "tail.bin").read_bytes() == data[9990:]


@pytest.mark.parametrize("ranges, name", [
    ([], "E_INVALIDARG"),
    ([(0, 100), (50, 10)], "BG_E_OVERLAPPING_RANGES"),
    ([(100, 5), (100, 5)], "BG_E_OVERLAPPING_RANGES"),
    ([(500, LENGTH_TO_EOF), (0, 100), (600, 1)], "BG_E_OVERLAPPING_RANGES"),
    ([(LENGTH_TO_EOF, 1)], "BG_E_INVALID_RANGE"),
    ([(10, 0)], "BG_E_INVALID_RANGE"),
])
def test_ranges_bits_refuses_are_refused(manager: Manager, served: tuple[str, bytes], tmp_path: Path,
                                         ranges: list[tuple[int, int]], name: str) -> None:
    job = manager.create_job("bad ranges", JobType.DOWNLOAD)
    with pytest.raises(BitsError) as refused:
        job.add_file(served[0], tmp_path / "x.bin", ranges=ranges)
    assert refused.value.name == name
    assert job.files == []


def test_a_range_outside_the_file_and_a_server_without_ranges_are_errors(manager: Manager, served: tuple[str, bytes],
                                                                         faulty: FaultyServer, tmp_path: Path) -> None:
    outside = manager.create_job("outside", JobType.DOWNLOAD)
    outside.add_file(served[0], tmp_path / "o.bin", ranges=[(0, 10), (9990, 11)])
    none = manager.create_job("no ranges", JobType.DOWNLOAD)
    none.add_file(faulty.url("noranges.bin?size=10k&ranges=0"), tmp_path / "n.bin", ranges=[(5, 10)])
    for job, name in ((outside, "BG_E_INVALID_RANGE"), (none, "BG_E_INSUFFICIENT_RANGE_SUPPORT")):
        job.resume()
        assert job.wait(30) == JobState.ERROR
        assert job.error is not None and job.error.name == name and job.error.file is not None


def test_a_range_cut_short_continues_and_a_changed_file_starts_again(manager: Manager, faulty: FaultyServer,
                                                                      tmp_path: Path) -> None:
    cut = "ranges/cut.bin?size=300k&drop=50000&fail=1"
    changing = "ranges/changing.bin?size=300k&changing=1&fail=2"
    job = manager.create_job("resumed ranges", JobType.DOWNLOAD)
    job.minimum_retry_delay = 1
    job.add_file(faulty.url(cut), tmp_path / "cut.bin", ranges=[(1000, 200_000), (250_000, LENGTH_TO_EOF)])
    job.add_file(faulty.url(changing), tmp_path / "changing.bin", ranges=[(0, 10), (20, 10)])
    job.resume()
    assert job.wait(60) == JobState.TRANSFERRED
    job.complete()
    whole = faulty_server.content(cut)
    assert (tmp_path / "cut.bin").read_bytes() == whole[1000:201_000] + whole[250_000:]
    sent = [r.range for r in faulty.requests if r.path_qs == "/" + cut]
    assert sent[:2] == ["bytes=1000-200999", "bytes=51000-200999"]  # the second continues where the first broke
    fresh = faulty_server.content(changing)  # the version the server settles on
    assert (tmp_path / "changing.bin").read_bytes() == fresh[0:10] + fresh[20:30]


def test_addfilewithranges_and_getfileranges(cli: Cli, served: tuple[str, bytes], tmp_path: Path) -> None:
    job = cli.ok("create", "cli ranges").strip()
    cli.ok("addfilewithranges", job, served[0], str(tmp_path / "r.bin"), "0:100,2000:eof")
    assert cli.ok("getfileranges", job, "0") == "0:100,2000:eof\n"
    bad = cli("addfilewithranges", job, served[0], str(tmp_path / "s.bin"), "0-100")
    assert bad.returncode == 2 and "offset:length" in bad.stderr
    cli.ok("resume", job)
    assert cli.ok("wait", job).strip() == "TRANSFERRED"
    cli.ok("complete", job)
    assert (tmp_path / "r.bin").read_bytes() == served[1][:100] + served[1][2000:]
