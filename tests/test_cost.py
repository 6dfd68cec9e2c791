"""Cost flags (BITS_JOB_PROPERTY_ID_COST_FLAGS) against the network's cost state (issue 6).

The daemon runs for real: a job whose policy forbids a metered network waits
in TRANSIENT_ERROR with BG_E_BLOCKED_BY_COST_TRANSFER_POLICY, and moves on as
soon as the configuration (SIGHUP) or its own cost flags allow it. Here the
daemon has no system bus at all (DBUS_SYSTEM_BUS_ADDRESS names a socket that
is not there, as on a machine without D-Bus), or a bus without NetworkManager,
and the configuration decides - the fall-back path is what these tests prove;
tests/test_cost_networkmanager.py has a real NetworkManager.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbits import CostState, JobState, JobType, TransferPolicy
from openbits.core.cost import CostMonitor, cost_allows, network_cost
from openbits.model.config import Config

from .daemon import DaemonProcess
from .nmlab import PrivateBus
from .waiting import wait_until


@pytest.mark.parametrize(("policy", "allowed"), [
    (TransferPolicy.ALWAYS, {"unrestricted", "metered", "roaming"}),
    (TransferPolicy.NOT_ROAMING, {"unrestricted", "metered"}),
    (TransferPolicy.NO_SURCHARGE, {"unrestricted", "metered"}),
    (TransferPolicy.STANDARD, {"unrestricted", "metered"}),
    (TransferPolicy.UNRESTRICTED, {"unrestricted"}),
])
def test_each_named_policy_allows_the_states_bits_documents(policy: TransferPolicy, allowed: set[str]) -> None:
    states = {"unrestricted": network_cost(False, False), "metered": network_cost(True, False),
              "roaming": network_cost(True, True)}
    assert {name for name, state in states.items() if cost_allows(policy, state)} == allowed
    # The named values are the unions bits-cost-state.md lists.
    assert TransferPolicy.STANDARD == (CostState.IGNORE_CONGESTION | CostState.USAGE_BASED
                                       | CostState.OVERCAP_THROTTLED | CostState.BELOW_CAP
                                       | CostState.CAPPED_USAGE_UNKNOWN | CostState.UNRESTRICTED)


async def watch_briefly(monitor: CostMonitor, seconds: float = 0.5) -> list[CostState]:
    """The changes `monitor.watch` reports in `seconds`; it must not fail meanwhile."""
    changes: list[CostState] = []
    watching = asyncio.create_task(monitor.watch(changes.append))
    await asyncio.sleep(seconds)
    assert not watching.done(), watching
    watching.cancel()
    await asyncio.gather(watching, return_exceptions=True)
    return changes


async def test_without_a_system_bus_the_configuration_decides(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    config = Config.from_dict({"network": {"metered": True}})
    monitor = CostMonitor(lambda: config, bus_address=f"unix:path={tmp_path / 'no-bus'}")
    with caplog.at_level(logging.DEBUG):
        assert await watch_briefly(monitor) == []  # nothing changed: the configuration said metered all along
    assert (monitor.state, monitor.source) == (CostState.CAPPED_USAGE_UNKNOWN, "configuration")
    said = [record for record in caplog.records if record.name.startswith(("openbits.cost", "dbus_fast"))]
    assert [(r.levelname, r.getMessage().split(" (")[0]) for r in said] == [("INFO", "no system bus")], said


@pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="dbus-daemon is not installed (make test installs it)")
async def test_on_a_bus_without_networkmanager_the_configuration_decides(tmp_path: Path) -> None:
    bus = PrivateBus(tmp_path)  # a bus where nobody owns org.freedesktop.NetworkManager
    try:
        config = Config.from_dict({"network": {"metered": True}})
        monitor = CostMonitor(lambda: config, bus_address=bus.address)
        assert await watch_briefly(monitor) == []
        assert (monitor.state, monitor.source) == (CostState.CAPPED_USAGE_UNKNOWN, "configuration")
    finally:
        bus.close()


def test_bad_network_config_is_refused() -> None:
    for bad in ({"network": {"metered": "yes"}}, {"network": {"cost": 1}}):
        with pytest.raises(ValueError, match=r"\[network\]"):
            Config.from_dict(bad)


@pytest.fixture
def metered_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DaemonProcess]:
    """No system bus (whatever runs on this machine), and the configuration says metered."""
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path / 'no-bus'}")
    daemon = DaemonProcess(tmp_path / "d", config={"network": {"metered": True}}).start()
    try:
        yield daemon
    finally:
        daemon.stop()
    # Said once that the configuration decides, and nothing else of the missing bus: no error, no traceback.
    log = daemon.log()
    assert log.count("no system bus") == 1, log
    assert not [line for line in log.splitlines() if " ERROR " in line or " WARNING " in line
                or "Traceback" in line], log


def test_blocked_on_a_metered_network_then_resumes_on_sighup(metered_daemon: DaemonProcess, tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(os.urandom(100_000))
    with metered_daemon.manager() as manager:
        job = manager.create_job("cost", JobType.DOWNLOAD)
        assert job.info().cost_flags == TransferPolicy.NOT_ROAMING, "BITS's default: anything but roaming"
        job.add_file(source.as_uri(), tmp_path / "out.bin")
        job.set_properties(cost_flags="UNRESTRICTED", no_progress_timeout=1)
        job.resume()
        wait_until(lambda: job.info().state == JobState.TRANSIENT_ERROR, 10, "the job to be blocked")
        info = job.info()
        assert info.error is not None and info.error.name == "BG_E_BLOCKED_BY_COST_TRANSFER_POLICY"
        assert info.rate_reason.startswith("blocked by cost"), info.rate_reason
        assert "metered" in info.rate_reason and "UNRESTRICTED" in info.rate_reason
        time.sleep(1.5)  # past the no-progress timeout: waiting for a cheaper network is no lack of progress
        assert job.info().state == JobState.TRANSIENT_ERROR

        metered_daemon.reload({"network": {"metered": False}})
        wait_until(lambda: job.info().state == JobState.TRANSFERRED, 10, "the job to continue after SIGHUP")
        job.complete()
        assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()


def test_changing_the_cost_flags_takes_effect_at_once(metered_daemon: DaemonProcess, tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(os.urandom(10_000))
    with metered_daemon.manager() as manager:
        job = manager.create_job("cost", JobType.DOWNLOAD)
        job.add_file(source.as_uri(), tmp_path / "out.bin")
        job.cost_flags = TransferPolicy.UNRESTRICTED
        job.resume()
        wait_until(lambda: job.info().state == JobState.TRANSIENT_ERROR, 10, "the job to be blocked")
        job.cost_flags = TransferPolicy.STANDARD  # metered is within STANDARD
        wait_until(lambda: job.info().state == JobState.TRANSFERRED, 5, "the job to continue")
        assert job.cost_flags == TransferPolicy.STANDARD
