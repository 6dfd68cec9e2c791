"""Shared fixtures: a real daemon, a real fault-injecting server, real nginx."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
from collections.abc import Iterator

from typing import TYPE_CHECKING

import pytest

from openbits import Manager

from .daemon import DaemonProcess

if TYPE_CHECKING:
    from .servers.faulty import FaultyServer
    from .servers.nginx import NginxServer



@pytest.fixture
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A user-mode openbitsd on a private socket; its log is printed when a test fails."""
    process = DaemonProcess(tmp_path_factory.mktemp("daemon")).start()
    try:
        yield process
    finally:
        if process.proc is not None:
            process.stop()


@pytest.fixture
def manager(daemon: DaemonProcess) -> Iterator[Manager]:
    with daemon.manager() as m:
        yield m


@pytest.fixture(scope="session")
def faulty() -> Iterator["FaultyServer"]:
    from .servers.faulty import FaultyServer

    server = FaultyServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator["NginxServer"]:
    from .servers.nginx import NginxServer

    if shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"):
        pytest.skip("nginx is not installed (make test installs it)")
    server = NginxServer(tmp_path_factory.mktemp("www"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A URL whose server accepts connections and never answers, so a transfer stays in progress."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/never.bin"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    listener.close()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    """Attach the daemon's log to a failing test's report."""
    if call.excinfo is not None and "daemon" in getattr(item, "funcargs", {}):
        item.add_report_section(call.when, "openbitsd log", item.funcargs["daemon"].log()[-20000:])
