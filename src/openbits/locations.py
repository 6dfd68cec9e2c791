"""Where each mode's daemon listens and keeps its state, and whether a socket answers.

Plain functions on the ground floor, so the daemon and the client agree on the same paths
without either importing the other.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

#: Environment variable naming the one socket to use; overrides the search.
SOCKET_ENV = "OPENBITS_SOCKET"


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


def system_config_path() -> Path:
    """The system daemon's configuration file, read when it exists and no --config is given."""
    return Path("/etc/openbits/openbitsd.toml")


def user_config_path() -> Path:
    """$XDG_CONFIG_HOME/openbits/openbitsd.toml (~/.config by default): a user daemon's configuration file."""
    config = os.environ.get("XDG_CONFIG_HOME")
    return (Path(config) if config else Path.home() / ".config") / "openbits" / "openbitsd.toml"


def unsafe_dir(path: Path, uid: int) -> str | None:
    """Why a socket's folder cannot be trusted by uid (owned by another, writable by others), or None.

    Like ssh-agent's and gpg-agent's checks: whoever may write the folder may swap the socket for
    their own and receive what the next client sends. A folder that does not exist yet is safe
    (the daemon makes it 0700).
    """
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(info.st_mode):
        return f"{path} is not a folder; remove it"
    if info.st_uid != uid:
        return f"{path} is owned by uid {info.st_uid}, not by uid {uid}; remove it (or set XDG_RUNTIME_DIR)"
    if info.st_mode & 0o022:
        return (f"{path} is writable by others (mode {stat.S_IMODE(info.st_mode):04o}), so its socket could be "
                f"swapped; run chmod 700 {path}")
    return None


def answers(path: Path) -> bool:
    """True when something accepts a connection on the Unix socket at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(os.fspath(path))
        except OSError:
            return False
    return True


def split_host_port(value: str) -> tuple[str, int]:
    """HOST:PORT ([::1]:8080 for IPv6) as (host, port), the host possibly ""; ValueError naming what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT (for example \"127.0.0.1:9464\")")
    return host.strip("[]"), int(port)
