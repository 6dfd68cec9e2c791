"""The daemon's log: one structured line per job state change, per error, per logon; JSON and journald.

journald is the real systemd-journald, started in a private mount namespace of the test's own
(its sockets and journal on tmpfs there), so the machine's own log is not touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from openbits import BitsError, JobState, JobType

from .daemon import DaemonProcess
from .servers.faulty import FaultyServer

JOURNALD = Path("/lib/systemd/systemd-journald")


def assert_transitions(messages: list[str]) -> None:
    """A job made, resumed, failed: one line per state change it went through (durable ones at least)."""
    changes = [message.split(": ", 1)[1].split(":")[0] for message in messages]
    assert changes[:2] == ["(new) -> SUSPENDED", "SUSPENDED -> QUEUED"], changes
    assert changes[-1].endswith("-> ERROR") and len(changes) == len(set(changes)), changes


def test_json_lines_carry_job_user_and_error(tmp_path: Path, faulty: FaultyServer) -> None:
    daemon = DaemonProcess(tmp_path / "d")
    daemon.start("--log-format", "json")
    try:
        with daemon.manager() as manager:
            job = manager.create_job("logged", JobType.DOWNLOAD)
            job.add_file(faulty.url("/logs/missing?status=404"), tmp_path / "x")
            job.resume()
            assert job.wait(30) == JobState.ERROR
            with pytest.raises(BitsError):
                manager.logon("obt_nobody_here", "s3cret-never-logged")
    finally:
        daemon.stop()
    text = daemon.log()
    assert "s3cret-never-logged" not in text
    lines = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    mine = [line for line in lines if line.get("openbits_job") == job.id]
    uid = str(os.getuid())
    assert_transitions([line["message"] for line in mine])
    assert all(line["openbits_user"] == uid for line in mine)
    error = mine[-1]
    assert error["openbits_error"] == "BG_E_HTTP_ERROR_404" and error["priority"] == 4 and error["level"] == "WARNING"
    logon = [line for line in lines if line["logger"] == "openbits.logon" and "failed" in line["message"]]
    assert len(logon) == 1 and logon[0]["openbits_user"] == uid and logon[0]["openbits_error"] == "ERROR_LOGON_FAILURE"


NAMESPACED = """
set -eu
mount -t tmpfs openbits-test /run/systemd
mkdir -p /run/systemd/journal /run/log
mount -t tmpfs openbits-test /run/log
[ -d /var/log/journal ] && mount -t tmpfs openbits-test /var/log/journal
{journald} &
journald=$!
trap 'kill $journald' EXIT
for i in $(seq 200); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
"$@"
"""


@pytest.mark.root
def test_journald_native_fields(tmp_path: Path, faulty: FaultyServer) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None or not JOURNALD.exists():
        pytest.skip("needs root, unshare and systemd-journald (Debian package systemd) to run a private journald")
    script = tmp_path / "in_namespace.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, subprocess, sys, logging
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        from tests.daemon import DaemonProcess
        from openbits import JobType, JobState
        from openbits.daemon.logs import JournalHandler
        from pathlib import Path
        root = Path({str(tmp_path)!r})
        daemon = DaemonProcess(root / "d")
        # systemd's way: stderr is the journal stream and JOURNAL_STREAM names it (auto target)
        stream = open(root / "stream", "wb")
        info = os.fstat(stream.fileno())
        daemon.log_path = root / "stream"
        daemon.start(environ={{"JOURNAL_STREAM": f"{{info.st_dev}}:{{info.st_ino}}"}})
        with daemon.manager() as m:
            job = m.create_job("journaled", JobType.DOWNLOAD)
            job.add_file({faulty.url("/journal/missing?status=404")!r}, str(root / "x"))
            job.resume()
            assert job.wait(30) == JobState.ERROR
        daemon.stop()
        big = logging.getLogger("big")
        big.addHandler(JournalHandler("openbits-test"))
        big.warning("x" * 400_000, extra={{"openbits_job": "BIG"}})  # larger than a datagram: a memfd
        def entries(match):
            done = subprocess.run(["journalctl", "--no-pager", "--all", "-o", "json", match], capture_output=True, text=True,
                                  check=True)
            return [json.loads(line) for line in done.stdout.splitlines()]
        print(json.dumps({{"job": job.id, "entries": entries(f"OPENBITS_JOB={{job.id}}"),
                          "big": [len(e["MESSAGE"]) for e in entries("OPENBITS_JOB=BIG")],
                          "stderr": (root / "stream").read_text()}}))
    """))
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           NAMESPACED.format(journald=JOURNALD), "sh", sys.executable, str(script)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    entries = result["entries"]
    assert_transitions([e["MESSAGE"] for e in entries])
    assert all(e["OPENBITS_USER"] == "0" and e["SYSLOG_IDENTIFIER"] == "openbitsd" for e in entries)
    assert {e["PRIORITY"] for e in entries[:-1]} == {"6"} and entries[-1]["PRIORITY"] == "4"
    assert entries[-1]["OPENBITS_ERROR"] == "BG_E_HTTP_ERROR_404"
    assert result["big"] == [400_000]
    assert result["stderr"] == ""  # everything went to the journal
