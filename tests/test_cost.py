"""Cost flags (BITS_JOB_PROPERTY_ID_COST_FLAGS) against the network's cost state (issue 6).

The daemon runs for real: a job whose policy forbids a metered network waits
in TRANSIENT_ERROR with BG_E_BLOCKED_BY_COST_TRANSFER_POLICY, and moves on as
soon as the configuration (SIGHUP) or its own cost flags allow it. No
NetworkManager runs here, so the daemon's `busctl` finds none and the
configuration decides - the fall-back path is what these tests prove.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from openbits import CostState, JobState, JobType, TransferPolicy
from openbits.core.cost import CostMonitor, cost_allows, network_cost
from openbits.daemon.config import Config

from .daemon import DaemonProcess


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


def test_without_networkmanager_the_configuration_decides() -> None:
    config = Config.from_dict({"network": {"metered": True}})
    monitor = CostMonitor(lambda: config)  # the real busctl, if any: no NetworkManager runs here
    assert asyncio.run(monitor.refresh()) == CostState.CAPPED_USAGE_UNKNOWN
    assert monitor.source == "configuration"
    assert CostMonitor(lambda: config, busctl="/nonexistent/busctl").state == CostState.CAPPED_USAGE_UNKNOWN


def test_bad_network_config_is_refused() -> None:
    for bad in ({"network": {"metered": "yes"}}, {"network": {"cost": 1}}):
        with pytest.raises(ValueError, match=r"\[network\]"):
            Config.from_dict(bad)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def metered_daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path / "d", config={"network": {"metered": True}}).start()
    try:
        yield daemon
    finally:
        daemon.stop()


def test_blocked_on_a_metered_network_then_resumes_on_sighup(metered_daemon: DaemonProcess, tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(os.urandom(100_000))
    with metered_daemon.manager() as manager:
        job = manager.create_job("cost", JobType.DOWNLOAD)
        assert job.info().cost_flags == TransferPolicy.NOT_ROAMING, "BITS's default: anything but roaming"
        job.add_file(source.as_uri(), tmp_path / "out.bin")
        job.set_properties(cost_flags="UNRESTRICTED", no_progress_timeout=1)
        job.resume()
        wait_for(lambda: job.info().state == JobState.TRANSIENT_ERROR, 10, "the job to be blocked")
        info = job.info()
        assert info.error is not None and info.error.name == "BG_E_BLOCKED_BY_COST_TRANSFER_POLICY"
        assert info.rate_reason.startswith("blocked by cost"), info.rate_reason
        assert "metered" in info.rate_reason and "UNRESTRICTED" in info.rate_reason
        time.sleep(1.5)  # past the no-progress timeout: waiting for a cheaper network is no lack of progress
        assert job.info().state == JobState.TRANSIENT_ERROR

        metered_daemon.reload({"network": {"metered": False}})
        wait_for(lambda: job.info().state == JobState.TRANSFERRED, 10, "the job to continue after SIGHUP")
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
        wait_for(lambda: job.info().state == JobState.TRANSIENT_ERROR, 10, "the job to be blocked")
        job.cost_flags = TransferPolicy.STANDARD  # metered is within STANDARD
        wait_for(lambda: job.info().state == JobState.TRANSFERRED, 5, "the job to continue")
        assert job.cost_flags == TransferPolicy.STANDARD
