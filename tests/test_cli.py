"""The `openbits` command through a subprocess, against a real daemon: output, exit codes, messages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from openbits.schema.models import JobInfo, JobList

from .cli import Cli, one_line_error
from .daemon import DaemonProcess
from .servers.nginx import NginxServer
from .waiting import wait_until


@pytest.fixture
def cli(daemon: DaemonProcess) -> Cli:
    return Cli(daemon.socket, daemon.env)


def test_transfer_json(cli: Cli, nginx: NginxServer, tmp_path: Path) -> None:
    served = nginx.root / f"{uuid.uuid4().hex}.bin"
    served.write_bytes(os.urandom(100_000))
    target = tmp_path / "got.bin"
    result = cli("transfer", "--json", "--name", "cli transfer", nginx.url(served.name), str(target))
    assert result.returncode == 0, result.stderr
    info = JobInfo.model_validate_json(result.stdout)
    assert (info.state.name, info.name, info.priority.name) == ("ACKNOWLEDGED", "cli transfer", "FOREGROUND")
    assert (info.files_total, info.bytes_transferred) == (1, 100_000)
    assert target.read_bytes() == served.read_bytes()


def test_transfer_error_leaves_the_job(cli: Cli, nginx: NginxServer, tmp_path: Path) -> None:
    result = cli("transfer", nginx.url("missing.bin"), str(tmp_path / "missing.bin"))
    one_line_error(result, 4, "openbits: BG_E_HTTP_ERROR_404")
    guid = result.stderr.split("(job ")[1].split(" ")[0]
    assert cli.ok("getstate", guid).strip() == "ERROR"
    assert cli.ok("geterror", guid).startswith("BG_E_HTTP_ERROR_404")
    cli.ok("cancel", guid)


def test_create_addfile_info(cli: Cli, tmp_path: Path) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    guid = cli.ok("create", name).strip()
    assert len(guid.strip("{}")) == 36
    cli.ok("addfile", name, "http://127.0.0.1:9/a.bin", str(tmp_path / "a.bin"))
    listing = tmp_path / "files.txt"
    listing.write_text(f"# two more\nhttp://127.0.0.1:9/b.bin {tmp_path / 'b.bin'}\n\nhttp://127.0.0.1:9/c.bin '{tmp_path / 'c d.bin'}'\n")
    cli.ok("addfileset", guid, str(listing))
    info = json.loads(cli.ok("info", guid, "--json"))
    assert set(info) == set(JobInfo.model_fields)
    assert (info["id"], info["name"], info["state"], info["type"]) == (guid, name, "SUSPENDED", "DOWNLOAD")
    assert [f["local_path"] for f in info["files"]] == [str(tmp_path / n) for n in ("a.bin", "b.bin", "c d.bin")]
    assert cli.ok("getfilestotal", name).strip() == "3"
    human = cli.ok("info", name)
    assert guid in human and name in human and "SUSPENDED" in human
    cli.ok("cancel", guid)


def test_setters_and_getters(cli: Cli) -> None:
    guid = cli.ok("create", "--download", f"props-{uuid.uuid4().hex[:8]}").strip()
    for setter, value, getter, shown in [
        ("setpriority", "high", "getpriority", "HIGH"),
        ("setminretrydelay", "77", "getminretrydelay", "77"),
        ("setnoprogresstimeout", "900", "getnoprogresstimeout", "900"),
        ("setmaxdownloadtime", "3600", "getmaxdownloadtime", "3600"),
        ("setdescription", "for testing", "getdescription", "for testing"),
        ("setdisplayname", "renamed", "getdisplayname", "renamed"),
        ("setdynamiccontent", "true", "getdynamiccontent", "true"),
    ]:
        cli.ok(setter, guid, value)
        assert cli.ok(getter, guid).strip() == shown, setter
    cli.ok("setcustomheaders", guid, "X-One: 1", "X-Two: 2")
    assert cli.ok("getcustomheaders", guid).splitlines() == ["X-One: 1", "X-Two: 2"]
    cli.ok("setcustomheaders", guid, "--clear")
    assert cli.ok("getcustomheaders", guid) == ""
    assert cli.ok("getstate", guid).strip() == "SUSPENDED"
    assert cli.ok("getbytestransferred", guid).strip() == "0"
    assert cli.ok("geterror", guid) == ""
    assert cli.ok("getowner", guid).strip()
    waited = cli("wait", guid, "--timeout", "5")
    assert (waited.returncode, waited.stdout) == (6, "SUSPENDED\n")
    cli.ok("cancel", guid)


def test_list(cli: Cli) -> None:
    name = f"listed-{uuid.uuid4().hex[:8]}"
    guid = cli.ok("create", name).strip()
    assert guid in cli.ok("list") and name in cli.ok("list")
    assert guid in [job.id for job in JobList.model_validate_json(cli.ok("list", "--json")).jobs]
    cli.ok("cancel", guid)


def test_status(cli: Cli) -> None:
    status = json.loads(cli.ok("status", "--json"))
    assert status["caller_uid"] == os.getuid()


def test_unknown_job(cli: Cli) -> None:
    one_line_error(cli("getstate", "no-such-job"), 1, "openbits: BG_E_NOT_FOUND: ")


def test_resume_without_files(cli: Cli) -> None:
    guid = cli.ok("create", f"empty-{uuid.uuid4().hex[:8]}").strip()
    one_line_error(cli("resume", guid), 1, "openbits: BG_E_EMPTY: ")
    cli.ok("cancel", guid)


def test_usage_errors_exit_2(cli: Cli) -> None:
    guid = cli.ok("create", f"usage-{uuid.uuid4().hex[:8]}").strip()
    assert cli("setpriority", guid, "URGENT").returncode == 2
    assert cli("setminretrydelay", guid, "-1").returncode == 2
    assert cli("transfer", "not-a-url", "http://127.0.0.1:9/a").returncode == 2
    assert cli("setcustomheaders", guid).returncode == 2
    cli.ok("cancel", guid)


def test_unreachable_daemon_exits_3(cli: Cli, tmp_path: Path) -> None:
    one_line_error(cli("list", socket=tmp_path / "nobody.sock"), 3, "openbits: no openbits daemon answers on ")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_transfer_cancels_the_job(cli: Cli, silent_server: str, tmp_path: Path, signum: int) -> None:
    name = f"interrupted-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-m", "openbits.cli", "--socket", str(cli.socket), "transfer", "--name", name,
               silent_server, str(tmp_path / "never.bin")]
    process = subprocess.Popen(command, env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: cli("getstate", name).stdout.strip() in ("CONNECTING", "TRANSFERRING", "TRANSIENT_ERROR"),
               20, "the transfer to start", interval=0.1)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 130, stderr
    assert stderr.strip().startswith("openbits: interrupted: cancelled job ")
    guid = stderr.strip().rsplit(" ", 1)[1]
    assert cli.ok("getstate", guid).strip() == "CANCELLED"
