"""The controller's senses: TCP_INFO of our own sockets and the byte counters of
the interfaces they use - for downloads (`DOWN`) or uploads (`UP`), one sensor
and one controller per direction, since each has its own bottleneck.

Downloads: we are the receiver, so the delay is the receive-side RTT and the
actuator the receive window (TCP_WINDOW_CLAMP); the counter is rx_bytes.
Uploads: we are the sender, so the delay is our smoothed RTT (tcpi_rtt; its
minimum over time is the base, as for downloads; the least of the last
`UP_DELAY_WINDOW` seconds is the current one). The actuator is the bucket
itself: the body goes out in small pieces of full segments (transport/upload.py,
`PacedBody` in transport/fragments.py, which says why not the kernel's pacing), so bytes wait in our
process, not in the bottleneck's queue in front of someone's foreground upload.
The counter is tx_bytes, and ours are the bytes we sent.

Sampling is lazy - done when the background bucket asks for its rate, at most
every `interval` - so there is no task to own and nothing runs while no
background transfer does. The bucket asks at least every `MAX_WAIT` of
`limiter.TokenBucket`, so a transfer held at the floor still re-samples often.
"""

from __future__ import annotations

import dataclasses
import fcntl
import ipaddress
import json
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, TextIO

from .controller import INITIAL_RATE, Decision, IdleController, Sample

log = logging.getLogger("openbits.bandwidth")

#: Offsets in Linux's struct tcp_info (include/uapi/linux/tcp.h), stable since 4.x.
_U32, _U64 = struct.Struct("=I"), struct.Struct("=Q")
_RTT, _RCV_RTT = 68, 92  # tcpi_rtt (smoothed, sender side), tcpi_rcv_rtt; µs
_BYTES_ACKED, _BYTES_RECEIVED = 120, 128
_SEGS_OUT, _SEGS_IN, _DATA_SEGS_OUT = 136, 140, 156
_BYTES_SENT = 200  # Linux 4.19+; before it, what was acknowledged stands in
_TCP_INFO_LEN, _TCP_INFO_SENT_LEN = 160, 208
Direction = Literal["down", "up"]
DOWN: Direction = "down"
UP: Direction = "up"
#: Headers per segment the interface counts and tcpi_bytes_received does not: Ethernet, IPv4, TCP with timestamps.
_HEADERS = 14 + 20 + 32
_SIOCGIFADDR = 0x8915
#: The receive window we allow, in round trips at a socket's share of the rate: enough to reach
#: the rate, small enough that the server cannot queue much more than that at the bottleneck.
#: Without it the kernel's autotuning (up to tcp_rmem's 32 MB here) soaked up the link for
#: seconds after we slowed our reads: the server saw our buffer fill, not our rate (measured).
WINDOW_RTTS = 1.5
#: The smallest window: about two full segments. At the floor it is what limits the server, and
#: 16 KiB let 5 Mbit/s through on the 20 ms lab link - five times the floor, taken from the
#: foreground; 4 KiB lets through ~1 Mbit/s there, and more where the RTT is shorter.
MIN_WINDOW = 4 * 1024
#: The window follows what arrives, grown by this factor (plus INITIAL_RATE), not a generous
#: allowance: an open window is what the server still sends after we decide to yield.
WINDOW_GROWTH = 1.25
#: Uploads: a path's current delay is the least RTT of this many seconds. Our RTT samples hold the
#: server's reading too: a server busy for a moment (opening a session, syncing a file) sends its
#: ACKs late, and the start of an upload on the loaded lab read 6-11 ms of "queueing" for 0.7 s at
#: a fifth of the link, which the controller took for the link's capacity (the upload then crept
#: up from 15 %; measured). A queue another host's traffic keeps stands far longer than that.
UP_DELAY_WINDOW = 1.0
#: RTT assumed until the kernel has measured one.
_DEFAULT_RTT = 0.05
#: A transfer shows its socket once the response's head is in, and what arrived with it is already in
#: the interface's count: on a link the sensor watches, up to this much of what the socket received
#: is counted as ours when it is attached - a head and the first flights, not the gigabytes a kept
#: connection may have carried before.
ATTACH_CREDIT = 64 * 1024
_SYSFS = Path("/sys/class/net")


class SocketLike(Protocol):
    """What we need of a connected TCP socket (asyncio hands out `TransportSocket`s)."""

    def getsockopt(self, level: int, option: int, buflen: int) -> bytes: ...
    def getsockname(self) -> tuple[str, int] | tuple[str, int, int, int]: ...
    def getpeername(self) -> tuple[str, int] | tuple[str, int, int, int]: ...
    def setsockopt(self, level: int, option: int, value: int | bytes) -> None: ...


@dataclass(frozen=True)
class TcpInfo:
    rcv_rtt: float  # s; 0 until the kernel has a sample
    wire_bytes: int  # payload plus headers, as the interface counts them
    rtt: float = 0.0  # s, the sender's smoothed RTT
    #: bytes we sent (retransmissions too) plus headers of every segment out, as the interface
    #: counts them when they leave, not an RTT later when acknowledged
    sent_wire_bytes: int = 0

    def delay(self, direction: Direction) -> float:
        return self.rtt if direction == UP else self.rcv_rtt

    def bytes(self, direction: Direction) -> int:
        return self.sent_wire_bytes if direction == UP else self.wire_bytes


def tcp_info(sock: SocketLike) -> TcpInfo | None:
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SENT_LEN)
    except OSError:
        return None
    if len(raw) < _TCP_INFO_LEN:
        return None
    (rcv_rtt,) = _U32.unpack_from(raw, _RCV_RTT)
    (received,) = _U64.unpack_from(raw, _BYTES_RECEIVED)
    (segs,) = _U32.unpack_from(raw, _SEGS_IN)
    (rtt,) = _U32.unpack_from(raw, _RTT)
    (acked,) = _U64.unpack_from(raw, _BYTES_ACKED)
    if len(raw) >= _TCP_INFO_SENT_LEN:
        (sent,) = _U64.unpack_from(raw, _BYTES_SENT)
        (segs_out,) = _U32.unpack_from(raw, _SEGS_OUT)
    else:
        sent, (segs_out,) = acked, _U32.unpack_from(raw, _DATA_SEGS_OUT)
    return TcpInfo(rcv_rtt / 1e6, received + segs * _HEADERS, rtt / 1e6, sent + segs_out * _HEADERS)


def interface_of(local_address: str) -> str | None:
    """The interface that holds our end's address: the one the route to the server uses."""
    addr = ipaddress.ip_address(local_address)
    if addr.version == 6:
        try:
            lines = Path("/proc/net/if_inet6").read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            fields = line.split()
            if len(fields) == 6 and ipaddress.ip_address(int(fields[0], 16)) == addr:
                return fields[5]
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(probe, _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            if socket.inet_ntoa(raw[20:24]) == local_address:
                return name
    return None


def link_bytes(interface: str, direction: Direction = DOWN) -> int | None:
    """The interface's rx_bytes (downloads) or tx_bytes (uploads)."""
    counter = "tx_bytes" if direction == UP else "rx_bytes"
    try:
        return int((_SYSFS / interface / "statistics" / counter).read_text())
    except (OSError, ValueError):
        return None


class _Tracked:
    def __init__(self, peer: str, interface: str | None, wire_bytes: int, clamp: int) -> None:
        self.peer, self.interface, self.wire_bytes = peer, interface, wire_bytes
        #: the window clamp last set (DOWN), and the one to restore
        self.original_clamp = self.limit = clamp
        self.rtt = _DEFAULT_RTT


def _set_clamp(sock: SocketLike, clamp: int) -> None:
    """TCP_WINDOW_CLAMP, not SO_RCVBUF: it bounds the window without locking the buffer, so the
    connection goes back to autotuning when a foreground job reuses it."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_WINDOW_CLAMP, clamp)
    except OSError:
        pass


class LinkSensor:
    """Samples our attached sockets and their interfaces into an `IdleController`.

    Byte counts are kept as sums of deltas, so sockets and interfaces may come
    and go without the controller seeing a jump.
    """

    def __init__(self, controller: IdleController | None = None, *, interval: float = 0.1,
                 clock: Callable[[], float] = time.monotonic, trace: TextIO | None = None,
                 direction: Direction = DOWN) -> None:
        """`trace` receives every sample and decision as a JSON line: the recorded traces the tests replay."""
        self.controller = controller or IdleController()
        self.direction = direction
        self._trace = trace
        self._interval = interval
        self._clock = clock
        self._sockets: dict[SocketLike, _Tracked] = {}
        self._links: dict[str, int] = {}  # interface -> last rx_bytes
        #: UP: peer -> (time, delay) of the last UP_DELAY_WINDOW, increasing delays; kept across fragments
        self._recent: dict[str, deque[tuple[float, float]]] = {}
        self._ours = 0
        self._link = 0
        self._next = 0.0
        self._logged = ""

    def attach(self, sock: SocketLike) -> None:
        """A background transfer starts receiving (or, for UP, sending) on `sock`."""
        info = tcp_info(sock)
        if info is None or sock in self._sockets:
            return
        try:
            local, peer = sock.getsockname()[0], sock.getpeername()[0]
            clamp = int.from_bytes(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_WINDOW_CLAMP, 4), "little")
        except OSError:
            return
        if ipaddress.ip_address(peer).is_loopback:
            return  # no link to share: a loopback transfer runs at the policy's cap alone
        interface = interface_of(local)  # an ioctl per interface: only for transfers that share a link
        if interface == "lo":
            return
        if interface is not None and not (_SYSFS / interface).exists():
            interface = None
        self._sockets[sock] = _Tracked(peer, interface, info.bytes(self.direction), clamp)
        if interface is not None and interface in self._links:
            # Else, beside another transfer, a new one's first bytes read as someone else's traffic,
            # and the controller yields the link to its own job (to the floor: see `_decide`).
            self._ours += min(info.bytes(self.direction), ATTACH_CREDIT)
        if interface is not None and interface not in self._links:
            count = link_bytes(interface, self.direction)
            if count is not None:
                self._links[interface] = count

    def detach(self, sock: SocketLike) -> None:
        """The transfer on `sock` ended: count its last bytes, then forget it."""
        tracked = self._sockets.pop(sock, None)
        info = tcp_info(sock) if tracked is not None else None
        if tracked is not None and info is not None:
            self._ours += max(0, info.bytes(self.direction) - tracked.wire_bytes)
            if self.direction == DOWN:
                _set_clamp(sock, tracked.original_clamp)  # a foreground job may reuse the connection
        if tracked is not None and not any(t.interface == tracked.interface for t in self._sockets.values()):
            self._links.pop(tracked.interface or "", None)

    def decision(self) -> Decision | None:
        """The controller's latest decision, after a fresh sample if one is due; None while no
        background transfer crosses a link (nothing to measure, nobody to yield to)."""
        if not self._sockets:
            return None
        now = self._clock()
        if now >= self._next:
            self._next = now + self._interval
            self._sample(now)
        return self.controller.decision

    def _counters(self) -> dict[str, int]:
        counts = {}
        for interface in self._links:
            count = link_bytes(interface, self.direction)
            if count is not None:
                counts[interface] = count
        return counts

    def _sample(self, now: float) -> None:
        # The interfaces' counters are read before and after our sockets, and a tick's link bytes
        # run from the last read of the tick before to the first read of this one: the link's
        # interval lies inside our sockets', so a pause between the reads (a GIL hand-off to the
        # splice thread, a busy CPU) can hide competing traffic for a tick but never make some up.
        # Read once, a pause of ~8 ms at load 3 showed 3.3 Mbit/s of other traffic that was not
        # there, and the download yielded to nobody (0.89 of the link in the bench's solo window).
        before = self._counters()
        delays: dict[str, float] = {}
        for sock, tracked in self._sockets.items():
            info = tcp_info(sock)
            if info is None:
                continue
            sent_or_received, delay = info.bytes(self.direction), info.delay(self.direction)
            self._ours += max(0, sent_or_received - tracked.wire_bytes)
            tracked.wire_bytes = sent_or_received
            if delay > 0:
                tracked.rtt = delay
                # The most congested socket to a server speaks for its path.
                delays[tracked.peer] = max(delays.get(tracked.peer, 0.0), delay)
        after = self._counters()
        if self.direction == UP:
            delays = {peer: self._least_recent(peer, now, delay) for peer, delay in delays.items()}
        for interface, last in list(self._links.items()):
            if interface not in before or interface not in after:
                del self._links[interface]
                continue
            self._link += max(0, before[interface] - last)
            self._links[interface] = after[interface]
        link = self._link if self._links else None
        sample = Sample(now, self._ours, link, delays)
        decision = self.controller.update(sample)
        if self._trace is not None:
            self._trace.write(json.dumps({"sample": dataclasses.asdict(sample),
                                          "decision": dataclasses.asdict(decision)}) + "\n")
        if self.direction == DOWN:  # uploads: the bucket is the actuator (see the module's doc)
            self._clamp_windows(min(decision.rate, WINDOW_GROWTH * self.controller.arriving + INITIAL_RATE))
        if decision.reason != self._logged:
            self._logged = decision.reason
            log.debug("background rate %d B/s: %s", decision.rate, decision.reason)

    def _least_recent(self, peer: str, now: float, delay: float) -> float:
        """The least delay of `peer`'s path in the last UP_DELAY_WINDOW seconds, this one included."""
        recent = self._recent.setdefault(peer, deque())
        while recent and recent[-1][1] >= delay:
            recent.pop()
        recent.append((now, delay))
        while recent[0][0] < now - UP_DELAY_WINDOW:
            recent.popleft()
        return recent[0][1]

    def _clamp_windows(self, rate: float) -> None:
        share = rate / max(1, len(self._sockets))
        for sock, tracked in self._sockets.items():
            clamp = int(max(MIN_WINDOW, WINDOW_RTTS * share * tracked.rtt))
            if abs(clamp - tracked.limit) > tracked.limit / 8:  # a syscall only for a real change
                tracked.limit = clamp
                _set_clamp(sock, clamp)
