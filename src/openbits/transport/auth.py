"""Answering a server's 401 challenge (Basic or Digest) for one origin, and for that origin only,
and a proxy's 407 challenge (Basic only).

Credentials are looked up only when the server asks (so a netrc is read only when needed) and are
never sent to another origin, e.g. the target of a redirect to another host, unless the client trusts
that origin with them (an upload's BITS-Host-Id server, which the authenticated server named).
Each origin answers its own challenge, as a Digest nonce belongs to one server.
Digest is aiohttp's own DigestAuthMiddleware, which answers servers (WWW-Authenticate) and not
proxies, so a proxy that wants Digest is not answered and the file fails with HTTP 407.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import hdrs
from yarl import URL

#: (scheme in lower case, e.g. "basic") -> (user name, password), or None when there are none
Lookup = Callable[[str], Awaitable[tuple[str, str] | None]]


def challenge_scheme(response: aiohttp.ClientResponse) -> str:
    """The first scheme a 401 offers, in lower case ("" when there is none)."""
    return response.headers.get(hdrs.WWW_AUTHENTICATE, "").strip().split(" ", 1)[0].lower()


def _proxy_scheme(headers: Mapping[str, str] | None) -> str:
    """The first scheme a 407 offers, in lower case."""
    return (headers or {}).get(hdrs.PROXY_AUTHENTICATE, "").strip().split(" ", 1)[0].lower()


@dataclass
class _Answer:
    """How one origin's challenge was met (neither yet: its first 401 decides)."""

    basic: aiohttp.BasicAuth | None = None
    digest: aiohttp.DigestAuthMiddleware | None = None


class ChallengeAuth:
    """An aiohttp client middleware: server authentication for one origin (and the origins `trust` adds),
    proxy authentication for its proxy."""

    def __init__(self, url: str, lookup: Lookup, proxy_lookup: Lookup | None = None) -> None:
        self._answers = {URL(url).origin(): _Answer()}
        self._lookup = lookup
        self._proxy_lookup = proxy_lookup
        self._proxy_basic: aiohttp.BasicAuth | None = None

    def trust(self, url: URL) -> None:
        """The same credentials also answer url's origin."""
        self._answers.setdefault(url.origin(), _Answer())

    async def __call__(self, request: aiohttp.ClientRequest,
                       handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
        if request.proxy is None or self._proxy_lookup is None:
            return await self._server(request, handler)
        if self._proxy_basic is None:
            try:
                response = await self._server(request, handler)
            except aiohttp.ClientHttpProxyError as exc:  # https: the proxy refused the CONNECT tunnel
                if exc.status != 407 or not await self._answer_proxy(exc.headers):
                    raise
            else:  # http: the proxy answered the request itself
                if response.status != 407 or not await self._answer_proxy(response.headers):
                    return response
                response.release()
        # The connector puts it on the CONNECT request (https) or on the request itself (http).
        request.proxy_auth = self._proxy_basic
        return await self._server(request, handler)

    async def _answer_proxy(self, headers: Mapping[str, str] | None) -> bool:
        """Whether the 407 can be answered: Basic, with credentials found."""
        assert self._proxy_lookup is not None
        if _proxy_scheme(headers) != "basic" or (found := await self._proxy_lookup("basic")) is None:
            return False
        self._proxy_basic = aiohttp.BasicAuth(*found)
        return True

    async def _server(self, request: aiohttp.ClientRequest,
                      handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
        answer = self._answers.get(request.url.origin())
        if answer is None:
            request.headers.popall(hdrs.AUTHORIZATION, None)
            return await handler(request)
        if answer.digest is not None:
            return await answer.digest(request, handler)
        if answer.basic is not None:
            request.headers[hdrs.AUTHORIZATION] = answer.basic.encode()
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
            answer.basic = aiohttp.BasicAuth(user, password)
            request.headers[hdrs.AUTHORIZATION] = answer.basic.encode()
            return await handler(request)
        answer.digest = aiohttp.DigestAuthMiddleware(user, password)
        return await answer.digest(request, handler)
