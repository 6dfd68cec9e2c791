"""Following a service on the system bus with dbus-fast: ask it again after each of its signals, never poll.

NetworkManager (core/cost.py) and systemd-logind (core/logons.py) are watched the same way: match
rules for the signals that may change the answer, one ask at once and one after every such signal
(a signal during an ask asks once more, so the last answer is the newest), until the bus goes away.
Asks carry NO_AUTOSTART: watching never starts the service. Without a bus the watcher says so
through `on_no_bus` and tries again every BUS_RETRY seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from dbus_fast import BusType, Message, MessageFlag, MessageType
from dbus_fast.aio import MessageBus

log = logging.getLogger("openbits.sysbus")

BUS, BUS_PATH = "org.freedesktop.DBus", "/org/freedesktop/DBus"
PROPERTIES = "org.freedesktop.DBus.Properties"
#: Seconds a call on the bus may take; seconds between tries to reach a system bus that is not there
#: (a connect to a missing socket costs nothing, and the bus may come up after the daemon).
CALL_TIMEOUT, BUS_RETRY = 5.0, 30.0

#: asks the service on a connected bus and keeps the answer (raises when the bus fails)
Ask = Callable[[MessageBus], Awaitable[None]]


T = TypeVar("T")


class Follower(Generic[T]):
    """The last answer of one service on the system bus (None while it or the bus is not there, when the
    configuration decides), each situation said once in the log however often it recurs."""

    #: how the log names the service, and what its answer tells
    service = ""
    tells = ""
    #: the match rules of the signals that may change the answer
    rules: tuple[str, ...] = ()
    logger = log

    def __init__(self, bus_address: str | None) -> None:
        #: a D-Bus address; None: the system bus
        self._bus_address = bus_address
        self.answer: T | None = None
        self._said = ""

    def wanted(self, msg: Message) -> bool:
        """A signal of our rules that may change the answer."""
        raise NotImplementedError

    async def query(self, bus: MessageBus) -> T | None:
        """The service's answer now; None when it is not on the bus."""
        raise NotImplementedError

    def fallback(self) -> str:
        """What decides while there is no answer."""
        raise NotImplementedError

    def answered(self) -> None:
        """Called after every answer (and every loss of one)."""

    async def follow(self) -> None:
        """Until cancelled: keep `answer` current (core/sysbus.watch)."""
        await watch(self.rules, self.wanted, self._ask, self._no_bus, bus_address=self._bus_address)

    async def _ask(self, bus: MessageBus) -> None:
        answer = await self.query(bus)
        self.say(f"{self.service} is not on the system bus: {self.fallback()}" if answer is None
                 else f"{self.service} on the system bus says {self.tells}")
        self._set(answer)

    def _no_bus(self, exc: Exception) -> None:
        self.say(f"no system bus ({type(exc).__name__}: {str(exc) or 'closed'}): {self.fallback()}")
        self._set(None)

    def _set(self, answer: T | None) -> None:
        self.answer = answer
        self.answered()

    def say(self, situation: str) -> None:
        if situation != self._said:
            self._said = situation
            self.logger.info("%s", situation)


def owner_changed_rule(name: str) -> str:
    """The signal of `name` coming onto the bus or leaving it."""
    return f"type='signal',sender='{BUS}',path='{BUS_PATH}',interface='{BUS}',member='NameOwnerChanged',arg0='{name}'"


def is_owner_change(msg: Message, name: str) -> bool:
    return (msg.message_type is MessageType.SIGNAL and msg.member == "NameOwnerChanged" and msg.sender == BUS
            and msg.signature == "sss" and bool(msg.body) and msg.body[0] == name)


async def watch(rules: Sequence[str], wanted: Callable[[Message], bool], ask: Ask,
                on_no_bus: Callable[[Exception], None], *, bus_address: str | None = None) -> None:
    """Until cancelled: `ask` at once and after every message `wanted` takes (our match rules' signals);
    `on_no_bus(error)` when there is no bus or it goes away, then again after BUS_RETRY seconds.

    `bus_address` is a D-Bus address; None: the system bus (DBUS_SYSTEM_BUS_ADDRESS, else
    /run/dbus/system_bus_socket)."""
    while True:
        try:
            await _follow(rules, wanted, ask, bus_address)
        except Exception as exc:  # noqa: BLE001 - no bus, or it went away: the caller falls back
            on_no_bus(exc)
        await asyncio.sleep(BUS_RETRY)


async def _follow(rules: Sequence[str], wanted: Callable[[Message], bool], ask: Ask, bus_address: str | None) -> None:
    """Connected to the bus: ask whenever a wanted signal came, until the bus goes away (then raises)."""
    bus = await MessageBus(bus_address=bus_address, bus_type=BusType.SYSTEM).connect()
    stale = asyncio.Event()
    asking = disconnected = None

    def on_message(msg: Message) -> None:
        if msg.message_type is MessageType.SIGNAL and wanted(msg):
            stale.set()

    async def ask_when_stale() -> None:
        while True:
            await stale.wait()
            stale.clear()
            await ask(bus)

    try:
        bus.add_message_handler(on_message)
        for rule in rules:
            reply = await call(bus, Message(destination=BUS, path=BUS_PATH, interface=BUS, member="AddMatch",
                                            signature="s", body=[rule]))
            if reply.message_type is MessageType.ERROR:
                raise ConnectionError(f"the bus refused AddMatch: {reply.error_name}")
        stale.set()  # the first answer
        asking = asyncio.create_task(ask_when_stale(), name="system bus ask")
        disconnected = asyncio.ensure_future(bus.wait_for_disconnect())
        done, _ = await asyncio.wait((asking, disconnected), return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # raises what ended it
        raise ConnectionError("the bus closed the connection")
    finally:
        for task in (asking, disconnected):
            if task is not None:
                task.cancel()
        bus.disconnect()


async def call(bus: MessageBus, msg: Message) -> Message:
    async with asyncio.timeout(CALL_TIMEOUT):
        return await bus.call(msg)


async def ask_service(bus: MessageBus, destination: str, path: str, interface: str, member: str,
                      signature: str = "", body: Sequence[object] = ()) -> Message:
    """One method call that never starts `destination` (NO_AUTOSTART); an ERROR reply when it is not there."""
    return await call(bus, Message(destination=destination, path=path, interface=interface, member=member,
                                   signature=signature, body=list(body), flags=MessageFlag.NO_AUTOSTART))
