"""Which daemon a client talks to, and how it starts a user-mode daemon when none answers (paths: openbits.locations)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from ..locations import (SOCKET_ENV, answers, system_socket_path, unsafe_dir, user_runtime_dir, user_socket_path,
                         user_state_dir)

#: How long a client waits for a daemon it started to answer.
AUTOSTART_TIMEOUT = 10.0
#: Seconds a daemon started on demand stays with no connection and no live job before it exits.
EXIT_WHEN_IDLE = 300.0


class DaemonUnavailableError(ConnectionError):
    """No daemon answers (and none could be started): the CLI exits 3 on it."""


def find_socket() -> Path | None:
    """The first default socket that answers: the system one, else the user one."""
    return next((path for path in (system_socket_path(), user_socket_path()) if answers(path)), None)


def start_user_daemon() -> Path:
    """Start a detached user-mode daemon on the default user socket and wait until it answers.

    It exits after EXIT_WHEN_IDLE seconds with no connection and no live job, as a socket-activated
    user unit would: a daemon started by a notify program must not outlive its user.
    """
    command = [sys.executable, "-m", "openbits.daemon", "--user", "--exit-when-idle", f"{EXIT_WHEN_IDLE:g}"]
    target = user_socket_path()
    state_dir = user_state_dir()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_path = state_dir / "openbitsd.log"
    with open(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600), "ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + AUTOSTART_TIMEOUT
    while time.monotonic() < deadline:
        if answers(target):
            return target
        if process.poll() is not None:
            # It may have lost a race with another client's daemon that now answers.
            if answers(target):
                return target
            raise DaemonUnavailableError(
                f"the daemon started on demand exited with status {process.returncode}; see {log_path}"
            )
        time.sleep(0.05)
    raise DaemonUnavailableError(f"the daemon started on demand did not answer on {target} within "
                                 f"{AUTOSTART_TIMEOUT:g} s; see {log_path}")


def locate(socket_path: str | os.PathLike[str] | None = None, autostart: bool = True) -> Path:
    """The socket to talk to: the one given, or the first that answers; start a user daemon if allowed.

    Only the default user socket is ever started on demand: never a socket named by the caller or
    by $OPENBITS_SOCKET (it may be the system daemon's, down for a restart, which a user daemon
    bound there would then keep from starting). Blocking: async callers run it in a thread.
    """
    explicit = socket_path if socket_path is not None else os.environ.get(SOCKET_ENV)
    if explicit:
        path = Path(explicit)
        if answers(path):
            return path
        raise DaemonUnavailableError(f"no openbits daemon answers on {path} (a socket named explicitly: none is "
                                     "started on demand; start openbitsd there, or name no socket)")
    if (unsafe := unsafe_dir(user_runtime_dir(), os.geteuid())) is not None:
        if answers(system_socket_path()):
            return system_socket_path()
        raise DaemonUnavailableError(f"not using the user daemon's socket: {unsafe}")
    found = find_socket()
    if found is not None:
        return found
    if autostart:
        return start_user_daemon()
    raise DaemonUnavailableError(f"no openbits daemon answers on {system_socket_path()} or {user_socket_path()}")
