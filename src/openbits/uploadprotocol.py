"""The BITS upload protocol on the wire: packet types, header names, ranges, error fields.

Shared by the upload server (`openbits.server`) and the upload client, so both
spell every header and every range the same way. Pure standard library: no
HTTP client or server is imported here.

References: bits-upload-protocol.md, bits-request-packets.md,
bits-response-packets.md and the Ack pages in the BITS documentation.
"""

from __future__ import annotations

import enum
import re
import uuid
from dataclasses import dataclass

#: The only upload protocol BITS defines ("BITS 1.5 Upload Protocol", create-session.md).
PROTOCOL_BITS_1_5 = "{7df0354d-249b-430f-820d-3d2a9bef4931}"
#: The HTTP verb of every request packet.
METHOD = "BITS_POST"
#: The only Content-Encoding the server accepts (Accept-Encoding of the Create-Session Ack).
IDENTITY_ENCODING = "Identity"

#: HRESULTs of the upload protocol that `openbits.errors.ErrorCode` does not list (bitsmsg.h).
BG_E_SESSION_NOT_FOUND = 0x8020001F
BG_E_CLIENT_SERVER_PROTOCOL_MISMATCH = 0x80200022


class PacketType(str, enum.Enum):
    """Values of the BITS-Packet-Type header."""

    PING = "Ping"
    CREATE_SESSION = "Create-Session"
    FRAGMENT = "Fragment"
    CLOSE_SESSION = "Close-Session"
    CANCEL_SESSION = "Cancel-Session"
    ACK = "Ack"

    @classmethod
    def parse(cls, value: str) -> PacketType:
        """The packet type named by a header value (case-insensitive); ValueError if unknown."""
        for member in cls:
            if member.value.lower() == value.strip().lower():
                return member
        raise ValueError(f"unknown BITS packet type {value!r}")


class Header:
    """Header names of request, response and notification packets."""

    PACKET_TYPE = "BITS-Packet-Type"
    SUPPORTED_PROTOCOLS = "BITS-Supported-Protocols"
    PROTOCOL = "BITS-Protocol"
    SESSION_ID = "BITS-Session-Id"
    HOST_ID = "BITS-Host-Id"
    HOST_ID_FALLBACK_TIMEOUT = "BITS-Host-Id-Fallback-Timeout"
    RECEIVED_CONTENT_RANGE = "BITS-Received-Content-Range"
    REPLY_URL = "BITS-Reply-URL"
    ERROR_CODE = "BITS-Error-Code"
    ERROR_CONTEXT = "BITS-Error-Context"
    CONTENT_NAME = "Content-Name"
    CONTENT_RANGE = "Content-Range"
    CONTENT_ENCODING = "Content-Encoding"
    ACCEPT_ENCODING = "Accept-Encoding"
    # Between the BITS server and the server application (notification-protocol-for-server-applications.md).
    ORIGINAL_REQUEST_URL = "BITS-Original-Request-URL"
    REQUEST_DATAFILE_NAME = "BITS-Request-DataFile-Name"
    RESPONSE_DATAFILE_NAME = "BITS-Response-DataFile-Name"
    STATIC_RESPONSE_URL = "BITS-Static-Response-URL"
    COPY_FILE_TO_DESTINATION = "BITS-Copy-File-To-Destination"
    # openbits's own, in the Acks of Ping and Create-Session: the largest Fragment the server takes. Without
    # it a client stays at LEGACY_FRAGMENT_LIMIT (IIS refuses a request over 30,000,000 bytes by default).
    FRAGMENT_LIMIT = "OpenBits-Fragment-Limit"


#: The largest fragment an openbits client sends a server that does not say (upload-limits.md: IIS 7
#: takes requests up to 30 million bytes unless maxAllowedContentLength says more).
LEGACY_FRAGMENT_LIMIT = 16 * 1024 * 1024


@dataclass(frozen=True)
class ContentRange:
    """`Content-Range: bytes first-last/total` of a Fragment; `last` is inclusive, as in HTTP.

    An empty file travels as `bytes */0` (first=0, last=-1, total=0).
    """

    first: int
    last: int
    total: int

    def __post_init__(self) -> None:
        if self.first < 0 or self.total < 0 or self.last < self.first - 1 or self.last >= self.total:
            raise ValueError(f"inconsistent range {self.first}-{self.last}/{self.total}")
        if self.last == self.first - 1 and self.total != 0:
            raise ValueError("an empty range is only valid for an empty file (bytes */0)")

    @property
    def length(self) -> int:
        """Bytes in the fragment body."""
        return self.last - self.first + 1

    @property
    def completes(self) -> bool:
        """Whether this fragment ends the file (ack-for-fragment.md: end offset == total - 1)."""
        return self.last == self.total - 1

    def __str__(self) -> str:
        if self.total == 0:
            return "bytes */0"
        return f"bytes {self.first}-{self.last}/{self.total}"


_RANGE = re.compile(r"bytes[ =]?\s*(\d{1,19})-(\d{1,19})/(\d{1,19})", re.IGNORECASE)
_EMPTY_RANGE = re.compile(r"bytes[ =]?\s*\*/0", re.IGNORECASE)


def parse_content_range(value: str) -> ContentRange:
    """Parse a Fragment's Content-Range; ValueError for anything malformed or inconsistent."""
    text = value.strip()
    if _EMPTY_RANGE.fullmatch(text):
        return ContentRange(0, -1, 0)
    match = _RANGE.fullmatch(text)
    if match is None:
        raise ValueError(f"malformed Content-Range {value!r}")
    first, last, total = (int(g) for g in match.groups())
    return ContentRange(first, last, total)


def format_content_range(first: int, last: int, total: int) -> str:
    """The Content-Range value for bytes first..last (inclusive) of a file of `total` bytes."""
    return str(ContentRange(first, last, total))


def format_received_range(next_offset: int) -> str:
    """BITS-Received-Content-Range: the zero-based offset of the next byte the server expects."""
    return str(next_offset)


def parse_received_range(value: str) -> int:
    """The next offset from BITS-Received-Content-Range (ValueError if it is not a number)."""
    offset = int(value.strip())
    if offset < 0:
        raise ValueError(f"negative received range {value!r}")
    return offset


def format_hresult(code: int) -> str:
    """BITS-Error-Code value: an HRESULT in hexadecimal, e.g. 0x8020001f."""
    return f"0x{code & 0xFFFFFFFF:08x}"


def format_error_context(context: int) -> str:
    """BITS-Error-Context value: the BG_ERROR_CONTEXT number in hexadecimal, e.g. 0x5."""
    return f"0x{context:x}"


def parse_hex(value: str) -> int:
    """Read BITS-Error-Code or BITS-Error-Context, with or without the 0x prefix."""
    return int(value.strip(), 16)


def parse_supported_protocols(value: str) -> list[str]:
    """The GUIDs of BITS-Supported-Protocols (space-delimited), lower-case, in the client's order."""
    return [token.lower() for token in value.split()]


def choose_protocol(supported: str) -> str | None:
    """The protocol the server picks from a BITS-Supported-Protocols header, or None if none is known."""
    return PROTOCOL_BITS_1_5 if PROTOCOL_BITS_1_5 in parse_supported_protocols(supported) else None


_SESSION_ID = re.compile(r"\{[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\}")


def new_session_id() -> str:
    """A fresh, unguessable session id: a random (version 4) UUID in braces, 122 bits from os.urandom."""
    return "{" + str(uuid.uuid4()) + "}"


def is_session_id(value: str) -> bool:
    """Whether a BITS-Session-Id has the shape this server hands out (safe to use as a file name)."""
    return _SESSION_ID.fullmatch(value.strip().lower()) is not None
