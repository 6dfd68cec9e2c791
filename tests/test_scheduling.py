"""Scheduling as BITS does it: priorities, foreground concurrency, time slices, bandwidth caps."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbits import JobPriority, JobState, JobType, Manager
from openbits.model.config import BandwidthLimits, Config, parse_rate

from .daemon import DaemonProcess
from .servers.faulty import FaultyServer
from .test_retry import unique
from .waiting import wait_state, wait_until


@pytest.fixture
def one_at_a_time(tmp_path: Path) -> Iterator[DaemonProcess]:
    """One background transfer at a time, 8 MB/s for all of them, short turns."""
    daemon = DaemonProcess(tmp_path / "d", {"max_background_transfers": 1, "time_slice": 0.5,
                                            "bandwidth": {"limit": "8M"}}).start()
    try:
        yield daemon
    finally:
        daemon.stop()


def add_job(manager: Manager, faulty: FaultyServer, dest: Path, priority: JobPriority, size: str = "4m"):  # type: ignore[no-untyped-def]
    job = manager.create_job(f"{priority.name} job", JobType.DOWNLOAD, priority=priority)
    job.add_file(faulty.url(unique(f"f.bin?size={size}")), dest)
    return job


def test_background_jobs_run_in_priority_order(one_at_a_time: DaemonProcess, faulty: FaultyServer,
                                               tmp_path: Path) -> None:
    with one_at_a_time.manager() as manager:
        jobs = [add_job(manager, faulty, tmp_path / p.name, p)
                for p in (JobPriority.LOW, JobPriority.NORMAL, JobPriority.HIGH)]
        for job in jobs:
            job.resume()
        for job in jobs:
            assert job.wait(60) == JobState.TRANSFERRED
        finished = sorted(jobs, key=lambda j: j.info().transfer_completion_time)
        assert [j.info().priority for j in finished] == [JobPriority.HIGH, JobPriority.NORMAL, JobPriority.LOW]


def test_foreground_runs_beside_background(one_at_a_time: DaemonProcess, faulty: FaultyServer,
                                           tmp_path: Path) -> None:
    with one_at_a_time.manager() as manager:
        background = add_job(manager, faulty, tmp_path / "bg", JobPriority.NORMAL, size="64m")
        background.resume()
        foreground = add_job(manager, faulty, tmp_path / "fg", JobPriority.FOREGROUND, size="16m")
        wait_until(lambda: background.progress.bytes_transferred > 0, 30, "the background job's first bytes",
                   interval=0.02)
        foreground.resume()
        assert foreground.wait(30) == JobState.TRANSFERRED
        assert background.state in (JobState.TRANSFERRING, JobState.CONNECTING, JobState.QUEUED)
        background.cancel()


def test_same_priority_jobs_take_turns(one_at_a_time: DaemonProcess, faulty: FaultyServer, tmp_path: Path) -> None:
    with one_at_a_time.manager() as manager:
        first = add_job(manager, faulty, tmp_path / "a", JobPriority.NORMAL, size="16m")
        second = add_job(manager, faulty, tmp_path / "b", JobPriority.NORMAL, size="16m")
        first.resume()
        second.resume()
        both_started = False
        while first.state != JobState.TRANSFERRED and second.state != JobState.TRANSFERRED:
            both_started |= first.progress.bytes_transferred > 0 and second.progress.bytes_transferred > 0
            time.sleep(0.05)
        assert both_started, "round robin: the second job got a turn before the first finished"


def test_background_cap_and_reload_without_restart(tmp_path: Path, faulty: FaultyServer) -> None:
    daemon = DaemonProcess(tmp_path / "d", {"bandwidth": {"limit": "2M"}}).start()
    try:
        with daemon.manager() as manager:
            job = add_job(manager, faulty, tmp_path / "capped", JobPriority.NORMAL, size="200m")
            started = time.monotonic()
            job.resume()
            time.sleep(2)
            rate = job.progress.bytes_transferred / (time.monotonic() - started)
            assert rate < 2_000_000 * 1.5, f"{rate:.0f} B/s under a 2 MB/s cap"
            pid = daemon.proc.pid if daemon.proc else None
            daemon.reload({})  # no cap any more
            assert job.wait(60) == JobState.TRANSFERRED, "at 2 MB/s this would take 100 s"
            assert daemon.proc is not None and daemon.proc.pid == pid
    finally:
        daemon.stop()


def test_per_priority_policy_caps_and_blocks(tmp_path: Path, faulty: FaultyServer) -> None:
    """[bandwidth] low = 0 holds LOW jobs in TRANSIENT_ERROR (BG_E_BLOCKED_BY_POLICY) while NORMAL ones run
    under their own cap; a reload that lifts the block lets the held job go on."""
    daemon = DaemonProcess(tmp_path / "d", {"bandwidth": {"low": 0, "normal": "1M"}}).start()
    try:
        with daemon.manager() as manager:
            low = add_job(manager, faulty, tmp_path / "low", JobPriority.LOW, size="1m")
            normal = add_job(manager, faulty, tmp_path / "normal", JobPriority.NORMAL, size="200m")
            low.resume()
            normal.resume()
            wait_state(low, JobState.TRANSIENT_ERROR)
            assert low.error is not None and low.error.name == "BG_E_BLOCKED_BY_POLICY"
            assert "allows LOW jobs no bandwidth" in low.error.description
            assert low.info().rate_reason.startswith("blocked by policy")
            wait_until(lambda: normal.progress.bytes_transferred > 0, 30, "the NORMAL job's first bytes")
            assert normal.info().allowed_rate <= 1_000_000
            normal.cancel()
            daemon.reload({"bandwidth": {"normal": "1M"}})
            assert low.wait(60) == JobState.TRANSFERRED
    finally:
        daemon.stop()


def test_per_job_cap_applies_to_foreground_too(manager: Manager, faulty: FaultyServer, tmp_path: Path) -> None:
    job = add_job(manager, faulty, tmp_path / "f", JobPriority.FOREGROUND, size="100m")
    job.set_properties(max_bandwidth=1_000_000)
    started = time.monotonic()
    job.resume()
    time.sleep(2)
    rate = job.progress.bytes_transferred / (time.monotonic() - started)
    assert rate < 1_000_000 * 1.5
    job.cancel()


def test_inactive_jobs_are_cancelled(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path / "d", {"job_inactivity_timeout": 2}).start()
    try:
        with daemon.manager() as manager:
            job = manager.create_job("forgotten", JobType.DOWNLOAD)
            wait_state(job, JobState.CANCELLED)
    finally:
        daemon.stop()


def test_bandwidth_schedule_picks_the_window_in_force() -> None:
    config = Config.from_dict({"bandwidth": {"limit": "10M", "low": "1k", "schedule": [
        {"days": "mon-fri", "from": "08:00", "to": "17:00", "limit": "800kbit/s", "normal": "unlimited", "low": 0},
        {"days": "sat,sun", "limit": "unlimited"},
    ]}})
    work = config.bandwidth_limits(0, 9 * 60)  # Monday 09:00: work hours
    assert work == BandwidthLimits(total=100_000, low=0) and work.blocks("LOW") and not work.blocks("HIGH")
    assert config.bandwidth_limits(4, 17 * 60) == BandwidthLimits(total=10_000_000, low=1000)  # Friday after work
    assert config.bandwidth_limits(6, 12 * 60) == BandwidthLimits()  # Sunday: unlimited
    assert Config.from_dict({"bandwidth": {"high": 10}}).bandwidth.high == 250  # BITS's floor: 2 kbit/s
    assert Config().bandwidth_limits(0, 0) == BandwidthLimits()  # no policy: no cap
    assert Config.from_dict({"bandwidth": {"limit": 0}}).bandwidth.blocks("HIGH")  # 0 blocks, as in BITS
    assert parse_rate("2MiB/s") == 2 * 2**20 and parse_rate(1234) == 1234


@pytest.mark.parametrize(("text", "complaint"), [
    ("max_jobs_per_user = -1", "max_jobs_per_user"),
    ("no_such_key = 1", "unknown key 'no_such_key'"),
    ("[bandwidth]\nlimit = 'fast'", "not a rate"),
    ("[[bandwidth.schedule]]\nurgent = 1", "a schedule window takes days, from, to, limit, high, normal and low"),
    ("max_jobs_per_machine = 0", "max_jobs_per_machine"),
    ("this is not toml", "not valid TOML"),
])
def test_bad_config_is_refused_with_a_reason(tmp_path: Path, text: str, complaint: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = subprocess.run([sys.executable, "-m", "openbits.daemon", "--user", "--socket", str(tmp_path / "s"),
                             "--state-dir", str(tmp_path / "state"), "--config", str(config)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert complaint in result.stderr and "Traceback" not in result.stderr
