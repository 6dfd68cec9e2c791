"""A stand-in for systemd-logind on a private system bus (tests/nmlab.py's PrivateBus), for the logon tests.

This machine cannot boot a real logind (no systemd as PID 1; `systemd-nspawn --boot` needs a
booted tree and a cgroup hierarchy it may delegate), so a small dbus-fast service owns
org.freedesktop.login1 and implements the subset openbitsd reads: Manager.ListUsers and
ListSessions, the SessionNew, SessionRemoved, UserNew and UserRemoved signals, User.Linger and
Session.Class/State with PropertiesChanged, under logind's object paths. The tests use it
only to drive the daemon's reaction; sessions open and close as logind would tell of a login
(pam_systemd) and a logout, and `linger` is `loginctl enable-linger`.

It runs on an event loop of its own in a thread, so the tests' blocking calls drive it.
"""

import asyncio
import itertools
import threading
from collections.abc import Coroutine
from typing import Any

from dbus_fast import BusType
from dbus_fast.aio import MessageBus
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_property, method, signal

ROOT = "/org/freedesktop/login1"


def user_path(uid: int) -> str:
    return f"{ROOT}/user/_{uid}"


class Session(ServiceInterface):
    """(ServiceInterface keeps its interface's name in `name`: the user's is `user_name`.)"""

    def __init__(self, sid: str, uid: int, name: str, klass: str) -> None:
        super().__init__("org.freedesktop.login1.Session")
        self.sid, self.uid, self.user_name, self.klass, self.state = sid, uid, name, klass, "active"
        self.path = f"{ROOT}/session/_{sid}"

    @dbus_property(access=PropertyAccess.READ)
    def Id(self) -> "s":  # noqa: N802, F821 - D-Bus names and signatures
        return self.sid

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> "s":  # noqa: N802, F821
        return self.user_name

    @dbus_property(access=PropertyAccess.READ)
    def User(self) -> "(uo)":  # noqa: N802, F821
        return [self.uid, user_path(self.uid)]

    @dbus_property(access=PropertyAccess.READ)
    def Class(self) -> "s":  # noqa: N802, F821
        return self.klass

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> "s":  # noqa: N802, F821
        return self.state


class User(ServiceInterface):
    def __init__(self, uid: int, name: str) -> None:
        super().__init__("org.freedesktop.login1.User")
        self.uid, self.user_name, self.linger = uid, name, False
        self.sessions: dict[str, Session] = {}

    @dbus_property(access=PropertyAccess.READ)
    def UID(self) -> "u":  # noqa: N802, F821
        return self.uid

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> "s":  # noqa: N802, F821
        return self.user_name

    @dbus_property(access=PropertyAccess.READ)
    def Linger(self) -> "b":  # noqa: N802, F821
        return self.linger

    @dbus_property(access=PropertyAccess.READ)
    def Sessions(self) -> "a(so)":  # noqa: N802, F821
        return [[s.sid, s.path] for s in self.sessions.values()]


class Manager(ServiceInterface):
    def __init__(self) -> None:
        super().__init__("org.freedesktop.login1.Manager")
        self.users: dict[int, User] = {}

    @method()
    def ListUsers(self) -> "a(uso)":  # noqa: N802, F821
        return [[u.uid, u.user_name, user_path(u.uid)] for u in self.users.values()]

    @method()
    def ListSessions(self) -> "a(susso)":  # noqa: N802, F821
        return [[s.sid, s.uid, s.user_name, "", s.path] for u in self.users.values() for s in u.sessions.values()]

    @signal()
    def SessionNew(self, sid: str, path: str) -> "so":  # noqa: N802, F821
        return [sid, path]

    @signal()
    def SessionRemoved(self, sid: str, path: str) -> "so":  # noqa: N802, F821
        return [sid, path]

    @signal()
    def UserNew(self, uid: int, path: str) -> "uo":  # noqa: N802, F821
        return [uid, path]

    @signal()
    def UserRemoved(self, uid: int, path: str) -> "uo":  # noqa: N802, F821
        return [uid, path]


class FakeLogind:
    """org.freedesktop.login1 on the bus at `address`: login(), logout(), linger(), as logind would tell them."""

    def __init__(self, address: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake logind", daemon=True)
        self._thread.start()
        self._manager = Manager()
        self._ids = itertools.count(1)
        self._bus: MessageBus = self._run(self._connect(address))

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _connect(self, address: str) -> MessageBus:
        bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
        bus.export(ROOT, self._manager)
        await bus.request_name("org.freedesktop.login1")
        return bus

    def _user(self, uid: int, name: str) -> User:
        user = self._manager.users.get(uid)
        if user is None:
            user = self._manager.users[uid] = User(uid, name)
            self._bus.export(user_path(uid), user)
            self._manager.UserNew(uid, user_path(uid))
        return user

    def _maybe_remove(self, user: User) -> None:
        """logind lets a user go once it has no session and does not linger."""
        if not user.sessions and not user.linger:
            del self._manager.users[user.uid]
            self._bus.unexport(user_path(user.uid))
            self._manager.UserRemoved(user.uid, user_path(user.uid))

    def login(self, uid: int, name: str, klass: str = "user") -> str:
        """A new session of the user (pam_systemd at login); its id."""
        async def do() -> str:
            user = self._user(uid, name)
            session = Session(str(next(self._ids)), uid, name, klass)
            user.sessions[session.sid] = session
            self._bus.export(session.path, session)
            self._manager.SessionNew(session.sid, session.path)
            user.emit_properties_changed({"Sessions": [[s.sid, s.path] for s in user.sessions.values()]})
            return session.sid

        return self._run(do())

    def logout(self, sid: str) -> None:
        async def do() -> None:
            user = next(u for u in self._manager.users.values() if sid in u.sessions)
            session = user.sessions.pop(sid)
            self._bus.unexport(session.path)
            self._manager.SessionRemoved(sid, session.path)
            user.emit_properties_changed({"Sessions": [[s.sid, s.path] for s in user.sessions.values()]})
            self._maybe_remove(user)

        self._run(do())

    def linger(self, uid: int, name: str, on: bool) -> None:
        """`loginctl enable-linger` / `disable-linger`."""
        async def do() -> None:
            user = self._user(uid, name)
            user.linger = on
            user.emit_properties_changed({"Linger": on})
            self._maybe_remove(user)

        self._run(do())

    def close(self) -> None:
        async def do() -> None:
            self._bus.disconnect()

        self._run(do())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
