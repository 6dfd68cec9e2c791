"""openbitsd as systemd runs it: socket activation, the notify protocol, bad configuration.

The daemon is the real one; systemd's side is played by the test's own datagram NOTIFY_SOCKET and
by systemd's own `systemd-socket-activate`.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbits import JobPriority, JobState, JobType, Manager
from openbits.daemon.activity import Activity
from openbits.daemon import systemd
from openbits.locations import answers
from openbits.model.job import Job
from openbits.model.jobfile import JobFile

from .daemon import DaemonProcess


class NotifyListener:
    """A NOTIFY_SOCKET: records each datagram with the time it arrived (a thread receives them)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, list[str]]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode().split("\n")))

    def wait_for(self, line: str, after: int = 0, timeout: float = 20.0) -> int:
        """Index of the first message from `after` on that has `line`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index, (_, lines) in enumerate(self.messages[after:], after):
                if line in lines:
                    return index
            time.sleep(0.01)
        raise AssertionError(f"no {line!r} within {timeout} s; got {self.messages}")

    def close(self) -> None:
        self._closed = True
        self._thread.join()
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    made = NotifyListener(tmp_path / "notify")
    try:
        yield made
    finally:
        made.close()


def test_ready_status_watchdog_reload_stopping(tmp_path: Path, listener: NotifyListener) -> None:
    daemon = DaemonProcess(tmp_path / "d", {"bandwidth": {"limit": 0}})
    daemon.start()
    with daemon.manager() as manager:
        manager.create_job("kept", JobType.DOWNLOAD)
    daemon.stop()
    # The daemon's READY=1 must come after the store is open, the job loaded and the socket serves.
    process = subprocess.Popen(
        [sys.executable, "-m", "openbits.daemon", "--user", "--socket", str(daemon.socket), "--state-dir",
         str(daemon.state_dir), "--config", str(daemon.config_path)],
        env={**daemon.env, "NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "400000"},
        stdout=subprocess.DEVNULL, stderr=open(daemon.log_path, "ab"))
    try:
        ready = listener.wait_for("READY=1")
        assert answers(daemon.socket)
        assert "STATUS=1 jobs, 0 transferring, 0.0 MB/s" in listener.messages[ready][1]
        assert all("READY=1" not in lines for _, lines in listener.messages[:ready])
        # WATCHDOG=1 keeps coming, spaced by about half of WATCHDOG_USEC.
        first = listener.wait_for("WATCHDOG=1", ready)
        third = listener.wait_for("WATCHDOG=1", listener.wait_for("WATCHDOG=1", first + 1) + 1)
        assert listener.messages[third][0] - listener.messages[first][0] >= 0.3

        # SIGHUP with a bad file: RELOADING=1 then READY=1, and the running configuration stays.
        daemon.config_path.write_text("max_jobs_per_user = 'many'\n")
        mark = len(listener.messages)
        process.send_signal(signal.SIGHUP)
        reloading = listener.wait_for("RELOADING=1", mark)
        assert any(line.startswith("MONOTONIC_USEC=") for line in listener.messages[reloading][1])
        listener.wait_for("READY=1", reloading)
        with Manager(socket_path=daemon.socket, autostart=False) as manager:
            assert manager.status().bandwidth.startswith("blocked by policy")  # the old [bandwidth] limit = 0
        assert "configuration not reloaded, the old one stays" in daemon.log()

        mark = len(listener.messages)
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
        listener.wait_for("STOPPING=1", mark)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    every = {line.partition("=")[0] for _, lines in listener.messages for line in lines}
    assert every == {"READY", "STATUS", "WATCHDOG", "RELOADING", "MONOTONIC_USEC", "STOPPING"}


async def test_a_blocked_loop_stops_the_watchdog(listener: NotifyListener) -> None:
    notifier = systemd.Notifier({"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "100000"})
    assert notifier.watchdog_interval == 0.05
    task = asyncio.create_task(systemd.watchdog(notifier))
    try:
        await asyncio.sleep(0.3)
        blocked_from = time.monotonic()
        time.sleep(1.0)  # the loop is stuck: nothing on it runs
        blocked_to = time.monotonic()
        await asyncio.sleep(0.3)
    finally:
        task.cancel()
        notifier.close()
    pings = [at for at, lines in listener.messages if lines == ["WATCHDOG=1"]]
    assert any(at < blocked_from for at in pings) and any(at > blocked_to for at in pings)
    # one ping may be in flight as the block starts; none is sent during it
    assert not [at for at in pings if blocked_from + 0.05 < at < blocked_to]


def test_notifier_takes_an_abstract_address_and_watchdog_pid() -> None:
    environ = {"NOTIFY_SOCKET": "@openbits-test", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    notifier = systemd.Notifier(environ)
    assert notifier.enabled and notifier.watchdog_interval is None  # the watchdog is another process's
    assert environ == {}  # nothing left for the daemon's children
    notifier.close()


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate is missing (Debian package systemd)")
def test_socket_activation(tmp_path: Path) -> None:
    """The client connects before the daemon runs; the daemon starts on that connection and answers it."""
    daemon = DaemonProcess(tmp_path / "d")
    activator = subprocess.Popen(
        ["systemd-socket-activate", "--listen", str(daemon.socket), sys.executable, "-m", "openbits.daemon",
         "--user", "--socket", str(tmp_path / "not-this-one.sock"), "--state-dir", str(daemon.state_dir),
         "--config", str(daemon.config_path), "--log-level", "DEBUG"],
        stdout=subprocess.DEVNULL, stderr=open(daemon.log_path, "ab"))
    try:
        deadline = time.monotonic() + 10
        while not daemon.socket.exists():
            assert time.monotonic() < deadline, "systemd-socket-activate did not listen"
            time.sleep(0.01)
        assert "openbitsd" not in daemon.log()  # nothing started yet
        with Manager(socket_path=daemon.socket, autostart=False) as manager:
            status = manager.status()
            assert status.mode == "user" and status.socket == str(daemon.socket)
            job = manager.create_job("activated", JobType.DOWNLOAD)
            assert manager.get_job(job.id).name == "activated"
        assert "(socket from systemd)" in daemon.log()
        assert not (tmp_path / "not-this-one.sock").exists()
        activator.send_signal(signal.SIGTERM)
        assert activator.wait(20) == 0
        assert daemon.socket.exists(), "the socket is systemd's: the daemon must not unlink it"
    finally:
        if activator.poll() is None:
            activator.kill()
            activator.wait()


def _run_daemon(tmp_path: Path, config: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "bad.toml"
    path.write_text(config)
    return subprocess.run(
        [sys.executable, "-m", "openbits.daemon", "--user", "--socket", str(tmp_path / "s.sock"), "--state-dir",
         str(tmp_path / "state"), "--config", str(path)],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("config", "says"), [
    ("max_jobs_per_usr = 3\n", "unknown key 'max_jobs_per_usr'"),
    ("[bandwidth]\nlimt = '1M'\n", "[bandwidth]: unknown key(s) limt"),
    ("max_jobs_per_user = 'many'\n", "max_jobs_per_user = 'many' is not a valid value"),
    ("[network]\nmetered = 'yes'\n", "[network] metered = 'yes': write true or false"),
    ("[metrics]\nlisten = 9464\n", "[metrics] listen = 9464: write a string"),
    ("[metrics]\nlisten = ':9464'\n", "names no host"),
    ("max_jobs = [\n", "is not valid TOML"),
])
def test_bad_configuration_is_one_line_and_nothing_starts(tmp_path: Path, config: str, says: str) -> None:
    (tmp_path / "bad.toml").write_text(config)
    checked = subprocess.run([sys.executable, "-m", "openbits.daemon", "--check-config", str(tmp_path / "bad.toml")],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 1
    assert checked.stderr.count("\n") == 1 and says in checked.stderr and "bad.toml" in checked.stderr
    started = _run_daemon(tmp_path, config)
    assert started.returncode != 0
    assert started.stderr.count("\n") == 1 and says in started.stderr, started.stderr
    assert not (tmp_path / "s.sock").exists()


def test_check_config_accepts_a_good_file_and_names_an_unreadable_one(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("max_jobs_per_user = 10\n[metrics]\nlisten = '127.0.0.1:9464'\n")
    done = subprocess.run([sys.executable, "-m", "openbits.daemon", "--check-config", str(good)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and f"{good}: valid" in done.stdout
    folder = tmp_path / "a-folder.toml"
    folder.mkdir()
    done = subprocess.run([sys.executable, "-m", "openbits.daemon", "--check-config", str(folder)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and done.stderr == f"openbitsd: config file {folder} cannot be read: Is a directory\n"


def test_metrics_address_in_use_stops_the_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = _run_daemon(tmp_path, f"[metrics]\nlisten = '127.0.0.1:{port}'\n")
    assert started.returncode != 0
    lines = [line for line in started.stderr.splitlines() if "openbitsd:" in line]
    assert lines == [f"openbitsd: [metrics] listen = '127.0.0.1:{port}': cannot listen there: Address already in use"]
    assert not (tmp_path / "s.sock").exists()


def test_user_daemon_reads_its_default_config(tmp_path: Path) -> None:
    (tmp_path / "xdg" / "openbits").mkdir(parents=True)
    (tmp_path / "xdg" / "openbits" / "openbitsd.toml").write_text("[bandwidth]\nlimit = 0\n")
    daemon = DaemonProcess(tmp_path / "d")
    daemon.config_option = False
    daemon.start(environ={"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    try:
        with daemon.manager() as manager:
            status = manager.status()
            assert status.config_file == str(tmp_path / "xdg" / "openbits" / "openbitsd.toml")
            assert status.bandwidth.startswith("blocked by policy")  # the file's policy: no background transfer
    finally:
        daemon.stop()


def test_status_line_counts_jobs_transfers_and_rate() -> None:
    """The STATUS= line from real Job records: the rate is the bytes moved since the last line."""
    moving, waiting = (Job.new(name, JobType.DOWNLOAD, 0, JobPriority.NORMAL, "") for name in ("moving", "waiting"))
    moving.files.append(JobFile("http://127.0.0.1/x", "/tmp/x", "/tmp/.x"))
    moving.state = JobState.TRANSFERRING
    activity = Activity({job.id: job for job in (moving, waiting)})
    a = time.monotonic()
    assert activity.line() == "2 jobs, 1 transferring, 0.0 MB/s"
    b = time.monotonic()
    time.sleep(0.1)
    moving.files[0].bytes_transferred = 10_000_000
    c = time.monotonic()
    line = activity.line()
    d = time.monotonic()
    count, transferring, rate = re.fullmatch(r"(\d+) jobs, (\d+) transferring, ([\d.]+) MB/s", line).groups()  # type: ignore[union-attr]
    assert (count, transferring) == ("2", "1")
    # 10 MB over the time between the two samples, which lies between c - b and d - a
    assert 10 / (d - a) - 0.05 <= float(rate) <= 10 / (c - b) + 0.05
    moving.state = JobState.TRANSFERRED  # its last bytes still count once, then it is gone from the line
    moving.files[0].bytes_transferred = 10_500_000
    last = activity.line()
    assert last.startswith("2 jobs, 0 transferring, ") and not last.endswith(" 0.0 MB/s")
    assert activity.line() == "2 jobs, 0 transferring, 0.0 MB/s"
