"""A real openbitsd process for tests: started, killed with -9, restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openbits import Manager
from openbits.locations import answers

from .waiting import wait_until


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(value)


class DaemonProcess:
    """openbitsd --user on a private socket and state directory."""

    def __init__(self, root: Path, config: dict[str, Any] | None = None, *, system: bool = False,
                 wrap: Sequence[str] = (), log_level: str | None = "DEBUG") -> None:
        """`wrap` prefixes the command: `ip netns exec NS` runs the daemon in a namespace (tests/netlab.py).
        `log_level` None: the daemon's own default, for a test that reads the log for what must not be in it."""
        self.root = root
        self.wrap = list(wrap)
        self.log_level = log_level
        self.socket = root / "openbits.sock"
        self.state_dir = root / "state"
        self.config_path = root / "openbitsd.toml"
        self.log_path = root / "openbitsd.log"
        self.system = system
        #: False: no --config, so the daemon reads its mode's default configuration file
        self.config_option = True
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        self.write_config(config or {})

    def write_config(self, config: dict[str, Any]) -> None:
        lines = [f"{key} = {_toml_value(value)}" for key, value in config.items() if not isinstance(value, dict)]
        for section, table in ((k, v) for k, v in config.items() if isinstance(v, dict)):
            lines.append(f"[{section}]")
            lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "OPENBITS_SOCKET": str(self.socket)}

    def start(self, *options: str, environ: dict[str, str] | None = None) -> DaemonProcess:
        """`options` go after the usual ones; `environ` is added to the daemon's environment."""
        command = [*self.wrap, sys.executable, "-m", "openbits.daemon", "--system" if self.system else "--user",
                   "--socket", str(self.socket), "--state-dir", str(self.state_dir),
                   *(["--config", str(self.config_path)] if self.config_option else [])]
        if self.log_level is not None:
            command += ["--log-level", self.log_level]
        command += options
        log = open(self.log_path, "ab")
        proc = self.proc = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                            env={**os.environ, **(environ or {})})
        log.close()

        def answering() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"openbitsd exited with {proc.returncode}:\n{self.log()}")
            return answers(self.socket)

        # a deadline for a daemon that hangs, not a measure of its start (make test's workers share 2 cores)
        wait_until(answering, 60, lambda: f"openbitsd did not answer within 60 s:\n{self.log()}", interval=0.02)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        """A crash: no clean-up runs."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> int:
        """SIGTERM: the clean shutdown; returns the exit status."""
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self.proc = None
        return code

    def restart(self) -> DaemonProcess:
        self.stop()
        return self.start()

    def reload(self, config: dict[str, Any]) -> None:
        """Rewrite the config file and send SIGHUP."""
        assert self.proc is not None
        self.write_config(config)
        self.proc.send_signal(signal.SIGHUP)

    def manager(self) -> Manager:
        return Manager(socket_path=self.socket, autostart=False)
