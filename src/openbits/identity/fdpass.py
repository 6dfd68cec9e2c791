"""The broker protocol's framing and descriptor passing, used by both sides (daemon and broker).

A message is JSON; larger than one SOCK_SEQPACKET frame, it is split into consecutive frames flagged
MORE, the last one LAST; descriptors ride on the last frame (SCM_RIGHTS, at most BATCH of them).
Neither side interleaves two messages' frames, and reassembly is bounded.
"""

from __future__ import annotations

import array
import os
import socket
from collections.abc import Sequence
from typing import Any

import orjson

MORE = b"+"
LAST = b"."
CHUNK = 32 * 1024
FRAME_MAX = 1 + CHUNK
MESSAGE_MAX = 64 * 1024 * 1024
#: Requests answered per message, and descriptors per message (SCM_MAX_FD is 253).
BATCH = 250
#: What the broker may be asked: a request for anything else is refused.
OPS = frozenset({"check_destination", "open_temp", "open_temps", "commit", "remove", "open_read", "stat",
                 "list_folder", "negotiate_start", "negotiate_step", "negotiate_key", "negotiate_end"})
#: operations answered with their JSON result as it is
JSON_OPS = frozenset({"list_folder", "negotiate_start", "negotiate_step", "negotiate_key"})
FD_OPS = frozenset({"open_temp", "open_read"})


class ProtocolError(Exception):
    """The peer broke the framing rules; the connection is dropped."""


def frames(message: Any) -> list[bytes]:
    payload = orjson.dumps(message, option=orjson.OPT_NON_STR_KEYS)  # what json.dumps wrote, 5-10x as fast
    chunks = [payload[i : i + CHUNK] for i in range(0, len(payload), CHUNK)] or [b""]
    return [MORE + chunk for chunk in chunks[:-1]] + [LAST + chunks[-1]]


class Reassembly:
    """Joins the consecutive frames of one message; bounded so a peer cannot exhaust memory."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, frame: bytes) -> Any:
        """The decoded message once its last frame is in, else None."""
        flag = frame[:1]
        if flag not in (MORE, LAST):
            raise ProtocolError("bad frame")
        self._size += len(frame) - 1
        if self._size > MESSAGE_MAX:
            raise ProtocolError("message too large")
        self._parts.append(frame[1:])
        if flag == MORE:
            return None
        payload = b"".join(self._parts)
        self._parts, self._size = [], 0
        try:
            return orjson.loads(payload)
        except (ValueError, RecursionError) as exc:
            raise ProtocolError(f"bad JSON: {exc}") from None


def recv_with_fds(sock: socket.socket, bufsize: int, maxfds: int, flags: int = 0) -> tuple[bytes, list[int], int]:
    """socket.recv_fds, except that flags are honoured (3.11 drops them, losing MSG_CMSG_CLOEXEC)."""
    fds = array.array("i")
    data, ancillary, msg_flags, _ = sock.recvmsg(bufsize, socket.CMSG_LEN(maxfds * fds.itemsize), flags)
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds), msg_flags


def close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)
