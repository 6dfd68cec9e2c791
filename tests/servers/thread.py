"""Test servers on 127.0.0.1: listening in the test's own event loop, or on a loop in a thread of their own.

    runner, port = await serve_app(app)                       # in the test's loop; await runner.cleanup()
    server = ServerThread(app_listener(make_app), "my-server")  # a thread; server.port, server.stop()
    server = ServerThread(stream_listener(handle), "raw")       # asyncio.start_server's handler, same way

A thread serves tests whose client blocks (the synchronous Manager, a daemon process): the server must
answer while the test waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

#: stops listening and lets go of everything it holds
Close = Callable[[], Awaitable[None]]
#: starts listening, returns the port and how to close
Listen = Callable[[], Awaitable[tuple[int, Close]]]
Runner = TypeVar("Runner", bound=web.AppRunner)


async def serve_app(app: web.Application, port: int = 0, *,
                    runner: type[Runner] = web.AppRunner,  # type: ignore[assignment]
                    **options: Any) -> tuple[Runner, int]:
    """`app` listening on 127.0.0.1:`port` (0: a free one) without an access log; `options` go to the runner."""
    started = runner(app, access_log=None, **options)
    await started.setup()
    await web.TCPSite(started, "127.0.0.1", port).start()
    return started, started.addresses[0][1]


def app_listener(build: Callable[[], web.Application], port: int = 0, **options: Any) -> Listen:
    """Listen: the app `build()` makes, served by serve_app."""
    async def listen() -> tuple[int, Close]:
        runner, bound = await serve_app(build(), port, **options)
        return bound, runner.cleanup
    return listen


def stream_listener(handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> Listen:
    """Listen: a raw TCP server calling `handle` for each connection."""
    async def listen() -> tuple[int, Close]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)

        async def close() -> None:
            server.close()
            await server.wait_closed()
        return server.sockets[0].getsockname()[1], close
    return listen


class ServerThread:
    """Runs `listen` on a fresh event loop in a daemon thread; returns once it listens (or raises why not)."""

    def __init__(self, listen: Listen, name: str) -> None:
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(listen),), daemon=True, name=name)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None or self._stopping is None:
            raise RuntimeError(f"{name} did not start: {self._error!r}")

    async def _serve(self, listen: Listen) -> None:
        try:
            self.port, close = await listen()
            self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await close()

    def stop(self) -> None:
        """Close the server and end its thread; again is harmless."""
        if self._loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)
