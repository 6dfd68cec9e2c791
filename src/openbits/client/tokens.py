"""IBitsTokenOptions for the client, and LogonUser / ImpersonateLoggedOnUser for a root service.

`job.token_options()` is the QueryInterface of BITS: it is where the owner's access is checked,
and it fetches a one-time ticket on the owner's connection. `set_helper_token()` without a user
name then opens a NEW connection, so the daemon sees whoever this process is at that moment
(SO_PEERCRED records the effective ids at connect time), e.g. inside `impersonate(logon(...))`:

    opts = job.token_options()
    with openbits.impersonate(openbits.logon("bob", password)):
        opts.set_helper_token()
    opts.set_helper_token_flags(TokenFlags.LOCAL_FILE)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from ..schema.models import HelperTokenRequest, HelperTokenUser, TokenFlagsBody
from ..enums import TokenFlags
from ..errors import BitsError, ErrorCode
from ..model.identity import Identity
from .connection import Connection


def job_path(job_id: str) -> str:
    return f"/v1/jobs/{quote(job_id, safe='')}"


async def redeem_ticket(socket_path: Path, job_id: str, ticket: str) -> HelperTokenUser:
    """Become the helper of job_id, as whoever this process is now, on a connection made now."""
    fresh = Connection(socket_path)
    try:
        return await fresh.request("PUT", job_path(job_id) + "/helper-token", HelperTokenUser,
                                   body=HelperTokenRequest(ticket=ticket))
    finally:
        await fresh.close()


class AsyncTokenOptions:
    """The helper token of one job; get it with AsyncJob.token_options()."""

    def __init__(self, connection: Connection, job_id: str, ticket: str) -> None:
        self._connection = connection
        self._job_id = job_id
        self._path = job_path(job_id)
        self._ticket: str | None = ticket

    async def set_helper_token(self, username: str | None = None, password: str | None = None) -> HelperTokenUser:
        """With username and password: the daemon logs that user on with PAM. Without: this process's user,
        as it is now (once per token_options(); the owner's ticket is used up)."""
        if username is not None:
            if password is None:
                raise BitsError(ErrorCode.E_INVALIDARG, "a user name needs its password")
            body = HelperTokenRequest(username=username, password=password)
            return await self._connection.request("PUT", self._path + "/helper-token", HelperTokenUser, body=body)
        if self._ticket is None:
            raise BitsError(ErrorCode.E_INVALIDARG, "this token_options() was used already; ask the job for new ones")
        ticket, self._ticket = self._ticket, None
        return await redeem_ticket(self._connection.socket_path, self._job_id, ticket)

    async def clear_helper_token(self) -> None:
        await self._connection.request("DELETE", self._path + "/helper-token", HelperTokenUser)

    async def helper_token_user(self) -> HelperTokenUser | None:
        """GetHelperTokenSid: uid and user name, or None when no helper token is set."""
        user = await self._connection.request("GET", self._path + "/helper-token", HelperTokenUser)
        return None if user.uid is None else user

    async def helper_token_flags(self) -> TokenFlags:
        body = await self._connection.request("GET", self._path + "/helper-token-flags", TokenFlagsBody)
        return TokenFlags(body.flags)

    async def set_helper_token_flags(self, flags: TokenFlags | int) -> TokenFlags:
        body = await self._connection.request("PUT", self._path + "/helper-token-flags", TokenFlagsBody,
                                              body=TokenFlagsBody(flags=int(flags)))
        return TokenFlags(body.flags)


@contextlib.contextmanager
def impersonate(identity: Identity) -> Iterator[Identity]:
    """ImpersonateLoggedOnUser ... RevertToSelf for a root process: switch the effective ids (all threads)."""
    if os.getuid() != 0:
        raise BitsError(ErrorCode.E_ACCESSDENIED, "impersonate() needs a process that runs as root")
    egid, groups = os.getegid(), os.getgroups()
    os.setgroups(list(identity.groups))
    os.setegid(identity.gid)
    os.seteuid(identity.uid)
    try:
        yield identity
    finally:
        os.seteuid(0)
        os.setegid(egid)
        os.setgroups(groups)
