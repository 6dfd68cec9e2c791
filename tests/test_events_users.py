"""Events and notify command lines against a root daemon and real users: nobody sees another user's events,
and the command line runs as the job owner, again while the job stays TRANSFERRED, never after Complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .daemon import DaemonProcess
from .test_security import daemon, users, world  # noqa: F401  (module fixtures: real users, a system daemon)
from .users import RealUser, owned_folder
from .waiting import wait_until

pytestmark = pytest.mark.root

CLI = Path(sys.prefix) / "bin" / "openbits"


def cli(user: RealUser, daemon: DaemonProcess, *args: str) -> str:
    result = subprocess.run(["/usr/sbin/runuser", "-u", user.name, "--", str(CLI), "--socket", str(daemon.socket),
                             "--no-autostart", *args], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(user.home)})
    assert result.returncode == 0, result.stderr
    return result.stdout


def stored_events(user: RealUser, daemon: DaemonProcess, *args: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in cli(user, daemon, "events", "--no-follow", *args).splitlines()]


def test_a_user_never_sees_another_users_events(users, world, daemon) -> None:  # type: ignore[no-untyped-def]
    alice, bob, admin = users["alice"], users["bob"], users["admin"]
    mine = cli(alice, daemon, "create", "alice-job").strip()
    theirs = cli(bob, daemon, "create", "bob-job").strip()
    cli(alice, daemon, "setdescription", mine, "secret plans")
    seen_by_bob = stored_events(bob, daemon, "--since", "0")
    assert {e["job_id"] for e in seen_by_bob} == {theirs}
    assert "secret plans" not in json.dumps(seen_by_bob) and "alice-job" not in json.dumps(seen_by_bob)
    assert {e["job_id"] for e in stored_events(alice, daemon, "--since", "0")} == {mine}
    refused = subprocess.run(["/usr/sbin/runuser", "-u", bob.name, "--", str(CLI), "--socket", str(daemon.socket),
                              "events", "--no-follow", "--job", mine], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "BG_E_NOT_FOUND" in refused.stderr
    refused = subprocess.run(["/usr/sbin/runuser", "-u", bob.name, "--", str(CLI), "--socket", str(daemon.socket),
                              "events", "--no-follow", "--all-users"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "E_ACCESSDENIED" in refused.stderr
    assert {mine, theirs} <= {e["job_id"] for e in stored_events(admin, daemon, "--all-users", "--since", "0")}


def test_the_command_line_runs_as_the_owner_again_until_complete(users, world, daemon) -> None:  # type: ignore
    alice = users["alice"]
    home = owned_folder(world / "alice_cmd", alice)
    src = home / "src"
    src.write_bytes(b"x" * 1000)
    os.chown(src, alice.uid, alice.identity.gid)
    out = home / "who"
    job = cli(alice, daemon, "create", "cmdline").strip()
    cli(alice, daemon, "setminretrydelay", job, "1")
    # non-zero exit while the job stays TRANSFERRED: run again after the minimum retry delay
    cli(alice, daemon, "setnotifycmdline", job, "/bin/sh", f"sh -c 'id -u >> {out}; echo to-the-log; exit 3'")
    assert cli(alice, daemon, "getnotifycmdline", job).strip().startswith("/bin/sh -c ")
    cli(alice, daemon, "addfile", job, src.as_uri(), str(home / "dst"))
    cli(alice, daemon, "resume", job)  # no client is connected when the job is transferred
    wait_until(lambda: out.exists() and len(out.read_text().split()) >= 2, 20, lambda: daemon.log()[-3000:],
               interval=0.1)
    assert set(out.read_text().split()) == {str(alice.uid)}
    assert out.stat().st_uid == alice.uid
    cli(alice, daemon, "complete", job)
    time.sleep(0.5)
    runs = len(out.read_text().split())
    time.sleep(2.5)
    assert len(out.read_text().split()) == runs  # Complete ended the notification
    assert "to-the-log" in daemon.log()  # the program's output goes to the daemon log


def test_take_ownership_removes_the_command_line(users, world, daemon) -> None:  # type: ignore[no-untyped-def]
    alice, admin = users["alice"], users["admin"]
    job = cli(alice, daemon, "create", "taken").strip()
    cli(alice, daemon, "setnotifycmdline", job, "/bin/true")
    cli(admin, daemon, "takeownership", job)
    assert cli(admin, daemon, "getnotifycmdline", job).strip() == ""
