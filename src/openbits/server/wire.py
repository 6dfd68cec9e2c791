"""An aiohttp runner whose HTTP parser accepts the BITS_POST verb.

aiohttp's C parser (llhttp) answers 400 to any method it does not know, and
BITS_POST is one of them; its pure-Python parser accepts every RFC 9110
token. `BitsAppRunner` swaps the parser per connection, so nothing else in
the process changes (setting AIOHTTP_NO_EXTENSIONS would, for every server).
An application that mounts the upload app with `add_subapp` must be run with
this runner too.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.http_parser import HttpRequestParserPy
from aiohttp.web_protocol import MAX_MSG_QUEUE_SIZE, RequestHandler, RequestPayloadError
from aiohttp.web_server import Server

#: Header limits (bytes per request line and per header field, and header count).
MAX_LINE_SIZE = 8190
MAX_FIELD_SIZE = 8190
MAX_HEADERS = 64

class _BitsRequestHandler(RequestHandler):
    def __init__(self, manager: Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        # Content-Encoding is refused by the server (identity only), never silently decoded.
        self._parser = HttpRequestParserPy(
            self,
            kwargs["loop"],
            self._read_bufsize,
            max_line_size=self.max_line_size,
            max_field_size=self.max_field_size,
            max_headers=self.max_headers,
            payload_exception=RequestPayloadError,
            auto_decompress=False,
            max_msg_queue_size=MAX_MSG_QUEUE_SIZE,
        )


class _BitsServer(Server):
    def __call__(self) -> RequestHandler:
        return _BitsRequestHandler(self, loop=self._loop, **self._kwargs)


class BitsAppRunner(web.AppRunner):
    """`web.AppRunner` for applications that serve the BITS upload protocol."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("max_line_size", MAX_LINE_SIZE)
        kwargs.setdefault("max_field_size", MAX_FIELD_SIZE)
        kwargs.setdefault("max_headers", MAX_HEADERS)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _BitsServer  # same state, only the handler factory differs
        return server
