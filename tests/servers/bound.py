"""An https server that wants channel binding with Negotiate and NTLM, as Windows's Extended Protection does:
a logon counts only when it is bound (RFC 5929 tls-server-end-point) to the certificate the server presents.
Debian's mod_auth_gssapi has no such setting and Squid's helpers check no bindings, so this one is aiohttp
with python-gssapi's acceptor (the realm's HTTP/localhost keytab) for /negotiate/ and pyspnego's NTLM acceptor
(the DOMAIN:user:password lines of NTLM_USER_FILE, one context per connection) for /ntlm/.

It runs as a process of its own (its NTLM_USER_FILE is its own environment's), on two ports with the same
certificate: `bound` checks the bindings of that certificate; `relayed` checks those of another certificate,
as the server behind a relay that terminates TLS with its own certificate sees them. Every logon it takes is a
line `PORT PATH USER` in its log; a refusal is a 401 whose body says why. A logon to a path with `/to/`
is answered with a redirect to the path without it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .kerberos import HOST, KerberosRealm, _stop, _wait_port
from .nginx import free_port
from .tls import PrivateCA

#: what a certificate signed with these hashes gets hashed with instead (RFC 5929 section 4.1)
_TO_SHA256 = ("md5", "sha1")


class BoundServer:
    """The server process; `url(case, path)` for case "bound" or "relayed"."""

    def __init__(self, realm: KerberosRealm, ca: PrivateCA) -> None:
        self._work = Path(tempfile.mkdtemp(prefix="openbits-bound-"))
        self.root = self._work / "www"
        self.root.mkdir()
        self.ntlm_users = self._work / "ntlm_users"
        self.ntlm_users.touch(0o600)
        self._log = self._work / "logons"
        cert, other = ca.issue("bound", hosts=(HOST, "127.0.0.1")), ca.issue("bound-other", hosts=(HOST,))
        self.ports = {"bound": free_port(), "relayed": free_port()}
        config = {"root": str(self.root), "log": str(self._log), "keytab": str(realm.export_keytab(f"HTTP/{HOST}")),
                  "cert": str(cert.cert), "key": str(cert.key),
                  "sites": [[self.ports["bound"], str(cert.cert)], [self.ports["relayed"], str(other.cert)]]}
        (self._work / "config.json").write_text(json.dumps(config))
        with open(self._work / "server.log", "wb") as out:
            self._proc = subprocess.Popen([sys.executable, "-m", __name__, str(self._work / "config.json")],
                                          cwd=Path(__file__).parents[2],
                                          env={**realm.env, "NTLM_USER_FILE": str(self.ntlm_users)},
                                          stdout=out, stderr=subprocess.STDOUT)
        for port in self.ports.values():
            _wait_port(port, self._proc, "the channel-binding server", self._work / "server.log")

    def url(self, case: str, path: str) -> str:
        return f"https://{HOST}:{self.ports[case]}/{path.lstrip('/')}"

    def add_ntlm_user(self, domain: str, name: str, password: str) -> None:
        with open(self.ntlm_users, "a") as users:
            users.write(f"{domain}:{name}:{password}\n")

    def users(self, case: str, path: str) -> list[str]:
        """Who the `case` port took each logon for `path` to be."""
        lines = self._log.read_text().splitlines() if self._log.exists() else []
        return [user for port, url, user in (line.split(" ", 2) for line in lines)
                if (int(port), url) == (self.ports[case], path)]

    def stop(self) -> None:
        _stop(self._proc)


def end_point(pem: bytes) -> bytes:
    """RFC 5929's tls-server-end-point of a PEM certificate: its DER hashed with its signature's hash."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(pem)
    algorithm = cert.signature_hash_algorithm
    name = "sha256" if algorithm is None or algorithm.name in _TO_SHA256 else algorithm.name
    return hashlib.new(name, ssl.PEM_cert_to_DER_cert(pem.decode())).digest()


def _app(config: dict[str, Any], port: int, expected: bytes) -> Any:
    import gssapi
    import spnego
    from aiohttp import web
    from spnego.channel_bindings import GssChannelBindings

    application_data = b"tls-server-end-point:" + expected
    keytab = gssapi.Credentials(usage="accept", store={"keytab": config["keytab"]})
    ntlm: dict[int, Any] = {}  # the NTLM context of each connection

    def refuse(scheme: str, why: str) -> web.Response:
        return web.Response(status=401, text=f"refused: {why}\n", headers={"WWW-Authenticate": scheme})

    async def handle(request: web.Request) -> web.StreamResponse:
        scheme = "Negotiate" if request.path.startswith("/negotiate/") else "NTLM"
        given, _, token = request.headers.get("Authorization", "").partition(" ")
        if given.lower() != scheme.lower() or not token:
            return refuse(scheme, "no logon")
        raw = base64.b64decode(token)
        answer = None
        try:
            if scheme == "Negotiate":
                context = gssapi.SecurityContext(creds=keytab, usage="accept", channel_bindings=gssapi.raw.ChannelBindings(
                    application_data=application_data))
                answer = context.step(raw)
                if gssapi.RequirementFlag.channel_bound not in context.actual_flags:
                    return refuse(scheme, "the logon carries no channel binding")
                user = str(context.initiator_name)
            else:
                key = id(request.protocol)
                if raw[8:9] == b"\x01":  # a negotiate message starts a handshake on this connection
                    ntlm[key] = spnego.server(protocol="ntlm", channel_bindings=GssChannelBindings(
                        application_data=application_data))
                context = ntlm[key]
                out = context.step(raw)
                if not context.complete:
                    return web.Response(status=401, headers={"WWW-Authenticate": f"NTLM {base64.b64encode(out).decode()}"})
                del ntlm[key]
                user = context.client_principal
        except Exception as exc:  # noqa: BLE001 - every refusal is a 401 saying why
            return refuse(scheme, f"{type(exc).__name__}: {exc}")
        with open(config["log"], "a") as log:
            log.write(f"{port} {request.path} {user}\n")
        headers = {} if not answer else {"WWW-Authenticate": f"Negotiate {base64.b64encode(answer).decode()}"}
        if "/to/" in request.path:  # a redirect within the server: the next request carries its token at once
            raise web.HTTPFound(request.path.replace("/to/", "/", 1), headers=headers)
        path = Path(config["root"]) / request.path.lstrip("/")
        return web.Response(body=path.read_bytes(), headers=headers) if path.is_file() else web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return app


async def _serve(config: dict[str, Any]) -> None:
    import asyncio

    from aiohttp import web

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(config["cert"], config["key"])
    for port, binding_cert in config["sites"]:
        runner = web.AppRunner(_app(config, port, end_point(Path(binding_cert).read_bytes())), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    import asyncio

    asyncio.run(_serve(json.loads(Path(sys.argv[1]).read_text())))
