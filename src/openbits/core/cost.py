"""What the network costs now (BITS_COST_STATE), and whether a job's cost flags let it transfer.

BITS asks Windows's connection manager; on Linux NetworkManager knows whether
the primary connection is metered (its `Metered` property, NM_METERED_*). The
daemon watches it on the system bus with dbus-fast: it subscribes to
NetworkManager's PropertiesChanged (`Metered`, and `PrimaryConnection`, which
`Metered` follows) and to NameOwnerChanged of its name (NetworkManager starting
or stopping), and asks `Metered` again on each, so a change is seen at once and
nothing is polled. Asks carry NO_AUTOSTART: watching never starts NetworkManager.

When NetworkManager is not on the bus, or there is no system bus at all (a
container, CI), the configuration says: `[network] metered = true|false`,
`roaming = true|false`, reloaded on SIGHUP. NetworkManager does not know
roaming; `roaming` applies either way. Without a bus the daemon says so once
and tries again every sysbus.BUS_RETRY seconds, quietly (core/sysbus.py follows the bus).

The network is in one cost state at a time, and a job may transfer when its
cost flags contain that state (BITS_COST_STATE_TRANSFER_* are such unions).
A blocked job waits in TRANSIENT_ERROR with BG_E_BLOCKED_BY_COST_TRANSFER_POLICY,
its no-progress clock stopped, and the scheduler retries it as soon as the
state changes (core/scheduler.py, `_watch_cost`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from ..model.config import Config
from ..enums import BLOCKED_BY_COST, CostState, ErrorContext, cost_flags_name
from ..errors import BitsError, ErrorCode
from ..model.job import Job
from . import sysbus

log = logging.getLogger("openbits.cost")

NM, NM_PATH = "org.freedesktop.NetworkManager", "/org/freedesktop/NetworkManager"
#: The signals that may change the answer. The bus delivers a signal whose sender is a well-known
#: name from whichever connection owns the name then, so the rule outlives a NetworkManager restart.
_MATCH_RULES = (
    (f"type='signal',sender='{NM}',path='{NM_PATH}',interface='{sysbus.PROPERTIES}',member='PropertiesChanged',"
     f"arg0='{NM}'"),
    sysbus.owner_changed_rule(NM),
)
#: the properties of org.freedesktop.NetworkManager whose change may change whether the network is metered
_WATCHED = frozenset({"Metered", "PrimaryConnection"})
#: NM_METERED_YES and NM_METERED_GUESS_YES (UNKNOWN 0, NO 2, GUESS_NO 4 are not metered).
_NM_METERED = (1, 3)


def network_cost(metered: bool, roaming: bool) -> CostState:
    """The one BITS cost state of the network: roaming above all; a metered link with an unknown cap."""
    if roaming:
        return CostState.ROAMING
    return CostState.CAPPED_USAGE_UNKNOWN if metered else CostState.UNRESTRICTED


def cost_allows(cost_flags: int, state: CostState) -> bool:
    """BITS_JOB_PROPERTY_ID_COST_FLAGS: the job transfers in the states its flags contain. The ints' own `&`:
    CostState's (enum.Flag's, in Python) builds a flag for the answer, 7x as slow, and every answer asks."""
    return bool(int.__and__(cost_flags, state))


def blocked_by_cost(cost_flags: int, state: CostState) -> BitsError:
    """The job's error while the network's cost state is outside its flags."""
    return BitsError(ErrorCode.BG_E_BLOCKED_BY_COST_TRANSFER_POLICY,
                     f"the network is {describe(state)} and the job's cost flags ({cost_flags_name(cost_flags)}) "
                     "do not allow it; the job continues when the cost state changes (setcostflags to allow it)",
                     ErrorContext.GENERAL_QUEUE_MANAGER)


def describe(state: CostState) -> str:
    return {CostState.ROAMING: "roaming", CostState.CAPPED_USAGE_UNKNOWN: "metered"}.get(state, "unrestricted")


class CostMonitor(sysbus.Follower[bool]):
    """The network's cost state: NetworkManager's while it is on the system bus, else the configuration's.
    Its answer is whether NetworkManager says the network is metered."""

    service, tells, rules, logger = "NetworkManager", "whether the network is metered", _MATCH_RULES, log

    def __init__(self, config: Callable[[], Config], *, bus_address: str | None = None) -> None:
        super().__init__(bus_address)
        self._config = config
        #: while `watch` runs: whom to tell of a change, and the state last told
        self._on_change: Callable[[CostState], None] | None = None
        self._told: CostState | None = None

    @property
    def state(self) -> CostState:
        config = self._config()
        metered = config.network_metered if self.answer is None else self.answer
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
        return "configuration" if self.answer is None else "NetworkManager"

    def recheck(self) -> None:
        """Tell the watcher if the state changed: after a configuration reload (SIGHUP), or an answer."""
        if self._on_change is not None and (state := self.state) != self._told:
            self._told = state
            self._on_change(state)

    def answered(self) -> None:
        self.recheck()

    async def watch(self, on_change: Callable[[CostState], None]) -> None:
        """Until cancelled: follow NetworkManager on the system bus, and call `on_change(state)` each time
        the cost state changes (at once on NetworkManager's signal; on `recheck()` for the configuration)."""
        self._on_change, self._told = on_change, self.state
        try:
            await self.follow()
        finally:
            self._on_change = None

    def wanted(self, msg: Message) -> bool:
        """NetworkManager came, went, or changed a watched property."""
        return sysbus.is_owner_change(msg, NM) or (
            msg.member == "PropertiesChanged" and msg.path == NM_PATH and msg.signature == "sa{sv}as"
            and msg.body[0] == NM and not _WATCHED.isdisjoint([*msg.body[1], *msg.body[2]]))

    async def query(self, bus: MessageBus) -> bool | None:
        return await _metered(bus)

    def fallback(self) -> str:
        return "the [network] configuration decides the cost state"


async def _metered(bus: MessageBus) -> bool | None:
    """NetworkManager's `Metered` now; None when it is not on the bus (NO_AUTOSTART: it is not started for us)."""
    reply = await sysbus.ask_service(bus, NM, NM_PATH, sysbus.PROPERTIES, "Get", "ss", [NM, "Metered"])
    if reply.message_type is MessageType.ERROR:  # ServiceUnknown, NameHasNoOwner: not running
        log.debug("NetworkManager's Metered: %s", reply.error_name)
        return None
    value = reply.body[0] if reply.body else None
    if not isinstance(value, Variant) or value.signature != "u":
        return None
    return value.value in _NM_METERED
