"""Answers to a proxy's 407: Basic, Digest and Negotiate, on requests through the proxy and on CONNECT tunnels.

aiohttp answers a proxy with Basic only, so the answer is a Proxy-Authorization value made here for each
request (or tunnel): Digest (RFC 7616, MD5 or SHA-256, qop=auth) over the request's method and URI - for a
CONNECT, `CONNECT` and `host:port` - and Negotiate as a fresh token of a security context in the network
identity's broker. NTLM needs its legs on one connection, which a CONNECT that fails does not keep: a proxy
offering only NTLM is told as such.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Mapping

import aiohttp
from aiohttp import hdrs

from ..enums import AuthTarget, ErrorContext
from ..errors import BitsError, ErrorCode, TransferError

from .credentials import Contexts, Lookup

_PARAM = re.compile(r'(\w+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]+)')
_HASHES = {"md5": hashlib.md5, "sha-256": hashlib.sha256}
#: in the order a proxy offering several is answered: the schemes of credentials the job has, then its ticket
PROXY_SCHEMES = ("digest", "basic", "negotiate")


def offered(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The schemes of a 407's Proxy-Authenticate headers (lower case) and their parameters."""
    values = headers.getall(hdrs.PROXY_AUTHENTICATE, ()) if hasattr(headers, "getall") else (  # type: ignore[union-attr]
        [headers[hdrs.PROXY_AUTHENTICATE]] if headers and hdrs.PROXY_AUTHENTICATE in headers else [])
    schemes: dict[str, str] = {}
    for value in values:
        name, _, params = value.strip().partition(" ")
        schemes.setdefault(name.lower(), params)
    return schemes


class ProxyAnswer:
    """How the proxy's challenge is met, for every request of the transfer."""

    def __init__(self, scheme: str, *, basic: aiohttp.BasicAuth | None = None, digest: _Digest | None = None,
                 contexts: Contexts | None = None, proxy_host: str = "") -> None:
        self.scheme = scheme
        self._basic, self._digest, self._contexts, self._proxy_host = basic, digest, contexts, proxy_host

    async def value(self, request: aiohttp.ClientRequest) -> str:
        """The Proxy-Authorization value for this request (for https: its CONNECT)."""
        if self._basic is not None:
            return self._basic.encode()
        tunnel = request.is_ssl()
        if self._digest is not None:
            uri = f"{request.url.raw_host}:{request.url.port}" if tunnel else str(request.url)
            return self._digest.answer("CONNECT" if tunnel else request.method, uri)
        assert self._contexts is not None
        context = await self._contexts("negotiate", self._proxy_host, AuthTarget.PROXY)
        assert context is not None, "chosen only when the job has credentials or a ticket to try"
        try:
            token = await context.step(None)
        except BitsError as exc:
            raise TransferError(ErrorCode.http(407), f"The proxy {request.proxy} wants Negotiate: {exc.description}",
                                ErrorContext.REMOTE_FILE, 407, transient=False) from None
        finally:
            await context.close()
        return f"Negotiate {base64.b64encode(token or b'').decode()}"


async def choose(headers: Mapping[str, str] | None, lookup: Lookup, contexts: Contexts | None,
                 proxy_host: str) -> ProxyAnswer | None:
    """The answer to a 407, in PROXY_SCHEMES order among what it offers and what the job has; None: none fits."""
    schemes = offered(headers)
    for scheme in PROXY_SCHEMES:
        if scheme not in schemes:
            continue
        if scheme == "negotiate":
            if contexts is not None:
                return ProxyAnswer(scheme, contexts=contexts, proxy_host=proxy_host)
            continue
        found = await lookup(scheme)
        if found is None:
            continue
        if scheme == "basic":
            return ProxyAnswer(scheme, basic=aiohttp.BasicAuth(*found))
        digest = _Digest.of(schemes[scheme], *found)
        if digest is not None:
            return ProxyAnswer(scheme, digest=digest)
    return None


class _Digest:
    """RFC 7616 answers to one challenge, the nonce count going up with each."""

    def __init__(self, params: dict[str, str], user: str, password: str) -> None:
        self._params, self._user, self._password = params, user, password
        self._count = 0

    @classmethod
    def of(cls, challenge: str, user: str, password: str) -> _Digest | None:
        params = {key.lower(): value.strip('"') for key, value in _PARAM.findall(challenge)}
        algorithm = params.get("algorithm", "MD5").lower()
        if "nonce" not in params or algorithm not in _HASHES:
            return None
        qops = {q.strip() for q in params.get("qop", "").split(",") if q.strip()}
        if qops and "auth" not in qops:
            return None
        return cls(params, user, password)

    def answer(self, method: str, uri: str) -> str:
        p = self._params
        algorithm = p.get("algorithm", "MD5")
        digest = _HASHES[algorithm.lower()]

        def h(text: str) -> str:
            return digest(text.encode()).hexdigest()

        ha1, ha2 = h(f"{self._user}:{p.get('realm', '')}:{self._password}"), h(f"{method}:{uri}")
        fields = {"username": self._user, "realm": p.get("realm", ""), "nonce": p["nonce"], "uri": uri,
                  "algorithm": algorithm}
        if "qop" in p:
            self._count += 1
            nc, cnonce = f"{self._count:08x}", os.urandom(8).hex()
            response = h(f"{ha1}:{p['nonce']}:{nc}:{cnonce}:auth:{ha2}")
            fields.update(qop="auth", nc=nc, cnonce=cnonce)
        else:
            response = h(f"{ha1}:{p['nonce']}:{ha2}")
        fields["response"] = response
        if "opaque" in p:
            fields["opaque"] = p["opaque"]
        unquoted = {"algorithm", "qop", "nc"}
        return "Digest " + ", ".join(f'{k}={v}' if k in unquoted else f'{k}="{v}"' for k, v in fields.items())
