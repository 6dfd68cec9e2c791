"""A server that wants credentials: Basic or Digest (RFC 7616, MD5, qop=auth), and a cross-origin redirect.

    /basic/<user>/<name>                Basic challenge; 200 with a body for user's password in `accounts`
    /digest/<user>/<name>               the same with Digest
    /open/<name>                        no credentials needed
    /redirect/<user>?to=URL              Basic challenge, then 302 to URL (another origin: credentials stay home)

Every Authorization header received is kept in `authorizations`, by path, for the tests to inspect.
Runs on 127.0.0.1 in a thread, like FaultyServer.
"""

from __future__ import annotations

import base64
import hashlib
import secrets

from aiohttp import web

from .thread import ServerThread, app_listener

BODY = b"secret payload\n" * 100
REALM = "openbits-test"


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _digest_fields(header: str) -> dict[str, str]:
    fields = {}
    for part in header[len("Digest "):].split(","):
        key, _, value = part.strip().partition("=")
        fields[key] = value.strip('"')
    return fields


def digest_ok(header: str, method: str, user: str, password: str, nonce: str) -> bool:
    """Whether an Authorization header answers `digest_challenge(nonce)` as `user` with `password`."""
    if not header.startswith("Digest "):
        return False
    f = _digest_fields(header)
    ha1 = _md5(f"{user}:{REALM}:{password}")
    ha2 = _md5(f"{method}:{f.get('uri', '')}")
    expected = _md5(f"{ha1}:{nonce}:{f.get('nc')}:{f.get('cnonce')}:auth:{ha2}")
    return f.get("username") == user and f.get("response") == expected


def digest_challenge(nonce: str) -> str:
    return f'Digest realm="{REALM}", nonce="{nonce}", qop="auth", algorithm=MD5'


class AuthServer:
    def __init__(self) -> None:
        self.authorizations: dict[str, list[str]] = {}
        #: user name -> password (kept out of URLs, which jobs show)
        self.accounts: dict[str, str] = {}
        self._nonce = secrets.token_hex(8)
        self._server = ServerThread(app_listener(self._app), "auth-server")
        self.port = self._server.port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/basic/{user}/{name}", self._basic)
        app.router.add_get("/digest/{user}/{name}", self._digest)
        app.router.add_get("/redirect/{user}", self._redirect)
        app.router.add_get("/open/{name}", self._open)
        return app

    def stop(self) -> None:
        self._server.stop()

    def _seen(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        self.authorizations.setdefault(request.path, []).append(header)
        return header

    async def _open(self, request: web.Request) -> web.Response:
        return web.Response(body=BODY)

    def _basic_ok(self, request: web.Request) -> bool:
        user = request.match_info["user"]
        password = self.accounts.get(user, secrets.token_hex(8))
        return self._seen(request) == "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    async def _basic(self, request: web.Request) -> web.Response:
        if not self._basic_ok(request):
            return web.Response(status=401, headers={"WWW-Authenticate": f'Basic realm="{REALM}"'})
        return web.Response(body=BODY)

    async def _digest(self, request: web.Request) -> web.Response:
        user = request.match_info["user"]
        if digest_ok(self._seen(request), "GET", user, self.accounts.get(user, secrets.token_hex(8)), self._nonce):
            return web.Response(body=BODY)
        return web.Response(status=401, headers={"WWW-Authenticate": digest_challenge(self._nonce)})

    async def _redirect(self, request: web.Request) -> web.Response:
        if not self._basic_ok(request):
            return web.Response(status=401, headers={"WWW-Authenticate": f'Basic realm="{REALM}"'})
        raise web.HTTPFound(request.query["to"])
