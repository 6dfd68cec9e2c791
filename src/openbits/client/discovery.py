"""Which daemon a client talks to, and how it starts a user-mode daemon when none answers (paths: openbits.locations)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from ..locations import SOCKET_ENV, answers, system_socket_path, user_socket_path, user_state_dir

#: How long a client waits for a daemon it started to answer.
AUTOSTART_TIMEOUT = 10.0


class DaemonUnavailableError(ConnectionError):
    """No daemon answers (and none could be started): the CLI exits 3 on it."""


def find_socket() -> Path | None:
    """The first socket that answers: $OPENBITS_SOCKET alone if set, else the system one, else the user one."""
    explicit = os.environ.get(SOCKET_ENV)
    candidates = [Path(explicit)] if explicit else [system_socket_path(), user_socket_path()]
    return next((path for path in candidates if answers(path)), None)


def start_user_daemon(socket_path: Path | None = None) -> Path:
    """Start a detached user-mode daemon and wait until its socket answers; return that socket.

    `socket_path` (or $OPENBITS_SOCKET) is passed on as --socket; otherwise the
    daemon binds the default user socket.
    """
    if socket_path is None and os.environ.get(SOCKET_ENV):
        socket_path = Path(os.environ[SOCKET_ENV])
    command = [sys.executable, "-m", "openbits.daemon", "--user"]
    if socket_path is not None:
        command += ["--socket", os.fspath(socket_path)]
    target = socket_path or user_socket_path()
    state_dir = user_state_dir()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_path = state_dir / "openbitsd.log"
    with open(log_path, "ab") as log:
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

    Blocking (it may wait for a daemon to start): async callers run it in a thread.
    """
    if socket_path is not None:
        path = Path(socket_path)
        if answers(path):
            return path
        if autostart:
            return start_user_daemon(path)
        raise DaemonUnavailableError(f"no openbits daemon answers on {path}")
    found = find_socket()
    if found is not None:
        return found
    if autostart:
        return start_user_daemon()
    searched = os.environ.get(SOCKET_ENV) or f"{system_socket_path()} or {user_socket_path()}"
    raise DaemonUnavailableError(f"no openbits daemon answers on {searched}")
