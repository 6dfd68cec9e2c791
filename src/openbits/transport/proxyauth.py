"""Answers to a proxy's 407: Basic, Digest, Negotiate and NTLM, on requests through the proxy and on CONNECT tunnels.

aiohttp answers a proxy with Basic only, so the answer is made here: Basic and Digest as a Proxy-Authorization
value for each request (or tunnel) - Digest (RFC 7616, MD5 or SHA-256, qop=auth) over the request's method
and URI, for a CONNECT `CONNECT` and `host:port` -; Negotiate and NTLM as a `TunnelLogon`, a security context
in the network identity's broker whose legs run on one connection (transport/tunnel.py opens the tunnels,
auth.py runs the legs of plain requests).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping

import aiohttp
from aiohttp import hdrs

from ..enums import AuthTarget

from .credentials import Contexts, Lookup
from .tunnel import TunnelLogon

_PARAM = re.compile(r'(\w+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]+)')
_HASHES = {"md5": hashlib.md5, "sha-256": hashlib.sha256}
#: in the order a proxy offering several is answered: the schemes of credentials the job has (NTLM's only with
#: the job's NTLM credentials: a proxy offering Negotiate and NTLM gets them rather than a ticket tried), then
#: Negotiate with its credentials or the network identity's ticket
PROXY_SCHEMES = ("digest", "basic", "ntlm", "negotiate")


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
    """How the proxy's challenge is met, for every request of the transfer: a value (Basic, Digest) or a logon."""

    def __init__(self, scheme: str, *, basic: aiohttp.BasicAuth | None = None, digest: _Digest | None = None,
                 logon: TunnelLogon | None = None) -> None:
        self.scheme = scheme
        self.logon = logon
        self._basic, self._digest = basic, digest

    def value(self, request: aiohttp.ClientRequest) -> str:
        """The Proxy-Authorization value for this request (for https: its CONNECT)."""
        if self._basic is not None:
            return self._basic.encode()
        assert self._digest is not None, "a logon has no value: its legs run on the connection"
        tunnel = request.is_ssl()
        uri = f"{request.url.raw_host}:{request.url.port}" if tunnel else str(request.url)
        return self._digest.answer("CONNECT" if tunnel else request.method, uri)


async def choose(headers: Mapping[str, str] | None, lookup: Lookup, contexts: Contexts | None,
                 proxy_host: str) -> ProxyAnswer | None:
    """The answer to a 407, in PROXY_SCHEMES order among what it offers and what the job has; None: none fits."""
    schemes = offered(headers)
    for scheme in PROXY_SCHEMES:
        if scheme not in schemes:
            continue
        if scheme in ("negotiate", "ntlm"):
            if contexts is None:
                continue
            if scheme == "ntlm":  # only with the job's NTLM credentials
                probe = await contexts(scheme, proxy_host, AuthTarget.PROXY, None)
                if probe is None:
                    continue
                await probe.close()
            return ProxyAnswer(scheme, logon=TunnelLogon(scheme, contexts, proxy_host))
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
