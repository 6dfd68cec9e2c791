"""What the network costs now (BITS_COST_STATE), and whether a job's cost flags let it transfer.

BITS asks Windows's connection manager; on Linux NetworkManager knows whether
the primary connection is metered (its `Metered` property, NM_METERED_*). We
ask it with `busctl`, which ships with systemd wherever NetworkManager runs on
the system bus - no D-Bus library to install for one property. When
NetworkManager does not answer (not installed, not running, no system bus) the
configuration says: `[network] metered = true|false`, `roaming = true|false`,
reloaded on SIGHUP. NetworkManager does not know roaming; `roaming` applies
either way.

The network is in one cost state at a time, and a job may transfer when its
cost flags contain that state (BITS_COST_STATE_TRANSFER_* are such unions).
A blocked job waits in TRANSIENT_ERROR with BG_E_BLOCKED_BY_COST_TRANSFER_POLICY,
its no-progress clock stopped, and the scheduler retries it as soon as the
state changes (core/scheduler.py, `_watch_network`).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable

from ..daemon.config import Config
from ..enums import BLOCKED_BY_COST, CostState, ErrorContext, cost_flags_name
from ..errors import BitsError, ErrorCode
from .job import Job

#: NM_METERED_YES and NM_METERED_GUESS_YES (UNKNOWN 0, NO 2, GUESS_NO 4 are not metered).
_NM_METERED = (1, 3)
_BUSCTL = ("busctl", "--system", "--timeout=2", "get-property", "org.freedesktop.NetworkManager",
           "/org/freedesktop/NetworkManager", "org.freedesktop.NetworkManager", "Metered")
#: Seconds between asks while NetworkManager answers, and between tries while it does not:
#: a fork every few seconds is cheap, one every second for a daemon that never comes is waste.
NM_POLL, NM_RETRY = 5.0, 30.0


def network_cost(metered: bool, roaming: bool) -> CostState:
    """The one BITS cost state of the network: roaming above all; a metered link with an unknown cap."""
    if roaming:
        return CostState.ROAMING
    return CostState.CAPPED_USAGE_UNKNOWN if metered else CostState.UNRESTRICTED


def cost_allows(cost_flags: int, state: CostState) -> bool:
    """BITS_JOB_PROPERTY_ID_COST_FLAGS: the job transfers in the states its flags contain."""
    return bool(cost_flags & state)


def blocked_by_cost(cost_flags: int, state: CostState) -> BitsError:
    """The job's error while the network's cost state is outside its flags."""
    return BitsError(ErrorCode.BG_E_BLOCKED_BY_COST_TRANSFER_POLICY,
                     f"the network is {describe(state)} and the job's cost flags ({cost_flags_name(cost_flags)}) "
                     "do not allow it; the job continues when the cost state changes (setcostflags to allow it)",
                     ErrorContext.GENERAL_QUEUE_MANAGER)


def describe(state: CostState) -> str:
    return {CostState.ROAMING: "roaming", CostState.CAPPED_USAGE_UNKNOWN: "metered"}.get(state, "unrestricted")


class CostMonitor:
    """The network's cost state: NetworkManager's when it answers, else the configuration's."""

    def __init__(self, config: Callable[[], Config], *, busctl: str | None = None) -> None:
        self._config = config
        self._busctl = busctl if busctl is not None else shutil.which("busctl")
        #: NetworkManager's last answer: metered or not; None while it does not answer
        self.nm_metered: bool | None = None
        self._next_ask = 0.0

    @property
    def state(self) -> CostState:
        config = self._config()
        metered = config.network_metered if self.nm_metered is None else self.nm_metered
        return network_cost(metered, config.network_roaming)

    def explain(self, job: Job, rate: Callable[[Job], tuple[int, str]]) -> tuple[int, str]:
        """`openbits info`: a job the cost state blocks may use nothing; any other gets `rate(job)`."""
        state = self.state
        if not job.state.is_final and not cost_allows(job.cost_flags, state):
            return 0, (f"{BLOCKED_BY_COST}: the network is {describe(state)} ({self.source}), the job's cost flags "
                       f"are {cost_flags_name(job.cost_flags)}")
        return rate(job)

    @property
    def source(self) -> str:
        return "configuration" if self.nm_metered is None else "NetworkManager"

    async def refresh(self) -> CostState:
        """Ask NetworkManager again if it is time; return the state now."""
        now = time.monotonic()
        if self._busctl and now >= self._next_ask:
            self.nm_metered = await self._ask_nm()
            self._next_ask = now + (NM_RETRY if self.nm_metered is None else NM_POLL)
        return self.state

    async def _ask_nm(self) -> bool | None:
        """`busctl get-property ... Metered` prints "u 4"; anything else means NetworkManager is not there."""
        assert self._busctl is not None
        try:
            proc = await asyncio.create_subprocess_exec(self._busctl, *_BUSCTL[1:], stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.DEVNULL)
        except OSError:
            return None
        try:
            async with asyncio.timeout(5):
                out, _ = await proc.communicate()
        except TimeoutError:
            return None
        finally:
            if proc.returncode is None:  # timed out or cancelled: leave no process behind
                proc.kill()
                await proc.wait()
        kind, _, value = out.decode(errors="replace").strip().partition(" ")
        if proc.returncode != 0 or kind != "u" or not value.isdigit():
            return None
        return int(value) in _NM_METERED
