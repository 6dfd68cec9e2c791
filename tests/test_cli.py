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
from .servers.auth import BODY, AuthServer
from .servers.faulty import FaultyServer
from .servers.faulty import content as faulty_content
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


def test_transfer_takes_start_bits_transfers_parameters(cli: Cli, faulty: FaultyServer, tmp_path: Path) -> None:
    """--suspended sets the job up and prints its GUID; --asynchronous starts it and returns (Start-BitsTransfer)."""
    url = faulty.url(f"/cli/{uuid.uuid4().hex}?size=20k")
    result = cli("transfer", "--suspended", "--display-name", "set up", "--description", "nightly",
                 "--retry-interval", "120", "--retry-timeout", "900", "--max-download-time", "3600",
                 "--transfer-policy", "STANDARD", "--custom-headers", "X-Test: one", "--custom-headers", "X-More: 2",
                 "--dynamic", "--security-flags", "ALLOW_REPORT", "--notify-cmdline", "/bin/true {JOB}",
                 "--proxy-usage", "NoProxy", "--priority", "low", url, str(tmp_path / "set-up.bin"))
    assert result.returncode == 0, result.stderr
    guid = result.stdout.strip()
    info = JobInfo.model_validate_json(cli.ok("info", guid, "--json"))
    assert (info.state.name, info.name, info.description, info.priority.name) == ("SUSPENDED", "set up", "nightly",
                                                                                   "LOW")
    assert (info.minimum_retry_delay, info.no_progress_timeout, info.max_download_time) == (120, 900, 3600)
    assert (info.cost_flags, info.custom_headers, info.dynamic_content) == (0x80000067, ["X-Test: one", "X-More: 2"],
                                                                            True)
    assert (info.security_flags, info.notify_cmdline, info.proxy_usage.name) == (0x100, ["/bin/true", "{JOB}"],
                                                                                  "NO_PROXY")
    cli.ok("cancel", guid)
    target = tmp_path / "async.bin"
    result = cli("transfer", "--asynchronous", "--custom-headers", "X-Async: yes", url, str(target))
    assert result.returncode == 0, result.stderr
    guid = result.stdout.strip()
    assert cli("wait", guid, "--timeout", "60").returncode == 0
    assert not target.exists()  # an asynchronous transfer is completed by its caller
    cli.ok("complete", guid)
    path_qs = "/" + url[len(faulty.url("")):]
    assert target.read_bytes() == faulty_content(path_qs)
    assert any(r.headers.get("X-Async") == "yes" for r in faulty.requests if r.path_qs == path_qs)


def test_transfer_credential_answers_the_servers_challenge(cli: Cli, tmp_path: Path) -> None:
    server = AuthServer()
    try:
        server.accounts["alice"] = "s3cret pass"
        target = tmp_path / "secret.bin"
        result = cli("transfer", "--credential", "alice", "--authentication", "basic", "--password-stdin",
                     server.url("/basic/alice/f"), str(target), input="s3cret pass\n")
        assert result.returncode == 0, result.stderr
        assert target.read_bytes() == BODY
        assert "s3cret" not in result.stdout + result.stderr
    finally:
        server.stop()


@pytest.mark.parametrize(("args", "complaint"), [
    (["--proxy-list", "http://p:3128"], "--proxy-list and --proxy-bypass go with --proxy-usage OVERRIDE"),
    (["--password-stdin"], "--password-stdin reads the password of --credential USER"),
    (["--notify-cmdline", "prog {JOB}"], "give the program's absolute path first"),
    (["--security-flags", "BOGUS"], "'BOGUS': use a number or"),
    (["--transfer-policy", "CHEAP"], "CHEAP"),
    (["--asynchronous", "--max-time", "5"], "--max-time and --fail-fast follow a synchronous transfer"),
])
def test_transfer_refuses_bad_parameters_before_making_a_job(cli: Cli, tmp_path: Path, args: list[str],
                                                             complaint: str) -> None:
    result = cli("transfer", *args, "http://127.0.0.1:9/f", str(tmp_path / "f"))
    assert result.returncode == 2 and complaint in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert JobList.model_validate_json(cli.ok("list", "--json")).jobs == []


def test_getnotifyinterface_tells_whether_a_callback_is_registered(cli: Cli, daemon: DaemonProcess) -> None:
    guid = cli.ok("create", "callbacks").strip()
    assert cli.ok("getnotifyinterface", guid).strip() == "UNREGISTERED"
    with daemon.manager() as manager:
        manager.get_job(guid).set_notify_interface(object())
        assert cli.ok("getnotifyinterface", guid).strip() == "REGISTERED"
    wait_until(lambda: cli.ok("getnotifyinterface", guid).strip() == "UNREGISTERED", 30,
               "the interface to go with the client that registered it")
    refused = cli("getnotifyinterface", "no-such-job")
    one_line_error(refused, 1, "openbits: BG_E_NOT_FOUND")
