"""Whether a job's owner is logged on: BITS transfers a job only then (users-and-network-connections.md).

The Linux way of "logged on" is systemd-logind's: the owner has a session (console, SSH through
pam_systemd, graphical: class "user", not "closing"), or their user lingers (`loginctl
enable-linger`: "my services run while I am away"). Root and system accounts (a uid below
UID_MIN or above UID_MAX of /etc/login.defs, or a member of `[users] service_group`) are always
logged on, as BITS's LocalSystem, LocalService and NetworkService are. A system daemon watches
logind on the system bus (core/sysbus.py): SessionNew, SessionRemoved, UserNew and UserRemoved,
the `Linger`, `State` and `Sessions` properties, and logind coming and going; each asks again,
nothing is polled. Where logind is not on the bus (a container), `[users] require_logon` decides
(false by default: everyone counts as logged on), said once in the log. A user daemon runs in its
user's own session and does not ask.

A job whose owner is not logged on stays QUEUED ("if a user logs off while their job is
transferring, the job transitions to the queued state"), its `info` says "owner not logged on",
and the scheduler (core/scheduler.py) files it again the moment its owner logs on. When the
user who set a helper token is no longer logged on, the token is dropped, as a Windows logoff
ends its tokens, and a job that needs it goes to ERROR with BG_E_TOKEN_REQUIRED.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from ..enums import NOT_LOGGED_ON
from ..model.identity import is_service_account, uid_range
from ..model.config import Config
from ..model.job import Job
from . import sysbus
from .service import JobService
from .tokens import require_tokens

log = logging.getLogger("openbits.logons")

LOGIND, LOGIND_PATH = "org.freedesktop.login1", "/org/freedesktop/login1"
MANAGER, USER, SESSION = f"{LOGIND}.Manager", f"{LOGIND}.User", f"{LOGIND}.Session"
_MATCH_RULES = (
    f"type='signal',sender='{LOGIND}',path='{LOGIND_PATH}',interface='{MANAGER}'",
    (f"type='signal',sender='{LOGIND}',interface='{sysbus.PROPERTIES}',member='PropertiesChanged',"
     f"path_namespace='{LOGIND_PATH}'"),
    sysbus.owner_changed_rule(LOGIND),
)
_MANAGER_SIGNALS = frozenset({"SessionNew", "SessionRemoved", "UserNew", "UserRemoved"})
#: the properties of users and sessions whose change may change who is logged on
_WATCHED = frozenset({"Linger", "State", "Sessions", "Class"})


class LogonMonitor(sysbus.Follower[frozenset[int]]):
    """Who is logged on: logind's sessions and lingering users while it is on the system bus, else the
    configuration's `[users] require_logon`; service accounts always. Its answer is the uids logind counts."""

    service, tells, rules, logger = "systemd-logind", "who is logged on", _MATCH_RULES, log

    def __init__(self, config: Callable[[], Config], *, follow: bool = True, bus_address: str | None = None,
                 login_defs: str = "/etc/login.defs") -> None:
        super().__init__(bus_address)
        self._config = config
        #: a system daemon follows logind; a user daemon runs in its user's session and counts them logged on
        self._follow = follow
        self._regular = uid_range(login_defs)
        #: set once the first answer (or the lack of a bus) is known: the scheduler's first pass waits for it
        self.ready = asyncio.Event()
        self._on_change: Callable[[], None] | None = None
        self._told: tuple[object, ...] | None = None

    @property
    def source(self) -> str:
        return "configuration" if self.answer is None else "systemd-logind"

    def always_logged_on(self, uid: int) -> bool:
        """Root and system accounts, and members of [users] service_group: BITS's service accounts."""
        return not self._follow or is_service_account(uid, self._config().users_service_group, self._regular)

    def logged_on(self, uid: int) -> bool:
        if self.always_logged_on(uid):
            return True
        if self.answer is None:
            return not self._config().users_require_logon
        return uid in self.answer

    def explain(self, job: Job, rate: Callable[[Job], tuple[int, str]]) -> tuple[int, str]:
        """`openbits info`: a job whose owner is not logged on may use nothing; any other gets `rate(job)`."""
        if not job.state.is_final and not self.logged_on(job.owner_uid):
            why = ("[users] require_logon = true and no systemd-logind to ask" if self.answer is None
                   else "systemd-logind has no session of theirs and they do not linger (loginctl enable-linger)")
            return 0, f"{NOT_LOGGED_ON}: {why}; the job goes on when they log on"
        return rate(job)

    def _view(self) -> tuple[object, ...]:
        config = self._config()
        return self.answer, config.users_require_logon, config.users_service_group

    def recheck(self) -> None:
        """Tell the watcher if the answer may have changed: after a configuration reload (SIGHUP), or an answer."""
        if self._on_change is not None and (view := self._view()) != self._told:
            self._told = view
            self._on_change()

    def answered(self) -> None:
        self.ready.set()
        self.recheck()

    async def watch(self, on_change: Callable[[], None]) -> None:
        """Until cancelled: follow logind on the system bus, and call `on_change()` when who is logged on may
        have changed (at once on logind's signals; on `recheck()` for the configuration)."""
        if not self._follow:
            self.ready.set()
            return
        self._on_change, self._told = on_change, self._view()
        try:
            await self.follow()
        finally:
            self._on_change = None

    def wanted(self, msg: Message) -> bool:
        """logind came or went, a session or user came or went, or changed."""
        if sysbus.is_owner_change(msg, LOGIND):
            return True
        if msg.interface == MANAGER:
            return msg.member in _MANAGER_SIGNALS
        return (msg.member == "PropertiesChanged" and msg.signature == "sa{sv}as"
                and not _WATCHED.isdisjoint([*msg.body[1], *msg.body[2]]))

    async def query(self, bus: MessageBus) -> frozenset[int] | None:
        return await logged_on_uids(bus)

    def fallback(self) -> str:
        if self._config().users_require_logon:
            return "[users] require_logon = true: only service accounts' jobs transfer"
        return "[users] require_logon = false: every owner counts as logged on"


async def logged_on_uids(bus: MessageBus) -> frozenset[int] | None:
    """The uids logind counts as logged on now: lingering users, and users with an open "user" session;
    None when logind is not on the bus. An object gone between the list and the ask is skipped (its
    removal signal asks again)."""
    users = await sysbus.ask_service(bus, LOGIND, LOGIND_PATH, MANAGER, "ListUsers")
    sessions = await sysbus.ask_service(bus, LOGIND, LOGIND_PATH, MANAGER, "ListSessions")
    if users.message_type is MessageType.ERROR or sessions.message_type is MessageType.ERROR:
        log.debug("logind's lists: %s", users.error_name or sessions.error_name)
        return None
    found: set[int] = set()
    lingering = await asyncio.gather(*(_properties(bus, path, USER) for _, _, path in users.body[0]))
    found.update(uid for (uid, _, _), props in zip(users.body[0], lingering) if props.get("Linger") is True)
    described = await asyncio.gather(*(_properties(bus, path, SESSION) for _, _, _, _, path in sessions.body[0]))
    found.update(uid for (_, uid, _, _, _), props in zip(sessions.body[0], described)
                 if props.get("Class") == "user" and props.get("State") not in (None, "closing"))
    return frozenset(found)


async def _properties(bus: MessageBus, path: str, interface: str) -> dict[str, object]:
    reply = await sysbus.ask_service(bus, LOGIND, path, sysbus.PROPERTIES, "GetAll", "s", [interface])
    if reply.message_type is MessageType.ERROR or not reply.body:
        return {}
    return {name: value.value for name, value in reply.body[0].items() if isinstance(value, Variant)}


async def drop_tokens_of_logged_off(service: JobService, logons: LogonMonitor) -> None:
    """Helper tokens set by a user who is no longer logged on go; the jobs that need one go to ERROR."""
    dropped = service.tokens.drop_helpers(lambda setter: not logons.logged_on(setter))
    for job in (service.jobs[job_id] for job_id in dropped if job_id in service.jobs):
        log.info("job %s: the helper token's user logged off; the token is dropped", job.id)
        if require_tokens([job], "the user who set its helper token logged off, and a logoff ends its tokens"):
            await service.commit(job)
