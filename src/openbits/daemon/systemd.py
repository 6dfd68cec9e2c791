"""What systemd hands a service and hears back: socket activation and the notify protocol.

Both are a few lines of documented protocol (sd_listen_fds(3), sd_notify(3)), written here rather
than through libsystemd so the daemon needs no compiled binding. Without systemd (no LISTEN_FDS,
no NOTIFY_SOCKET) every function is a no-op and the daemon binds its own socket as before.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
from collections.abc import Callable, MutableMapping

log = logging.getLogger("openbitsd")

#: The first descriptor systemd passes (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3


def inherited_socket(environ: MutableMapping[str, str] = os.environ) -> socket.socket | None:
    """The listening Unix socket systemd passed (LISTEN_PID is us, LISTEN_FDS=1), or None.

    The variables are removed so no child (notify command lines, brokers) believes it was activated.
    """
    pid, count = environ.get("LISTEN_PID"), environ.get("LISTEN_FDS")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(name, None)
    if not pid or not count or pid != str(os.getpid()):
        return None
    if count != "1":
        raise SystemExit(f"openbitsd: systemd passed {count} sockets (LISTEN_FDS); openbitsd.socket must have "
                         "exactly one ListenStream=")
    if not stat.S_ISSOCK(os.fstat(LISTEN_FDS_START).st_mode):
        raise SystemExit(f"openbitsd: descriptor {LISTEN_FDS_START} from systemd is not a socket")
    sock = socket.socket(fileno=LISTEN_FDS_START)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise SystemExit("openbitsd: the socket from systemd is not a Unix stream socket (ListenStream=/path)")
    os.set_inheritable(sock.fileno(), False)
    return sock


class Notifier:
    """sd_notify: datagrams of KEY=VALUE lines to $NOTIFY_SOCKET (a path, or @name in the abstract namespace)."""

    def __init__(self, environ: MutableMapping[str, str] = os.environ) -> None:
        address = environ.pop("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec, pid = environ.pop("WATCHDOG_USEC", ""), environ.pop("WATCHDOG_PID", "")
        #: seconds between WATCHDOG=1 pings (half of WatchdogSec=), or None when no watchdog is armed
        self.watchdog_interval: float | None = None
        if self._sock and usec.isdigit() and int(usec) > 0 and pid in ("", str(os.getpid())):
            self.watchdog_interval = int(usec) / 2e6

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str) -> None:
        """One datagram; a manager that went away is logged once per failure, never fatal."""
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", self._address.replace("\0", "@"), exc)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def watchdog(notifier: Notifier) -> None:
    """WATCHDOG=1 from the event loop itself at half the watchdog timeout: a stuck loop stops the pings."""
    interval = notifier.watchdog_interval
    if interval is None:
        return
    while True:
        notifier.send("WATCHDOG=1")
        await asyncio.sleep(interval)


async def report_status(notifier: Notifier, status: Callable[[], str], first: str, every: float = 5.0) -> None:
    """STATUS=… (what `systemctl status` shows) every few seconds when it changed; `first` went with READY=1."""
    if not notifier.enabled:
        return
    last = first
    while True:
        await asyncio.sleep(every)
        line = status()
        if line != last:
            notifier.send(f"STATUS={line}")
            last = line
