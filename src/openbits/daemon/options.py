"""openbitsd's command line, and the settings it resolves to: mode, socket, state, configuration file.

Without --config the daemon reads its mode's default file when it exists
(/etc/openbits/openbitsd.toml for the system daemon, $XDG_CONFIG_HOME/openbits/openbitsd.toml
for a user's), so an administrator configures a packaged daemon without editing its unit.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ..locations import system_config_path, system_socket_path, user_config_path, user_socket_path, user_state_dir
from ..model.config import Config
from ..version import __version__

log = logging.getLogger("openbitsd")

SYSTEM_STATE_DIR = Path("/var/lib/openbits")


def parser() -> argparse.ArgumentParser:
    """The argument parser (also the source of the openbitsd(8) manual page)."""
    parser = argparse.ArgumentParser(
        prog="openbitsd", description="openbits daemon (BITS for Linux): queues and runs background transfers for "
        "local users, who reach it over a Unix socket.",
        epilog="Signals: SIGHUP reloads the configuration (a bad file is refused and the running one stays); "
        "SIGTERM stops cleanly. Under systemd it takes its socket from openbitsd.socket, tells its readiness "
        "and status, and logs to the journal.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--system", action="store_true", help="serve every local user (root only; the default as root)")
    mode.add_argument("--user", action="store_true", help="serve the calling user only")
    parser.add_argument("--socket", type=Path, help="Unix socket path (default: /run/openbits/openbits.sock, or "
                        "$XDG_RUNTIME_DIR/openbits.sock for --user); ignored when systemd passes the socket")
    parser.add_argument("--state-dir", type=Path, help="directory of the job database (default: /var/lib/openbits, "
                        "or $XDG_STATE_HOME/openbits for --user)")
    parser.add_argument("--config", metavar="FILE", help=f"TOML configuration file, reloaded on SIGHUP (default: "
                        f"{system_config_path()}, or {user_config_path().name} under $XDG_CONFIG_HOME/openbits "
                        "for --user, when it exists)")
    parser.add_argument("--check-config", nargs="?", const="", metavar="FILE",
                        help="check FILE (default: the file the daemon would read), print what is wrong, and exit "
                        "(0: valid)")
    parser.add_argument("--exit-when-idle", type=float, metavar="SECONDS",
                        help="exit after this long with no connection and no live job (a daemon started on demand)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--log-target", default="auto", choices=["auto", "journal", "stderr"],
                        help="journal: systemd-journald's native protocol with OPENBITS_JOB, OPENBITS_USER and "
                        "OPENBITS_ERROR fields; auto (default): the journal when started by systemd, else stderr")
    parser.add_argument("--log-format", default="text", choices=["text", "json"],
                        help="format on stderr: text lines, or one JSON object a line for other collectors")
    parser.add_argument("--version", action="version", version=f"openbitsd {__version__}")
    return parser


def is_system(args: argparse.Namespace) -> bool:
    return bool(args.system or (not args.user and os.geteuid() == 0))


def config_file(args: argparse.Namespace) -> str | None:
    """--config, else the mode's default file if it exists, else None (the built-in defaults)."""
    if args.config:
        return str(args.config)
    default = system_config_path() if is_system(args) else user_config_path()
    return str(default) if default.exists() else None


class Settings:
    """The resolved command line plus the live configuration (replaced on SIGHUP)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.system = is_system(args)
        if self.system and os.geteuid() != 0:
            raise SystemExit("openbitsd: --system needs root; run `openbitsd --user` for a per-user daemon")
        self.mode = "system" if self.system else "user"
        self.socket = args.socket or (system_socket_path() if self.system else user_socket_path())
        self.state_dir = args.state_dir or (SYSTEM_STATE_DIR if self.system else user_state_dir())
        self.config_path = config_file(args)
        self.exit_when_idle: float | None = args.exit_when_idle
        self.config = Config.load(self.config_path)

    def current(self) -> Config:
        """The configuration in force now (SIGHUP replaces it)."""
        return self.config

    def reload(self) -> bool:
        """Read the configuration again; a bad file is refused and the running configuration stays."""
        try:
            config = Config.load(self.config_path)
        except ValueError as exc:
            log.error("configuration not reloaded, the old one stays: %s", exc)
            return False
        if config.metrics_listen != self.config.metrics_listen:
            log.warning("[metrics] listen changed to %r: it takes effect when openbitsd restarts",
                        config.metrics_listen)
        self.config = config
        log.info("configuration reloaded from %s", self.config_path or "the built-in defaults")
        return True


def check_config(args: argparse.Namespace) -> int:
    """--check-config: 0 and one line when the file is valid, else 1 and the one line that says what is wrong."""
    path = args.check_config or config_file(args)
    if path is None:
        print(f"openbitsd: no configuration file ({user_config_path() if not is_system(args) else system_config_path()}"
              " does not exist); the built-in defaults apply")
        return 0
    try:
        Config.load(path)
    except ValueError as exc:
        print(f"openbitsd: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(f"openbitsd: {path}: valid")
    return 0
