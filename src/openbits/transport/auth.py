"""Answering a server's 401 challenge (Basic, Digest, Negotiate or NTLM) for one origin, and for that
origin only, and a proxy's 407 challenge (Basic, Digest, Negotiate or NTLM: transport/proxyauth.py).

Credentials are looked up only when the server asks (so a netrc is read only when needed) and are
never sent to another origin, e.g. the target of a redirect to another host, unless the client trusts
that origin with them (an upload's BITS-Host-Id server, which the authenticated server named).
Each origin answers its own challenge, as a Digest nonce belongs to one server.
Digest is aiohttp's own DigestAuthMiddleware, which answers servers (WWW-Authenticate) and not
proxies; proxyauth.py answers those.
Negotiate and NTLM run their security context where the job's network identity lives (`Contexts`, the
file broker): the request is sent again with each token until the server answers; a token the server sends
with its final answer (Kerberos's mutual authentication) must check out, or the response is not used.
Once an origin took Negotiate, later requests carry a fresh token at once. On https every context is bound
to the server certificate the origin's connection showed (transport/channelbinding.py). A proxy that took Negotiate
or NTLM gets the legs of a fresh context on each plain request (the proxy's last token checked as a
server's), and on each tunnel the connector opens (transport/tunnel.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import base64

import aiohttp
from aiohttp import hdrs
from multidict import CIMultiDict
from yarl import URL

from ..enums import AuthTarget, ErrorContext
from ..errors import BitsError, ErrorCode, TransferError
from . import proxyauth
from .channelbinding import peer_end_point
from .credentials import Contexts, Lookup, SecurityContext
from .proxyauth import ProxyAnswer
from .tunnel import MARKER, NAMES as _NAMES, TunnelLogon, context_token, first_token, refused_logon, unproven



#: the schemes a connection-bound security context answers
CONTEXT_SCHEMES = ("negotiate", "ntlm")
#: every scheme a server challenge may be answered with
ANSWERED = ("basic", "digest", *CONTEXT_SCHEMES)
#: legs of one Negotiate/NTLM exchange at most (NTLM takes two)
_LEGS = 4
#: where a proxy's tokens come: with its 407s, and (Squid) with the answer that took the logon
_PROXY_TOKENS = (hdrs.PROXY_AUTHENTICATE, "Proxy-Authentication-Info")


def _b64(token: bytes | None) -> str:
    return base64.b64encode(token or b"").decode()


def challenge_scheme(response: aiohttp.ClientResponse) -> str:
    """The scheme to answer a 401 with, in lower case: Negotiate or NTLM when offered, else the first one."""
    offered = [value.strip().split(" ", 1)[0].lower() for value in response.headers.getall(hdrs.WWW_AUTHENTICATE, ())]
    return next((scheme for scheme in CONTEXT_SCHEMES if scheme in offered), offered[0] if offered else "")


@dataclass
class _Answer:
    """How one origin's challenge was met (neither yet: its first 401 decides)."""

    basic: aiohttp.BasicAuth | None = None
    digest: aiohttp.DigestAuthMiddleware | None = None
    #: "negotiate" or "ntlm" once the origin accepted one
    context_scheme: str | None = None
    #: the tls-server-end-point hash of the certificate the origin's last https response came with
    binding: bytes | None = None


class ChallengeAuth:
    """An aiohttp client middleware: server authentication for one origin (and the origins `trust` adds),
    proxy authentication for its proxy."""

    def __init__(self, url: str, lookup: Lookup, proxy_lookup: Lookup | None = None,
                 contexts: Contexts | None = None) -> None:
        self._answers = {URL(url).origin(): _Answer()}
        self._lookup = lookup
        self._contexts = contexts
        self._proxy_lookup = proxy_lookup
        self._proxy: ProxyAnswer | None = None

    def trust(self, url: URL) -> None:
        """The same credentials also answer url's origin."""
        self._answers.setdefault(url.origin(), _Answer())

    async def __call__(self, request: aiohttp.ClientRequest,
                       handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
        if request.proxy is None or self._proxy_lookup is None:
            return await self._server(request, handler)
        first = self._proxy is None
        if first:
            try:
                response = await self._server(request, handler)
            except aiohttp.ClientHttpProxyError as exc:  # https: the proxy refused the CONNECT tunnel
                if exc.status != 407:
                    raise
                self._proxy = await self._answer_proxy(exc.headers, request)
            else:  # http: the proxy answered the request itself
                if response.status != 407:
                    return response
                response.release()
                self._proxy = await self._answer_proxy(response.headers, request)
        logon = self._proxy.logon
        if logon is not None:
            # aiohttp keys pooled connections by the proxy headers: the job's logon's connections are its own
            request.proxy_headers = CIMultiDict({MARKER: logon.marker})
            if request.is_ssl():
                return await self._server(request, handler)  # TunnelConnector opens the tunnel with the logon
            if not first:  # the proxy keeps a logon for its connection: one of the job's may have it already
                response = await self._server(request, handler)
                if response.status != 407:
                    return response
                await response.read()
                response.release()
            return await self._proxy_legs(request, handler, logon)
        value = self._proxy.value(request)
        if request.is_ssl():  # on the CONNECT (aiohttp sends proxy_headers there and keys the tunnel by them)
            request.proxy_headers = CIMultiDict({hdrs.PROXY_AUTHORIZATION: value})
        else:
            request.headers[hdrs.PROXY_AUTHORIZATION] = value
        return await self._server(request, handler)

    async def _answer_proxy(self, headers: Mapping[str, str] | None, request: aiohttp.ClientRequest) -> ProxyAnswer:
        """The answer to the proxy's 407, or the job's error: what it asked for and what openbits answers."""
        assert self._proxy_lookup is not None and request.proxy is not None
        found = await proxyauth.choose(headers, self._proxy_lookup, self._contexts, request.proxy.raw_host or "")
        if found is None:
            asked = ", ".join(_NAMES.get(s, s.capitalize()) for s in proxyauth.offered(headers)) or "nothing"
            raise TransferError(ErrorCode.http(407), f"The proxy {request.proxy.origin()} wants authentication "
                                f"({asked}) that the job cannot give: openbits answers a proxy's Basic, Digest and "
                                "NTLM with the job's PROXY credentials (Basic and Digest also with a ~/.netrc entry) "
                                "and Negotiate with them or the network identity's Kerberos ticket",
                                ErrorContext.REMOTE_FILE, 407, transient=False)
        return found

    async def _proxy_legs(self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType,
                          logon: TunnelLogon) -> aiohttp.ClientResponse:
        """A plain http request through a proxy that took Negotiate or NTLM: its legs on the job's connection."""
        assert request.proxy is not None and self._contexts is not None
        context = await self._contexts(logon.scheme, request.proxy.raw_host or "", AuthTarget.PROXY, None)
        assert context is not None, "a logon is made only for a job with credentials or a ticket to try"
        proxy = request.proxy
        try:
            token: bytes | None = await first_token(context, proxy, logon.scheme)
            for _ in range(_LEGS):
                request.headers[hdrs.PROXY_AUTHORIZATION] = f"{_NAMES[logon.scheme]} {_b64(token)}"
                # afresh for each leg: aiohttp adds Host to them, which would key the next leg to another connection
                request.proxy_headers = CIMultiDict({MARKER: logon.marker})
                response = await self._server(request, handler)
                proxy_token = context_token(response.headers, logon.scheme, _PROXY_TOKENS)
                if response.status == 407 and proxy_token is not None and not context.complete:
                    await response.read()  # the connection the next leg needs goes back to the pool only when read
                    response.release()
                    try:
                        token = await context.step(proxy_token)
                    except BitsError as exc:
                        raise refused_logon(proxy, logon.scheme, exc.description) from None
                    continue
                if response.status != 407:
                    if proxy_token is not None and not context.complete:
                        try:
                            await context.step(proxy_token, True)
                        except BitsError as exc:
                            response.release()
                            raise unproven(proxy, logon.scheme, exc) from None
                    return response
                response.release()
                raise refused_logon(proxy, logon.scheme, "HTTP 407 again")
            raise refused_logon(proxy, logon.scheme, f"no answer after {_LEGS} legs")
        finally:
            await context.close()

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
        if answer.context_scheme is not None:
            return await self._with_context(request, handler, answer, answer.context_scheme, None)
        response = await handler(request)
        scheme = challenge_scheme(response)
        if response.status != 401 or scheme not in ANSWERED:
            return response
        if scheme in CONTEXT_SCHEMES:
            return await self._with_context(request, handler, answer, scheme, response)
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

    async def _with_context(self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType,
                            answer: _Answer, scheme: str,
                            challenged: aiohttp.ClientResponse | None) -> aiohttp.ClientResponse:
        """Send the request with each token of a new security context until the server answers."""
        host = request.url.raw_host or ""
        if challenged is not None and request.is_ssl():
            answer.binding = peer_end_point(challenged)
        context = None if self._contexts is None else await self._contexts(scheme, host, AuthTarget.SERVER,
                                                                           answer.binding)
        if context is None:
            if challenged is not None:
                return challenged  # no credentials for it: the 401 stands
            answer.context_scheme = None
            return await self._server(request, handler)
        shown = request.url.with_query(None)
        try:
            token = await _stepped(context, None, scheme, shown, final=False)
            for _ in range(_LEGS):
                if challenged is not None:
                    challenged.release()
                request.headers[hdrs.AUTHORIZATION] = f"{_NAMES[scheme]} {_b64(token)}"
                # A connection a context authenticated (NTLM; Negotiate where the server binds it) must not go
                # back to the session's pool, where another job could use it as this one: the server closes it.
                request.headers[hdrs.CONNECTION] = "keep-alive" if context.continued else "close"
                response = await handler(request)
                server_token = context_token(response.headers, scheme, (hdrs.WWW_AUTHENTICATE,))
                if response.status == 401 and server_token is not None and not context.complete:
                    token, challenged = await _stepped(context, server_token, scheme, shown, final=False), response
                    continue
                if response.status != 401 and server_token is not None and not context.complete:
                    try:
                        await _stepped(context, server_token, scheme, shown, final=True)
                    except TransferError:
                        response.release()
                        raise
                if response.status != 401:
                    answer.context_scheme = scheme
                    return response
                response.release()
                bound = "" if answer.binding is None else (
                    "; the logon was bound to the TLS certificate this connection showed (channel binding): a server "
                    "that sees another certificate, behind a relay or inspecting proxy that terminates TLS, refuses it")
                raise TransferError(ErrorCode.http(401), f"The server for {shown} refused the job's {_NAMES[scheme]} "
                                    f"logon: check the credentials (setcredentials) or the Kerberos ticket (klist){bound}",
                                    ErrorContext.REMOTE_FILE, 401, transient=False)
            return response
        finally:
            await context.close()


async def _stepped(context: SecurityContext, token: bytes | None, scheme: str, shown: URL, *,
                   final: bool) -> bytes | None:
    """One step; a failure is the job's error: the 401 it leads to, with the reason, or (`final`) a server
    that did not prove who it is."""
    try:
        return await context.step(token, final)
    except BitsError as exc:
        mutual = final
        raise TransferError(
            ErrorCode.ERROR_INTERNET_SECURE_FAILURE if mutual else ErrorCode.http(401),
            f"The server for {shown} wants {_NAMES[scheme]}: "
            f"{exc.description}.", ErrorContext.REMOTE_FILE, None if mutual else 401, transient=False) from None
