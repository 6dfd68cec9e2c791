"""Prometheus metrics of a real daemon: scraped, parsed with prometheus_client's parser, checked against jobs.

An administrator sees every series; a real non-administrator user only the series of their own jobs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from openbits import JobState, JobType

from .daemon import DaemonProcess
from .servers.faulty import FaultyServer
from .test_security import CLI
from .users import RealUsers, require_root

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Series:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(series: Series, name: str, **labels: str) -> float | None:
    return series.get((name, frozenset(labels.items())))


def scrape_socket(path: Path) -> str:
    done = subprocess.run(["curl", "-sf", "--unix-socket", str(path), "http://openbits/v1/metrics"],
                          capture_output=True, text=True, timeout=30, check=True)
    return done.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_metrics_count_the_jobs_that_ran(tmp_path: Path, faulty: FaultyServer) -> None:
    port = free_port()
    daemon = DaemonProcess(tmp_path / "d", {"metrics": {"listen": f"127.0.0.1:{port}"}}).start()
    try:
        with daemon.manager() as manager:
            good = manager.create_job("good", JobType.DOWNLOAD)
            good.add_file(faulty.url("/metrics/a?size=100k"), tmp_path / "a")
            good.add_file(faulty.url("/metrics/b?size=28k"), tmp_path / "b")
            good.resume()
            assert good.wait(30) == JobState.TRANSFERRED
            good.complete()
            bad = manager.create_job("bad", JobType.DOWNLOAD)
            bad.add_file(faulty.url("/metrics/missing?status=404"), tmp_path / "c")
            bad.resume()
            assert bad.wait(30) == JobState.ERROR
            assert bad.error is not None and bad.error.name == "BG_E_HTTP_ERROR_404"
            status = manager.status()
        assert status.metrics == f"/v1/metrics, http://127.0.0.1:{port}/metrics"
        series = parse(scrape_socket(daemon.socket))
        uid = str(os.getuid())
        assert value(series, "openbits_bytes_transferred_total", direction="download", uid=uid) == 128 * 1024
        assert value(series, "openbits_files_transferred_total", direction="download", uid=uid) == 2
        assert value(series, "openbits_jobs", state="ACKNOWLEDGED", priority="NORMAL", uid=uid) == 1
        assert value(series, "openbits_jobs", state="ERROR", priority="NORMAL", uid=uid) == 1
        assert value(series, "openbits_job_errors_total", error="BG_E_HTTP_ERROR_404", uid=uid) == 1
        if os.geteuid() != 0:
            return  # the rest are daemon-wide series, which only an administrator scrapes
        assert value(series, "openbits_api_requests_total", route="/v1/jobs", method="POST", status="201") == 2
        assert value(series, "openbits_api_requests_total", route="/v1/jobs/{job}/complete", method="POST",
                     status="200") == 1
        assert value(series, "openbits_api_connections") >= 1  # type: ignore[operator]  # this scrape's
        assert value(series, "openbits_logons_failed_total") == 0
        assert value(series, "openbits_file_broker_processes") == 1  # one user's files were used
        assert value(series, "openbits_store_size_bytes") > 0  # type: ignore[operator]
        assert value(series, "openbits_event_loop_lag_seconds") is not None
        assert value(series, "openbits_bandwidth_allowed_bytes_per_second", direction="download") == 0
        assert value(series, "openbits_bandwidth_competing_bytes_per_second", direction="download") == 0
        # the same registry over TCP, for a scraper
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            over_tcp = parse(answer.read().decode())
        assert value(over_tcp, "openbits_files_transferred_total", direction="download", uid=uid) == 2
        # counters count from the daemon's start: a restart begins again from what the jobs hold
        daemon.restart()
        after = parse(scrape_socket(daemon.socket))
        assert value(after, "openbits_bytes_transferred_total", direction="download", uid=uid) == 0
        assert value(after, "openbits_jobs", state="ERROR", priority="NORMAL", uid=uid) == 1
    finally:
        daemon.stop()


@pytest.mark.root
def test_a_user_sees_only_their_own_series(faulty: FaultyServer) -> None:
    require_root()
    base = Path(tempfile.mkdtemp(prefix="obt_metrics_", dir="/var/tmp"))
    base.chmod(0o755)
    daemon = DaemonProcess(base / "daemon", system=True)
    try:
        with RealUsers() as users:
            alice, bob = users.create("alice"), users.create("bob")
            daemon.start()
            for user in (alice, bob):
                made = subprocess.run(
                    ["/usr/sbin/runuser", "-u", user.name, "--", str(CLI), "--socket", str(daemon.socket),
                     "--no-autostart", "transfer", faulty.url(f"/m/{user.name}?size=10k"), str(user.home / "f")],
                    capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(user.home)})
                assert made.returncode == 0, made.stderr
            as_bob = subprocess.run(["/usr/sbin/runuser", "-u", bob.name, "--", "curl", "-sf", "--unix-socket",
                                     str(daemon.socket), "http://openbits/v1/metrics"],
                                    capture_output=True, text=True, timeout=30, check=True)
            mine = parse(as_bob.stdout)
            assert value(mine, "openbits_bytes_transferred_total", direction="download", uid=str(bob.uid)) == 10240
            assert {dict(labels).get("uid") for _, labels in mine} == {str(bob.uid)}
            assert value(mine, "openbits_api_connections") is None  # daemon-wide: administrators only
            every = parse(scrape_socket(daemon.socket))  # root: an administrator
            for user in (alice, bob):
                assert value(every, "openbits_files_transferred_total", direction="download", uid=str(user.uid)) == 1
            assert value(every, "openbits_file_broker_processes") == 2
            daemon.stop()
    finally:
        daemon.stop()
        shutil.rmtree(base)


def test_status_tells_how_the_daemon_runs(daemon: DaemonProcess) -> None:
    shown = subprocess.run([str(CLI), "--socket", str(daemon.socket), "--no-autostart", "status"],
                           capture_output=True, text=True, timeout=30, check=True).stdout
    fields = dict(line.split(": ", 1) for line in shown.splitlines())
    assert fields["version"] and fields["mode"] == "user"
    assert fields["socket"] == str(daemon.socket) and fields["state_dir"] == str(daemon.state_dir)
    assert fields["config_file"] == str(daemon.config_path)
    assert fields["cost"] == "unrestricted (configuration)"
    assert fields["bandwidth"] == "no limit: no link is shared now"
    assert fields["pam_service"] in ("openbits", "login (/etc/pam.d/openbits is missing)")
    assert fields["metrics"] == "/v1/metrics"
