"""A fragment of an upload: how large (sized to the link, within what the server takes) and its body,
read from the file as it is sent, or paced out under a bandwidth cap (upload.py sends them)."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import Executor

from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import AsyncIterablePayload, Payload

from ..uploadprotocol import LEGACY_FRAGMENT_LIMIT, Header
from .base import Throttle, watching
from .http import THROTTLED_READ

#: First fragment; later ones are sized from the measured rate.
INITIAL_FRAGMENT = 1024 * 1024
MIN_FRAGMENT = 64 * 1024
#: Upper bound of a fragment, streamed from the file, to a server that takes it (OpenBits-Fragment-Limit;
#: else LEGACY_FRAGMENT_LIMIT): fewer Acks, and through openbits-server on object storage the commits of
#: its 16 MiB parts overlap (a 1 GiB upload through one node: 2.15x -> 1.4x boto3's PUT, bench/upload.py).
MAX_FRAGMENT = 256 * 1024 * 1024
#: Upper bound of a throttled fragment, held in memory while it is paced out.
MAX_PACED_FRAGMENT = 16 * 1024 * 1024
#: Bytes per read of a streamed fragment.
FRAGMENT_READ = 1024 * 1024
#: Seconds one fragment should take: short enough that an interruption costs little, long enough to amortise the Ack.
FRAGMENT_SECONDS = 2.0


class FragmentSizer:
    """Fragment size adapted to the link: about FRAGMENT_SECONDS of the rate the last fragment's body went out at."""

    def __init__(self, initial: int = INITIAL_FRAGMENT, largest: int = MAX_FRAGMENT) -> None:
        self.size, self._largest = min(initial, largest), largest

    def limit(self, largest: int) -> None:
        """No fragment over `largest` from now on (a front end refused a larger one with 413)."""
        self._largest = min(self._largest, largest)
        self.size = min(self.size, largest)

    def measured(self, nbytes: int, seconds: float) -> None:
        if nbytes < self.size // 2:
            return  # a short tail or probe says nothing about the link
        rate = nbytes / max(seconds, 1e-3)
        # A power of two (1-2x FRAGMENT_SECONDS): with aligned() the fragments of a fast link are whole
        # slots of an object store's multipart upload behind the server (16 MiB ones for openbits-server).
        wanted = 1 << (int(rate * FRAGMENT_SECONDS) - 1).bit_length()
        self.size = min(self._largest, max(MIN_FRAGMENT, min(self.size * 4, wanted)))


def fragment_limit(headers: Mapping[str, str]) -> int:
    """The largest fragment the server says it takes (its OpenBits-Fragment-Limit, up to MAX_FRAGMENT), or
    LEGACY_FRAGMENT_LIMIT from one that says nothing."""
    said = headers.get(Header.FRAGMENT_LIMIT, "").strip()
    return min(MAX_FRAGMENT, int(said)) if said.isdigit() and int(said) > 0 else LEGACY_FRAGMENT_LIMIT


def aligned(offset: int, length: int, size: int) -> int:
    """A fragment's length cut so that it ends on a multiple of the largest power of two not above it
    (but the file's last): a server over object storage writes the whole slots of its multipart upload
    straight into it (openbits-server, 16 MiB slots), and a fragment that ends mid-slot leaves the
    next ones off the slots' bounds."""
    end = offset + length
    if end >= size or length <= 0:
        return length
    step = 1 << (length.bit_length() - 1)
    return (end // step * step - offset) or length


class FileBody(Payload):
    """An unthrottled fragment body read from the file as it is written, noting when it was.

    Not the fragment in one buffer: handed to the socket at once, it is copied into the transport's
    buffer, which Python 3.11's asyncio moves down after every send (2.5 s of CPU a GiB with 64 MiB
    fragments, measured), and it would hold the whole fragment in memory. Read afresh at each write,
    so a challenge's legs (NTLM, Negotiate, a stale Digest nonce) can send it again."""

    sent: float | None = None

    def __init__(self, reads: Executor, fd: int, offset: int, length: int) -> None:
        super().__init__(None)
        self._reads, self._fd, self._offset, self._size = reads, fd, offset, length

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a fragment body is bytes of a file")

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        loop = asyncio.get_running_loop()
        at = self._offset
        end = at + (self._size if content_length is None else min(self._size, content_length))
        while at < end:
            chunk = await loop.run_in_executor(self._reads, os.pread, self._fd, min(FRAGMENT_READ, end - at), at)
            if not chunk:
                raise EOFError("the file is shorter than when its upload began")  # the sender checks it
            await writer.write(chunk)
            at += len(chunk)
        self.sent = time.monotonic()


#: Seconds of the allowed rate one write of a throttled body holds: short bursts into the bottleneck.
PIECE_SECONDS = 0.002
#: MSS assumed when the socket does not tell (Ethernet, TCP timestamps).
_DEFAULT_MSS = 1448


class PacedBody(AsyncIterablePayload):
    """A throttled fragment body, written in pieces each paid for before it is sent, while a
    background throttle watches its socket (the idle-bandwidth controller for uploads senses it).

    The pacing is ours, not the kernel's (SO_MAX_PACING_RATE): a piece is an even number of full
    segments, written at once, so the server ACKs it at once - receivers ACK every second full
    segment (RFC 5681; Windows' TcpAckFrequency is 2) and delay the ACK of a lone one (40 ms
    Linux, up to 200 ms Windows). Paced by the kernel, a slow upload went out as lone segments:
    on the 20 ms lab link tcpi_rtt read 50-60 ms at 8-32 KB/s (21 ms written in pieces), which the
    controller took for a queue, so a lone upload stayed at the floor (measured; issue 6). A piece
    is about PIECE_SECONDS of the rate, so a burst adds at most that much queue at the bottleneck.
    """

    #: never noted: a paced fragment goes at the throttle's rate, so the sizer times it to its Ack
    sent: float | None = None

    def __init__(self, data: bytes, throttle: Throttle) -> None:
        self._data, self._throttle = data, throttle
        self._pair = 2 * _DEFAULT_MSS
        super().__init__(self._pieces())

    def _piece(self) -> int:
        rate = getattr(self._throttle, "rate", lambda: 0)()
        most = THROTTLED_READ // self._pair
        if most == 0:
            return THROTTLED_READ  # loopback's 64 KiB segments: nothing to pair
        return max(1, min(most, int(rate * PIECE_SECONDS) // self._pair) if rate > 0 else most) * self._pair

    async def _pieces(self) -> AsyncIterator[bytes]:
        view = memoryview(self._data)
        start = 0
        while start < len(view):
            piece = view[start : start + self._piece()]
            await self._throttle.consume(len(piece))
            yield bytes(piece)
            start += len(piece)

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        transport = getattr(writer, "transport", None)
        sock = None if transport is None else transport.get_extra_info("socket")
        if sock is not None:
            try:
                self._pair = 2 * (sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG) or _DEFAULT_MSS)
            except OSError:
                pass
        with watching(self._throttle, sock):
            await super().write_with_length(writer, content_length)
        self.sent = time.monotonic()
