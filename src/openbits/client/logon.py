"""LogonUser for a client: the daemon checks the password with PAM and answers who that is."""

from __future__ import annotations

from ..model.identity import Identity
from .aio import LocalPath
from .sync import Manager


def logon(username: str, password: str, socket_path: LocalPath | None = None) -> Identity:
    """The identity of username, if password is right (ERROR_LOGON_FAILURE otherwise); use with impersonate()."""
    with Manager(socket_path) as manager:
        return Identity.from_uid(manager.logon(username, password).uid)
