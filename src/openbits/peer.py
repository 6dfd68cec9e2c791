"""The kernel-verified credentials of the process at the other end of a local socket."""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

_UCRED = struct.Struct("3i")


class PeerCred(NamedTuple):
    """struct ucred: what SO_PEERCRED reports (for a socketpair: the creator, at creation time)."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCred:
    """SO_PEERCRED of a connected AF_UNIX socket; the peer cannot forge it."""
    if sock.family != socket.AF_UNIX:
        raise ValueError(f"peer credentials need an AF_UNIX socket, not {sock.family!r}")
    return PeerCred(*_UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)))
