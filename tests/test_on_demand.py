"""On-demand jobs (BITS_JOB_PROPERTY_ON_DEMAND_MODE, IBackgroundCopyFile6) and reading a file while it downloads."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from openbits import BitsError, JobState, JobType, Manager, NotifyFlags

from .servers.nginx import NginxServer
from .test_cli import Cli, cli  # noqa: F401  (the fixture)

SIZE = 5_000_000


@pytest.fixture
def served(nginx: NginxServer) -> tuple[str, bytes]:
    data = os.urandom(SIZE)
    name = f"{uuid.uuid4().hex}.bin"
    (nginx.root / name).write_bytes(data)
    return nginx.url(name), data


def _on_demand(manager: Manager, url: str, dest: Path) -> object:
    job = manager.create_job("on demand", JobType.DOWNLOAD)
    job.on_demand = True
    job.notify_flags = NotifyFlags.FILE_RANGES_TRANSFERRED | NotifyFlags.JOB_TRANSFERRED
    job.add_file(url, dest)
    return job


def test_requested_ranges_come_first_then_the_job_waits(manager: Manager, served: tuple[str, bytes],
                                                        tmp_path: Path) -> None:
    url, data = served
    job = _on_demand(manager, url, tmp_path / "f.bin")
    job.request_file_ranges(0, [(1_000_000, 1000), (1_000_500, 1000)])  # overlapping requests are fine
    job.resume()
    assert job.wait(30) == JobState.SUSPENDED  # everything asked for is in, the file is not whole
    f = job.files[0]
    assert f.filled_ranges == ((1_000_000, 1500),) and not f.completed and f.progress.bytes_total == SIZE
    events = [e for e in manager.events(since=0, job=job.id, follow_live=False) if e is not None and
              e.kind == "file_ranges_transferred"]
    assert [[(r.offset, r.length) for r in e.ranges or ()] for e in events] == [[(1_000_000, 1000)],
                                                                                  [(1_000_500, 1000)]]
    with pytest.raises(BitsError) as outside:
        job.request_file_ranges(0, [(SIZE - 10, 11)])
    assert outside.value.name == "BG_E_INVALID_RANGE"
    with job.files[0].open() as reader:  # reads request what they need and wait for it
        reader.seek(3_000_000)
        assert reader.read(65536) == data[3_000_000:3_065_536]
        assert reader.seek(0, os.SEEK_END) == SIZE
    job.update_download_position(0, 4_000_000)
    job.resume()  # nothing requested: the rest, from the download position on
    assert job.wait(30) == JobState.TRANSFERRED
    job.complete()
    assert (tmp_path / "f.bin").read_bytes() == data


def test_on_demand_needs_a_plain_download(manager: Manager, served: tuple[str, bytes], tmp_path: Path) -> None:
    job = manager.create_job("dynamic", JobType.DOWNLOAD)
    job.dynamic_content = True
    with pytest.raises(BitsError) as refused:
        job.on_demand = True
    assert refused.value.name == "BG_E_RANDOM_ACCESS_NOT_SUPPORTED"
    plain = manager.create_job("plain", JobType.DOWNLOAD)
    plain.add_file(served[0], tmp_path / "p.bin")
    with pytest.raises(BitsError) as not_on_demand:
        plain.request_file_ranges(0, [(0, 10)])
    assert not_on_demand.value.name == "BG_E_RANDOM_ACCESS_NOT_SUPPORTED"


def _command(cli: Cli) -> list[str]:
    return [sys.executable, "-m", "openbits.cli", "--socket", str(cli.socket), "--no-autostart"]


def test_cat_streams_the_file_and_the_range_verbs(cli: Cli, served: tuple[str, bytes], tmp_path: Path) -> None:
    url, data = served
    job = cli.ok("create", "cat").strip()
    cli.ok("setondemand", job, "true")
    cli.ok("addfile", job, url, str(tmp_path / "c.bin"))
    cli.ok("requestfileranges", job, "0", "10:20")
    cli.ok("resume", job)
    waited = cli("wait", job)
    assert (waited.returncode, waited.stdout.strip()) == (6, "SUSPENDED"), waited.stderr  # wait's code for it
    assert cli.ok("getfilledfileranges", job, "0") == "10:20\n"
    streamed = subprocess.run([*_command(cli), "cat", job, "0"], capture_output=True, env=cli.env, timeout=60)
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == data
