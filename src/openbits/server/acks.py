"""Ack packets: the only kind of response the upload protocol has.

Every Ack carries BITS-Packet-Type: Ack and a Content-Length (aiohttp always
sets it); a failed one adds BITS-Error-Code (an HRESULT) and
BITS-Error-Context (REMOTE_FILE when the server failed, REMOTE_APPLICATION
when the server application did), and a one-line description as its body.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from ..enums import ErrorContext
from ..uploadprotocol import Header, PacketType, format_error_context, format_hresult


def ack(status: int = 200, session_id: str | None = None, headers: Mapping[str, str] | None = None) -> web.Response:
    """A successful Ack (or the frame of a failed one)."""
    out = {Header.PACKET_TYPE: PacketType.ACK.value}
    if session_id:
        out[Header.SESSION_ID] = session_id
    out.update(headers or {})
    return web.Response(status=status, headers=out)


class AckError(Exception):
    """A refusal, answered as an Ack with the given status, HRESULT and context."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        context: ErrorContext = ErrorContext.REMOTE_FILE,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = int(code)
        self.context = context
        self.headers = dict(headers or {})

    def response(self, session_id: str | None) -> web.Response:
        resp = ack(self.status, session_id, self.headers)
        resp.headers[Header.ERROR_CODE] = format_hresult(self.code)
        resp.headers[Header.ERROR_CONTEXT] = format_error_context(self.context)
        resp.text = str(self) + "\n"
        return resp
