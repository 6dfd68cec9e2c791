"""The idle-bandwidth controller for uploads, without a network: a recorded trace and the paced body.

tests/traces/upload-bbr-foreground.jsonl was recorded by openbitsd's upload
sensor (tx_bytes, the bytes we sent, tcpi_rtt) on the netlab link shaped to
20 Mbit/s upwards, 20 ms RTT, as in tests/test_politeness_upload.py: a NORMAL
upload alone, then `curl -T` of 20 MB to nginx beside it, then alone again.
The sender was this host's default, bbr. Replayed open loop, as the download
traces in test_bandwidth_controller.py are.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator

import pytest

from openbits.bandwidth import Decision, Sample
from openbits.bandwidth.sensing import UP, UP_DELAY_WINDOW, LinkSensor
from openbits.transport.http import THROTTLED_READ
from openbits.transport.fragments import PIECE_SECONDS, PacedBody

from .test_bandwidth_controller import load, rates

TRACE = "upload-bbr-foreground.jsonl"
C_UP = 2_500_000  # bytes/s: 20 Mbit/s


def test_recorded_upload_yields_to_a_foreground_upload_and_recovers() -> None:
    replay = list(rates(load(TRACE)))
    start = next(s.time for s, other, _ in replay if other > 0.1 * C_UP)
    end = max(s.time for s, other, _ in replay if other > 0.1 * C_UP)
    assert end - start > 1.0, "the trace holds a foreground upload"
    during = [d for s, _, d in replay if start + 1.0 <= s.time <= end]
    assert max(d.rate for d in during) < 0.1 * C_UP, "within a second, we are down to a tenth or less"
    assert all(d.reason.startswith("yielding to") for d in during)
    after = [(s.time, d) for s, _, d in replay if s.time > end]
    back = next(t for t, d in after if d.rate >= 0.85 * C_UP)
    assert back - end < 3.0, "the upload recovers within a few seconds"


def test_recorded_upload_alone_is_not_held_down_by_delayed_acks() -> None:
    """Written in pieces of full segments, a lone upload's tcpi_rtt stays near the path's RTT, as the
    server ACKs at once. (Paced by the kernel in lone segments, it read 50-60 ms on this 20 ms path:
    the server's delayed ACKs, taken for 30-40 ms of queueing, held a lone upload at the floor.)"""
    replay = list(rates(load(TRACE)))
    start = next(s.time for s, other, _ in replay if other > 0.1 * C_UP)
    alone = [(s, d) for s, _, d in replay if replay[0][0].time + 3.0 <= s.time < start]
    assert alone and all(d.reason.startswith("idle link") for _, d in alone)
    assert all(d.queueing is not None and d.queueing < 0.005 for _, d in alone)
    sent = (alone[-1][0].ours - alone[0][0].ours) / (alone[-1][0].time - alone[0][0].time)
    assert sent >= 0.85 * C_UP, "alone it had the link"
    assert min(d.rate for _, d in alone) >= 0.85 * C_UP


class _Throttle:
    def __init__(self, rate: int) -> None:
        self.value = rate
        self.paid: list[int] = []

    def rate(self) -> int:
        return self.value

    async def consume(self, nbytes: int) -> None:
        self.paid.append(nbytes)


class _Transport:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def get_extra_info(self, name: str) -> object:
        return self._sock if name == "socket" else None


class _Writer:
    def __init__(self, sock: socket.socket) -> None:
        self.transport = _Transport(sock)
        self.chunks: list[bytes] = []

    async def write(self, chunk: bytes) -> None:
        self.chunks.append(bytes(chunk))


@pytest.fixture
def connected() -> Iterator[socket.socket]:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.socket()
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1448)  # an Ethernet MSS, not loopback's 64 KiB
    client.connect(server.getsockname())
    conn, _ = server.accept()
    yield client
    for s in (client, conn, server):
        s.close()


@pytest.mark.parametrize("rate", [8 * 1024, 300_000, 2_500_000, 12_500_000, 0])
def test_paced_body_writes_pairs_of_full_segments_sized_to_the_rate(connected: socket.socket, rate: int) -> None:
    """Every piece but the last is an even number of full segments - the receiver ACKs it at once -
    about PIECE_SECONDS of the rate, each paid for before it is written; unlimited, the largest."""
    data = bytes(range(256)) * 4000
    throttle, writer = _Throttle(rate), _Writer(connected)
    asyncio.run(PacedBody(data, throttle).write_with_length(writer, len(data)))  # type: ignore[arg-type]
    assert b"".join(writer.chunks) == data
    assert throttle.paid == [len(c) for c in writer.chunks]
    pair = 2 * connected.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
    sizes = {len(c) for c in writer.chunks[:-1]}
    assert all(size % pair == 0 for size in sizes)
    assert len(sizes) == 1
    size = sizes.pop()
    assert pair <= 2 * 1448
    most = THROTTLED_READ // pair * pair
    assert size == (most if rate == 0 else max(pair, min(most, int(rate * PIECE_SECONDS) // pair * pair)))


class _Recorder:
    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.decision = Decision(1, "")

    def update(self, sample: Sample) -> Decision:
        self.samples.append(sample)
        return self.decision


class _Sending:
    """A socket to a server beyond this host whose TCP_INFO says what `rtt` (s) is."""

    def __init__(self) -> None:
        self.rtt, self.sent = 0.021, 0

    def getsockopt(self, level: int, option: int, buflen: int) -> bytes:
        if option != socket.TCP_INFO:
            return (65535).to_bytes(4, "little")
        raw = bytearray(buflen)
        struct.pack_into("=I", raw, 68, int(self.rtt * 1e6))
        self.sent += 1448
        struct.pack_into("=Q", raw, 200, self.sent)
        return bytes(raw)

    def getsockname(self) -> tuple[str, int]:
        return ("192.0.2.2", 40000)

    def getpeername(self) -> tuple[str, int]:
        return ("198.51.100.2", 80)

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        pass


def test_upload_delay_is_the_least_of_the_last_second() -> None:
    """A server that reads late for a moment delays its ACKs: our RTT rises for a few ticks, which
    is no queue; one that stays up for longer than UP_DELAY_WINDOW is."""
    now = [0.0]
    recorder = _Recorder()
    sensor = LinkSensor(recorder, clock=lambda: now[0], direction=UP)  # type: ignore[arg-type]
    sock = _Sending()
    sensor.attach(sock)

    def tick(rtt: float) -> float:
        sock.rtt = rtt
        now[0] += 0.1
        sensor.decision()
        return recorder.samples[-1].delays["198.51.100.2"]

    assert [tick(0.021) for _ in range(5)] == [0.021] * 5
    assert [tick(0.035) for _ in range(int(UP_DELAY_WINDOW / 0.1) - 1)] == [0.021] * 9, "a stall is no queue"
    assert tick(0.035) == tick(0.035) == 0.035, "a queue that stands is one"
    assert tick(0.022) == 0.022


class _Segments:
    """A socket whose TCP_MAXSEG says `mss`."""

    def __init__(self, mss: int) -> None:
        self.mss = mss

    def getsockopt(self, level: int, option: int) -> int:
        return self.mss


@pytest.mark.parametrize("mss", [32741, 65483])
def test_paced_body_never_writes_more_than_a_throttled_read(mss: int) -> None:
    """Loopback's segments are up to 64 KiB: however large a pair, a piece is at most THROTTLED_READ."""
    data = bytes(300_000)
    throttle, writer = _Throttle(8 * 1024), _Writer(_Segments(mss))  # type: ignore[arg-type]
    asyncio.run(PacedBody(data, throttle).write_with_length(writer, len(data)))  # type: ignore[arg-type]
    sizes = [len(c) for c in writer.chunks]
    assert max(sizes) <= THROTTLED_READ and min(sizes[:-1]) > THROTTLED_READ // 2 and sum(sizes) == len(data)
