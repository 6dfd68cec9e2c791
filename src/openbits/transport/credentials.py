"""The seams through which the core hands a transport its credentials: a lookup of user name and password per
scheme, and security contexts (Negotiate, NTLM) that run where the job's network identity lives."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from ..enums import AuthTarget

#: (scheme in lower case, e.g. "basic") -> (user name, password), or None when there are none
Lookup = Callable[[str], Awaitable[tuple[str, str] | None]]


class SecurityContext(Protocol):
    """One client security context (identity/gss.py runs it in the network identity's broker)."""

    complete: bool
    #: the last token opened an exchange the server continues on the same connection (NTLM's first leg)
    continued: bool

    async def step(self, token: bytes | None, final: bool = False) -> bytes | None:
        """The next token; `final`: `token` came with the server's answer (its mutual authentication)."""

    async def close(self) -> None: ...


#: (scheme, host, SERVER or PROXY, the TLS channel's tls-server-end-point hash or None) -> a fresh context for it,
#: or None when the job has no credentials for it
Contexts = Callable[[str, str, AuthTarget, bytes | None], Awaitable[SecurityContext | None]]
