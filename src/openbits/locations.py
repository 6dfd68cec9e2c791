"""Where each mode's daemon listens and keeps its state, and whether a socket answers.

Plain functions on the ground floor, so the daemon and the client agree on the same paths
without either importing the other.
"""

from __future__ import annotations

import os
import socket
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
