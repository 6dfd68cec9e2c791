"""Where the daemon's socket is, and how a client starts a user-mode daemon when none answers.

The path rules are plain functions without third-party imports so the daemon
can import them too and both sides always agree on the same paths.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

#: Environment variable naming the one socket to use; overrides the search.
SOCKET_ENV = "OPENBITS_SOCKET"
#: How long a client waits for a daemon it started to answer.
AUTOSTART_TIMEOUT = 10.0


class DaemonUnavailableError(ConnectionError):
    """No daemon answers (and none could be started): the CLI exits 3 on it."""


def system_socket_path() -> Path:
    """The socket of the system daemon (running as root, serving every local user)."""
    return Path("/run/openbits/openbits.sock")


def user_runtime_dir() -> Path:
    """$XDG_RUNTIME_DIR, or /tmp/openbits-<uid> where no session manager provides one."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) if runtime else Path(f"/tmp/openbits-{os.getuid()}")


def user_socket_path() -> Path:
    """The socket of this user's own daemon."""
    return user_runtime_dir() / "openbits.sock"


def user_state_dir() -> Path:
    """$XDG_STATE_HOME/openbits or ~/.local/state/openbits: a user daemon's database and log."""
    state = os.environ.get("XDG_STATE_HOME")
    return (Path(state) if state else Path.home() / ".local" / "state") / "openbits"


def answers(path: Path) -> bool:
    """True when something accepts a connection on the Unix socket at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(os.fspath(path))
        except OSError:
            return False
    return True


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
