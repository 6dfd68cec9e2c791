"""Issue 20's acceptance walk: a new user's first minutes, from a fresh virtualenv, with the daemon on demand.

`make run` builds the virtualenv and shows a download; then the user's own commands with that
virtualenv's `openbits`: transfer with and without a path, monitor for a second, wait on a failing job.
No --socket, no --no-autostart: the CLI finds (starts) the user daemon as it does on a laptop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from .servers.nginx import NginxServer
from .test_cli_first_hour import SUMMARY

REPO = Path(__file__).resolve().parent.parent


def _until_connected(pid: int) -> None:
    """Until the process holds a socket (its connection to the daemon): a Ctrl-C before that lands while
    Python is still importing, where the interpreter itself prints a traceback."""
    deadline = time.monotonic() + 60
    while not any(_link(f"/proc/{pid}/fd/{fd}").startswith("socket:") for fd in os.listdir(f"/proc/{pid}/fd")):
        assert time.monotonic() < deadline, "monitor never connected"
        time.sleep(0.1)


def _link(path: str) -> str:
    """What an fd of /proc/PID/fd is; "" for one closed since the folder was listed."""
    try:
        return os.readlink(path)
    except FileNotFoundError:
        return ""


@pytest.mark.slow
def test_first_run_from_a_fresh_virtualenv(tmp_path: Path, nginx: NginxServer) -> None:
    venv, home, work = tmp_path / "venv", tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "OPENBITS_", "VIRTUAL_ENV"))}
    # pip as this machine has it set up, though HOME moves: its configuration, and its cache of the wheels
    # built from source (gssapi, krb5: some minutes of compiling on 2 cores, which are not openbits' first run)
    env.setdefault("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))
    if (Path.home() / ".config" / "pip" / "pip.conf").exists():
        env.setdefault("PIP_CONFIG_FILE", str(Path.home() / ".config" / "pip" / "pip.conf"))
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(tmp_path / "run"), OPENBITS_DEMO_DIR=str(tmp_path / "demo"),
               PATH=f"{venv / 'bin'}:{env['PATH']}")
    if os.path.exists("/run/openbits/openbits.sock"):
        pytest.skip("a system daemon answers here; the first run would use it")
    made = subprocess.run(["make", "-C", str(REPO), "run", f"VENV={venv}"], capture_output=True, text=True,
                          env=env, timeout=900)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "sha256 matches" in made.stdout, made.stdout

    def openbits(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["openbits", *args], capture_output=True, text=True, env=env, cwd=work,
                              timeout=timeout)

    daemon_pid = json.loads(openbits("status", "--json").stdout)["pid"]
    try:
        served = nginx.root / f"first-{uuid.uuid4().hex[:8]}.bin"
        served.write_bytes(os.urandom(50_000))
        named = openbits("transfer", nginx.url(served.name), "named.bin")
        match = SUMMARY.match(named.stdout.strip())
        assert named.returncode == 0 and match and match["name"] == str(work / "named.bin"), named
        plain = openbits("transfer", nginx.url(served.name))
        assert plain.returncode == 0 and SUMMARY.match(plain.stdout.strip()), plain
        assert (work / served.name).read_bytes() == (work / "named.bin").read_bytes() == served.read_bytes()

        monitor = subprocess.Popen(["openbits", "monitor"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        _until_connected(monitor.pid)
        time.sleep(1)
        monitor.send_signal(signal.SIGINT)
        shown, errors = monitor.communicate(timeout=30)
        assert monitor.returncode == 0 and shown.split()[:2] == ["GUID", "NAME"] and not errors, (shown, errors)

        job = openbits("create", "first-failure").stdout.strip()
        assert openbits("addfile", job, nginx.url("missing.bin"), "missing.bin").returncode == 0
        assert openbits("resume", job).returncode == 0
        waited = openbits("wait", job)
        assert (waited.returncode, waited.stdout) == (4, "ERROR\n"), waited
        assert waited.stderr.startswith("openbits: BG_E_HTTP_ERROR_404 (0x80190194) in REMOTE_FILE (file 0, http: "), waited
        assert openbits("cancel", job).returncode == 0
    finally:
        os.kill(daemon_pid, signal.SIGTERM)
