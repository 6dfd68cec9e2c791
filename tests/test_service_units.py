"""The real units under a real systemd: a Debian tree booted with `systemd-nspawn --boot`.

The tree is made once by debootstrap from Debian's mirror and kept in /var/tmp/openbits-nspawn
(later runs reuse it); openbits is installed into it with packaging/install.sh, as `make install`
does, then the test drives it as an administrator would: enable the socket, connect, reload, stop.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.root]

REPO = Path(__file__).resolve().parent.parent
TREE = Path("/var/tmp/openbits-nspawn/bookworm")
PACKAGES = "systemd,systemd-sysv,dbus,procps,python3,python3-venv,libpam-modules"


def _tree() -> Path:
    """The booted tree, made when missing; skips with the reason when this machine cannot make or boot one."""
    if shutil.which("systemd-nspawn") is None:
        pytest.skip("systemd-nspawn is missing (Debian package systemd-container, in scripts/system-deps.sh)")
    if not (TREE / "usr/lib/systemd/systemd").exists():
        if shutil.which("debootstrap") is None:
            pytest.skip("debootstrap is missing (Debian package debootstrap)")
        shutil.rmtree(TREE, ignore_errors=True)
        made = subprocess.run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm", str(TREE),
                               "http://deb.debian.org/debian"], capture_output=True, text=True, timeout=900)
        if made.returncode != 0:
            shutil.rmtree(TREE, ignore_errors=True)
            pytest.skip(f"debootstrap could not make a Debian tree: {made.stdout[-300:]} {made.stderr[-300:]}")
    return TREE


def _install(tree: Path) -> None:
    """Copy the working tree's package into the tree and install it there as `make install` would."""
    source = tree / "opt/openbits-src"
    shutil.rmtree(source, ignore_errors=True)
    for part in ("src", "packaging", "pyproject.toml", "README.md"):
        origin = REPO / part
        if origin.is_dir():
            shutil.copytree(origin, source / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(origin, source / part)
    (tree / "opt/no-man").mkdir(exist_ok=True)
    # The tree reaches no package index: the host fetches every wheel, the tree installs from them. The
    # wheels stay for the next run, which rebuilds only openbits' own when nothing else changed.
    wheels = tree / "opt/openbits-wheels"
    for old in wheels.glob("openbits-*.whl"):
        old.unlink()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    offline = subprocess.run([*pip, "wheel", "--quiet", "--no-index", "--find-links", str(wheels), "-w", str(wheels),
                              str(REPO)], capture_output=True, text=True, timeout=600)
    for command in ([] if offline.returncode == 0 else
                    [["wheel", "--quiet", "-w", str(wheels), str(REPO)],
                     ["download", "--quiet", "--only-binary", ":all:", "-d", str(wheels), "setuptools>=68", "wheel"]]):
        fetched = subprocess.run([*pip, *command], capture_output=True, text=True, timeout=600)
        if fetched.returncode != 0:
            pytest.skip(f"cannot fetch the wheels for the Debian tree: {fetched.stderr[-500:]}")
    script = ("set -e; rm -rf /var/lib/openbits; sh /opt/openbits-src/packaging/uninstall.sh '' /usr/local >/dev/null; "
              "sh /opt/openbits-src/packaging/install.sh '' /usr/local /etc /usr/bin/python3 /opt/no-man")
    done = subprocess.run(["systemd-nspawn", "-D", str(tree), "--register=no", "--keep-unit", "-q",
                           "--setenv=PIP_NO_INDEX=1", "--setenv=PIP_FIND_LINKS=/opt/openbits-wheels", "sh", "-c", script],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        pytest.skip(f"cannot install openbits into the Debian tree: {done.stdout[-500:]} {done.stderr[-500:]}")


class Booted:
    """The tree booted; `run` executes a command inside it (nsenter into the container's namespaces)."""

    def __init__(self, tree: Path, log: Path) -> None:
        self.log = log
        self.process = subprocess.Popen(["systemd-nspawn", "-D", str(tree), "--register=no", "--keep-unit", "--boot",
                                         "-q"], stdin=subprocess.DEVNULL, stdout=open(log, "wb"),
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        self.leader = 0
        while time.monotonic() < deadline and self.process.poll() is None:
            children = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
            if children.split():
                self.leader = int(children.split()[0])
                state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.2)
        self.stop()
        pytest.skip(f"the Debian tree did not boot under systemd-nspawn: {log.read_text(errors='replace')[-500:]}")

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["nsenter", "-t", str(self.leader), "-a", "--", *command], capture_output=True,
                              text=True, timeout=60)
        if check and done.returncode != 0:
            raise AssertionError(f"{command}: {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # nspawn shuts the container down in order
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Booted]:
    tree = _tree()
    _install(tree)
    machine = Booted(tree, tmp_path_factory.mktemp("nspawn") / "console.log")
    try:
        yield machine
    finally:
        machine.stop()


def test_socket_activation_reload_stop_under_systemd(booted: Booted) -> None:
    booted.run("systemctl", "daemon-reload")
    booted.run("systemctl", "enable", "--now", "openbitsd.socket")
    assert booted.run("systemctl", "is-active", "openbitsd.service", check=False).stdout.strip() == "inactive"
    # the first connection starts the daemon (Type=notify: systemctl waits for READY=1)
    status = json.loads(booted.run("openbits", "--no-autostart", "status", "--json").stdout)
    assert status["mode"] == "system" and status["socket"] == "/run/openbits/openbits.sock"
    assert status["config_file"] == "/etc/openbits/openbitsd.toml"  # the commented default, installed
    assert status["pam_service"] == "openbits"
    assert booted.run("systemctl", "is-active", "openbitsd.service").stdout.strip() == "active"
    job = booted.run("openbits", "--no-autostart", "create", "under-systemd").stdout.strip()
    assert "WatchdogUSec=30s" in booted.run("systemctl", "show", "-p", "WatchdogUSec", "openbitsd.service").stdout
    deadline = time.monotonic() + 30  # STATUS= is sent every 5 s when it changed
    while "StatusText=1 jobs, 0 transferring, 0.0 MB/s" not in (
            shown := booted.run("systemctl", "show", "-p", "StatusText", "openbitsd.service").stdout):
        assert time.monotonic() < deadline, shown
        time.sleep(0.5)
    # systemctl reload: RELOADING=1 ... READY=1; the service stays up
    booted.run("systemctl", "reload", "openbitsd.service")
    assert booted.run("systemctl", "is-active", "openbitsd.service").stdout.strip() == "active"
    # the journal has the job's history under its GUID
    entries = booted.run("journalctl", "-u", "openbitsd", "-o", "json", f"OPENBITS_JOB={job}").stdout.splitlines()
    assert [json.loads(e)["OPENBITS_USER"] for e in entries] == ["0"]
    log = booted.run("journalctl", "-u", "openbitsd", "-o", "cat").stdout
    assert "configuration reloaded from /etc/openbits/openbitsd.toml" in log and "(socket from systemd)" in log
    # stop: the socket stays (systemd's), and the next client starts the daemon again with the job kept
    booted.run("systemctl", "stop", "openbitsd.service")
    assert booted.run("systemctl", "is-active", "openbitsd.service", check=False).stdout.strip() == "inactive"
    assert booted.run("test", "-S", "/run/openbits/openbits.sock", check=False).returncode == 0
    listed = booted.run("openbits", "--no-autostart", "list", "--json").stdout
    assert job in listed
    booted.run("systemctl", "stop", "openbitsd.service", "openbitsd.socket")
