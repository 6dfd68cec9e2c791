"""A tiny "server application" for upload-reply tests (notification-protocol-for-server-applications.md).

POST /echo: by reference it reads BITS-Request-DataFile-Name and writes
"reply:" + the upload to BITS-Response-DataFile-Name; by value it answers
"reply:" + the request body. `?copy=1` adds BITS-Copy-File-To-Destination.
POST /static answers with BITS-Static-Response-URL, POST /fail with 500.
Every notification is recorded in `calls` (path, headers, body length).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from openbits.uploadprotocol import Header

from .thread import serve_app

STATIC_REPLY = "http://static.example/reply.bin"


@dataclass
class Call:
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class UploadApp:
    calls: list[Call] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    port: int = 0

    async def start(self) -> UploadApp:
        app = web.Application()
        app.router.add_post("/echo", self._echo)
        app.router.add_post("/static", self._static)
        app.router.add_post("/fail", self._fail)
        self._runner, self.port = await serve_app(app)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _record(self, request: web.Request) -> Call:
        call = Call(request.path, request.query_string, dict(request.headers), await request.read())
        self.calls.append(call)
        return call

    async def _echo(self, request: web.Request) -> web.Response:
        call = await self._record(request)
        headers = {Header.COPY_FILE_TO_DESTINATION: "yes"} if request.query.get("copy") == "1" else {}
        source = request.headers.get(Header.REQUEST_DATAFILE_NAME)
        if source is None:  # by value
            return web.Response(body=b"reply:" + call.body, headers=headers)
        data = Path(source).read_bytes()
        Path(request.headers[Header.RESPONSE_DATAFILE_NAME]).write_bytes(b"reply:" + data)
        return web.Response(headers=headers)

    async def _static(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(headers={Header.STATIC_RESPONSE_URL: STATIC_REPLY})

    async def _fail(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(status=500, text="application broke")
