"""Answering a server's 401 challenge (Basic or Digest) for one origin, and for that origin only.

Credentials are looked up only when the server asks (so a netrc is read only when needed) and are
never sent to another origin, e.g. the target of a redirect to another host.
Digest is aiohttp's own DigestAuthMiddleware.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import hdrs
from yarl import URL

#: (scheme in lower case, e.g. "basic") -> (user name, password), or None when there are none
Lookup = Callable[[str], Awaitable[tuple[str, str] | None]]


def challenge_scheme(response: aiohttp.ClientResponse) -> str:
    """The first scheme a 401 offers, in lower case ("" when there is none)."""
    return response.headers.get(hdrs.WWW_AUTHENTICATE, "").strip().split(" ", 1)[0].lower()


class ChallengeAuth:
    """An aiohttp client middleware: server authentication for one origin."""

    def __init__(self, url: str, lookup: Lookup) -> None:
        self._origin = URL(url).origin()
        self._lookup = lookup
        self._basic: aiohttp.BasicAuth | None = None
        self._digest: aiohttp.DigestAuthMiddleware | None = None

    async def __call__(self, request: aiohttp.ClientRequest,
                       handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
        if request.url.origin() != self._origin:
            request.headers.popall(hdrs.AUTHORIZATION, None)
            return await handler(request)
        if self._digest is not None:
            return await self._digest(request, handler)
        if self._basic is not None:
            request.headers[hdrs.AUTHORIZATION] = self._basic.encode()
            return await handler(request)
        response = await handler(request)
        scheme = challenge_scheme(response)
        if response.status != 401 or scheme not in ("basic", "digest"):
            return response
        found = await self._lookup(scheme)
        if found is None:
            return response
        response.release()
        user, password = found
        if scheme == "basic":
            self._basic = aiohttp.BasicAuth(user, password)
            request.headers[hdrs.AUTHORIZATION] = self._basic.encode()
            return await handler(request)
        self._digest = aiohttp.DigestAuthMiddleware(user, password)
        return await self._digest(request, handler)
