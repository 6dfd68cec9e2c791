"""The `openbits` command as a user runs it: a subprocess against one daemon socket, its output and exit code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


class Cli:
    """Runs `python -m openbits.cli` against one daemon socket, never starting one of its own."""

    def __init__(self, socket: Path, env: dict[str, str]) -> None:
        self.socket = socket
        # output piped to a script, as the tests read it: not folded to the width of the runner's terminal
        self.env = {name: value for name, value in env.items() if name not in ("COLUMNS", "LINES")}

    def command(self, *args: str, socket: Path | None = None) -> list[str]:
        return [sys.executable, "-m", "openbits.cli", "--socket", str(socket or self.socket), "--no-autostart",
                *args]

    def __call__(self, *args: str, socket: Path | None = None, timeout: float = 60,
                 cwd: Path | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*args, socket=socket), capture_output=True, text=True, env=self.env,
                              timeout=timeout, cwd=cwd, input=input)

    def popen(self, *args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(self.command(*args), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=cwd)

    def ok(self, *args: str) -> str:
        result = self(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str], code: int, prefix: str) -> None:
    """The failure is one line naming the reason, and no traceback."""
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), result.stderr
