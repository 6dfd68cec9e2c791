"""IBackgroundCopyFile's properties through a real daemon and nginx: response headers, the remote time."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from openbits import JobState, JobType, Manager

from .servers.nginx import NginxServer
from .test_cli import Cli, cli  # noqa: F401  (the fixture)

#: 2001-09-09 01:46:40 UTC: an mtime no fresh file has
REMOTE_TIME = 1_000_000_000


def _served(nginx: NginxServer, size: int) -> Path:
    served = nginx.root / f"{uuid.uuid4().hex}.bin"
    served.write_bytes(os.urandom(size))
    os.utime(served, (REMOTE_TIME, REMOTE_TIME))
    return served


def test_each_file_keeps_its_response_headers_and_the_remote_time(
        manager: Manager, nginx: NginxServer, tmp_path: Path) -> None:
    # one large file (the per-file way) and small ones (the batch way)
    served = [_served(nginx, 3_000_000)] + [_served(nginx, 1000) for _ in range(3)]
    job = manager.create_job("headers", JobType.DOWNLOAD)
    job.add_files([(nginx.url(s.name), tmp_path / s.name) for s in served])
    job.resume()
    assert job.wait(30) == JobState.TRANSFERRED
    for f, source in zip(job.files, served):
        headers = dict(line.split(": ", 1) for line in f.response_headers)
        assert headers["Server"].startswith("nginx") and headers["Content-Length"] == str(source.stat().st_size)
        assert headers["Last-Modified"] == "Sun, 09 Sep 2001 01:46:40 GMT" and headers["ETag"]
    job.complete()
    for source in served:
        assert (tmp_path / source.name).stat().st_mtime == REMOTE_TIME


def test_info_json_shows_the_response_headers(cli: Cli, nginx: NginxServer, tmp_path: Path) -> None:
    source = _served(nginx, 5000)
    job = cli.ok("create", "headers").strip()
    cli.ok("addfile", job, nginx.url(source.name), str(tmp_path / "got.bin"))
    cli.ok("resume", job)
    assert cli.ok("wait", job).strip() == "TRANSFERRED"
    files = json.loads(cli.ok("info", "--json", job))["files"]
    assert "Accept-Ranges: bytes" in files[0]["response_headers"]
