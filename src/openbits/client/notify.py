"""Following the daemon's event stream, and callback interfaces (IBackgroundCopyCallback) on top of it.

`follow()` reads `GET /v1/events` (server-sent events) and reconnects after a
lost connection or a daemon restart with the last seq it saw, so nothing is
missed while the events are within the daemon's retention.

A callback interface is any object with some of the methods
`job_transferred(job)`, `job_error(job, error)`, `job_modification(job, reserved)`,
`file_transferred(job, file)` and `file_ranges_transferred(job, file, ranges)`,
plain or `async def`. A `Notifier` registers it for one job (a `callbacks=true`
stream), calls the method for every event the job's notify flags ask for, and
answers job_transferred / job_error with `POST /v1/events/{seq}/ack`: ok when
the method returned, failed (BITS's E_FAIL) when it raised. The daemon then
falls back to the notify command line or sends the event again after the
minimum retry delay (openbits.core.deliveries has the whole protocol).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..schema.models import STREAM_EXCHANGE, STREAM_SHUTDOWN, AckResult, EventAck, EventInfo, ExchangeInfo, StreamReady
from ..errors import BitsError, ErrorCode
from .connection import Connection
from .discovery import DaemonUnavailableError
from .types import File, bits_error

log = logging.getLogger("openbits.client")

#: Seconds between attempts to reach a daemon that went away.
RECONNECT_DELAY = 0.5
#: Seconds set_notify_interface waits for the daemon to register the interface.
REGISTER_TIMEOUT = 30.0
#: Events a callback interface answers; the daemon retries these, and only these.
ANSWERED = ("job_transferred", "job_error")


async def _messages(connection: Connection, params: dict[str, str]) -> AsyncIterator[tuple[str, str]]:
    """(event name, data) of one stream connection, until it ends."""
    async with connection.stream("/v1/events", params) as body:
        name, data = "message", []
        async for raw in body:
            line = raw.decode().rstrip("\n")
            if not line:
                if data:
                    yield name, "\n".join(data)
                name, data = "message", []
            elif line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())


async def follow(connection: Connection, *, since: int | None = None, job: str | None = None, all_users: bool = False,
                 callbacks: bool = False, keep_following: bool = True,
                 on_ready: Callable[[StreamReady], None] | None = None,
                 on_lost: Callable[[str], None] | None = None,
                 on_back: Callable[[], None] | None = None,
                 on_exchange: Callable[[ExchangeInfo], None] | None = None) -> AsyncIterator[EventInfo]:
    """Events after `since` (None: from now on), reconnecting with the last seq seen until the caller stops.

    keep_following=False: the stored events only, then stop. A refusal (no such job, a final job with
    callbacks) raises BitsError; so does a stream the daemon ends because another interface took over.
    on_lost(reason) is called once when the daemon goes away (it stops, or the connection breaks), and
    on_back() when a stream is open again after that. on_exchange(info) gets each HTTP request of the
    jobs' transfers and its answer (live only: none are replayed).
    """
    last = since
    lost = False

    def went_away(reason: str) -> None:
        nonlocal lost
        if not lost and on_lost is not None:
            on_lost(reason)
        lost = True

    while True:
        params = {key: value for key, value in (("job", job), ("since", None if last is None else str(last)),
                                                ("all_users", "true" if all_users else None),
                                                ("callbacks", "true" if callbacks else None),
                                                ("exchanges", "true" if on_exchange else None),
                                                ("timeout", None if keep_following else "0")) if value is not None}
        try:
            async for name, data in _messages(connection, params):
                if name == "ready":
                    ready = StreamReady.model_validate_json(data)
                    last = ready.head if last is None else last
                    if lost and on_back is not None:
                        on_back()
                    lost = False
                    if on_ready is not None:
                        on_ready(ready)
                elif name == "superseded":
                    raise Superseded(data)
                elif name == STREAM_EXCHANGE:
                    if on_exchange is not None:
                        on_exchange(ExchangeInfo.model_validate_json(data))
                elif name == STREAM_SHUTDOWN:
                    went_away(data.removeprefix(f"{STREAM_SHUTDOWN}: "))
                elif name != "dropped":  # dropped: too slow; reconnect and catch up from the store
                    event = EventInfo.model_validate_json(data)
                    last = max(last or 0, event.seq)
                    yield event
        except DaemonUnavailableError as error:
            if not keep_following:
                raise
            went_away(str(error))
            await asyncio.sleep(RECONNECT_DELAY)
            continue
        if not keep_following:
            return


class Superseded(BitsError):
    """Another client registered a callback interface for the job; this one gets no more notifications."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.E_FAIL, message)


async def with_idle(events: AsyncIterator[EventInfo], idle: float) -> AsyncIterator[EventInfo | None]:
    """The events, and None whenever `idle` seconds pass without one (to redraw, to check a clock)."""
    waiting: asyncio.Task[EventInfo] | None = None
    try:
        while True:
            if waiting is None:
                waiting = asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait({waiting}, timeout=idle)
            if not done:
                yield None
                continue
            waiting, finished = None, waiting
            try:
                yield finished.result()
            except StopAsyncIteration:
                return
    finally:
        if waiting is not None:
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await waiting


class Notifier:
    """One job's callback interface, fed from a callbacks=true stream by a task the registry owns."""

    def __init__(self, connection: Connection, job_id: str, interface: object, job: object, in_thread: bool) -> None:
        self.interface = interface
        self._connection, self._job_id, self._job, self._in_thread = connection, job_id, job, in_thread
        self._subscription = ""
        self.registered = asyncio.Event()
        #: answers given, by seq: a pending event sent again after a reconnect is answered, not called again
        self._answers: dict[int, tuple[bool, str]] = {}

    def _ready(self, ready: StreamReady) -> None:
        self._subscription = ready.subscription
        self.registered.set()

    async def run(self) -> None:
        try:
            async for event in follow(self._connection, job=self._job_id, callbacks=True, on_ready=self._ready):
                if event.kind in ANSWERED and event.seq in self._answers:
                    await self._answer(event.seq, *self._answers[event.seq])
                    continue
                if not event.notify:
                    continue
                outcome = await self._call(event)
                if event.kind in ANSWERED:
                    self._answers[event.seq] = outcome
                    await self._answer(event.seq, *outcome)
                if event.state.is_final:
                    return
        except BitsError as exc:  # the job is final or gone, or another interface took over
            if not self.registered.is_set():
                raise  # set_notify_interface reports it
            log.info("job %s: callbacks end: %s", self._job_id, exc.description)

    async def _call(self, event: EventInfo) -> tuple[bool, str]:
        """Run the callback method for the event: (True, "") when it returned, (False, why) when it raised."""
        method = getattr(self.interface, event.kind, None)
        if method is None:
            return True, ""
        file = File.of(event.file) if event.file is not None else None
        args: tuple[Any, ...] = {
            "job_transferred": (self._job,),
            "job_error": (self._job, bits_error(event.error) if event.error else None),
            "job_modification": (self._job, 0),
            "file_ranges_transferred": (self._job, file, [(r.offset, r.length) for r in event.ranges or ()]),
        }.get(event.kind, (self._job, file))
        try:
            if self._in_thread and not inspect.iscoroutinefunction(method):
                await asyncio.to_thread(method, *args)
            elif inspect.isawaitable(result := method(*args)):
                await result
        except Exception as exc:  # the callback's failure is the E_FAIL BITS documents, not ours
            log.warning("job %s: %s callback raised %r", self._job_id, event.kind, exc, exc_info=True)
            return False, f"{type(exc).__name__}: {exc}"
        return True, ""

    async def _answer(self, seq: int, ok: bool, message: str) -> None:
        body = EventAck(subscription=self._subscription, ok=ok, message=message[:4096])
        try:
            await self._connection.request("POST", f"/v1/events/{seq}/ack", AckResult, body=body)
        except (BitsError, DaemonUnavailableError) as exc:  # the daemon sends the event again after a restart
            log.info("job %s: answer to event %d not delivered: %s", self._job_id, seq, exc)


class Notifiers:
    """The callback interfaces of one client, each with the task that serves it; closed with the manager."""

    def __init__(self) -> None:
        self._running: dict[str, tuple[Notifier, asyncio.Task[None]]] = {}

    def interface(self, job_id: str) -> object | None:
        entry = self._running.get(job_id)
        return None if entry is None else entry[0].interface

    async def set(self, connection: Connection, job_id: str, interface: object | None, job: object,
                  in_thread: bool) -> None:
        """SetNotifyInterface: replace the job's interface (None: remove it); returns once the daemon has it."""
        await self._stop(job_id)
        if interface is None:
            return
        notifier = Notifier(connection, job_id, interface, job, in_thread)
        task = asyncio.get_running_loop().create_task(notifier.run(), name=f"callbacks {job_id}")
        self._running[job_id] = (notifier, task)
        task.add_done_callback(lambda _: self._forget(job_id, task))
        registered = asyncio.ensure_future(notifier.registered.wait())
        await asyncio.wait({registered, task}, timeout=REGISTER_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if not registered.done():
            registered.cancel()
            if task.done():
                task.result()  # the daemon's refusal
            await self._stop(job_id)
            raise DaemonUnavailableError(f"the daemon did not register the callback interface of job {job_id}")

    def _forget(self, job_id: str, task: asyncio.Task[None]) -> None:
        """A notifier that ended by itself (the job is final, another client took over) is no longer the job's."""
        if job_id in self._running and self._running[job_id][1] is task:
            del self._running[job_id]

    async def _stop(self, job_id: str) -> None:
        entry = self._running.pop(job_id, None)
        if entry is not None:
            entry[1].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await entry[1]

    async def aclose(self) -> None:
        for job_id in list(self._running):
            await self._stop(job_id)
