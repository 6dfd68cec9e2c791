"""Real Linux users for tests: made with useradd, removed with userdel -r, even when a test fails.

    with RealUsers() as users:
        alice = users.create("alice")            # obt_alice_<hex>, home 0700, a real password
        admin = users.create("admin", groups=["sudo"])

or the `make_user` fixture for one test. Needs root; skips with a reason otherwise.
"""

from __future__ import annotations

import os
import pwd
import secrets
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pytest

from openbits.identity import Identity


@dataclass(frozen=True)
class RealUser:
    name: str
    password: str
    home: Path
    identity: Identity

    @property
    def uid(self) -> int:
        return self.identity.uid


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates real Linux users with useradd")


class RealUsers:
    """Creates users on demand; removes every one of them (with home) on exit."""

    def __init__(self) -> None:
        self._names: list[str] = []

    def create(self, role: str, *, groups: Sequence[str] = (), home_mode: int = 0o700) -> RealUser:
        require_root()
        name = f"obt_{role}_{secrets.token_hex(3)}"
        command = ["useradd", "--create-home", "--user-group", "--shell", "/bin/sh"]
        if groups:
            command += ["--groups", ",".join(groups)]
        _run([*command, name])
        self._names.append(name)
        password = secrets.token_urlsafe(16)
        _run(["chpasswd"], stdin=f"{name}:{password}\n")
        entry = pwd.getpwnam(name)
        home = Path(entry.pw_dir)
        home.chmod(home_mode)
        return RealUser(name=name, password=password, home=home, identity=Identity.from_uid(entry.pw_uid))

    def close(self) -> None:
        # --force: a broker of the user may still be exiting; the user must go regardless.
        for name in reversed(self._names):
            subprocess.run(["userdel", "--remove", "--force", name], capture_output=True, check=False)
        self._names.clear()

    def __enter__(self) -> RealUsers:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def owned_folder(path: Path, owner: RealUser, mode: int = 0o755) -> Path:
    """A folder (made with its parents if missing) that `owner` owns, with `mode`: a place of the user's own."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, owner.uid, owner.identity.gid)
    path.chmod(mode)
    return path


def _run(command: list[str], stdin: str | None = None) -> None:
    result = subprocess.run(command, input=stdin, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({result.returncode}): {result.stderr.strip()}")


@pytest.fixture
def make_user() -> Iterator[Callable[..., RealUser]]:
    """make_user("alice", groups=[...]) -> RealUser, removed after the test."""
    with RealUsers() as users:
        yield users.create
