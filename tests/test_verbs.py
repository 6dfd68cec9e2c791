"""The bitsadmin verbs that only read or sweep: files, times, proxy getters, reset, list --verbose."""

from __future__ import annotations

import os
import uuid
from datetime import datetime
from pathlib import Path

from .servers.nginx import NginxServer
from .test_cli import Cli, cli  # noqa: F401  (the fixture)


def test_file_and_time_verbs(cli: Cli, nginx: NginxServer, tmp_path: Path) -> None:
    served = nginx.root / f"{uuid.uuid4().hex}.bin"
    served.write_bytes(os.urandom(1234))
    job = cli.ok("create", "verbs").strip()
    cli.ok("addfile", job, nginx.url(served.name), str(tmp_path / "a.bin"))
    assert cli.ok("listfiles", job) == f"0 / UNKNOWN WORKING {nginx.url(served.name)} -> {tmp_path / 'a.bin'}\n"
    temp = cli.ok("gettemporaryname", job, "0").strip()
    assert Path(temp).parent == tmp_path and Path(temp).name.startswith(".a.bin.")
    bad = cli("gettemporaryname", job, "1")
    assert bad.returncode == 2 and "0 to 0" in bad.stderr
    assert cli.ok("getcompletiontime", job) == "WORKING\n"
    created = datetime.fromisoformat(cli.ok("getcreationtime", job).strip())
    assert abs((datetime.now() - created).total_seconds()) < 600
    datetime.fromisoformat(cli.ok("getmodificationtime", job).strip())
    cli.ok("resume", job)
    assert cli.ok("wait", job).strip() == "TRANSFERRED"
    assert cli.ok("listfiles", job).startswith("1234 / 1234 COMPLETED ")
    datetime.fromisoformat(cli.ok("getcompletiontime", job).strip())
    assert (cli.ok("getproxyusage", job), cli.ok("getproxylist", job)) == ("PRECONFIG\n", "NULL\n")
    cli.ok("setproxy", job, "OVERRIDE", "--list", "http://127.0.0.1:3128", "--bypass", "<local>")
    assert (cli.ok("getproxylist", job), cli.ok("getproxybypasslist", job)) == ("http://127.0.0.1:3128\n", "<local>\n")
    assert "Custom headers write-only" in cli.ok("list", "--verbose")


def test_reset_cancels_every_job_of_the_caller(cli: Cli, tmp_path: Path) -> None:
    for name in ("one", "two"):
        cli.ok("create", name)
    assert cli.ok("reset") == "2 out of 2 jobs cancelled.\n"
    assert "one" not in cli.ok("list")
