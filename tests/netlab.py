"""A shaped link with a real round-trip time, for the politeness test and benchmark.

    client ns  c0 ── rc  router ns  rs ── s0  server ns
    192.0.2.2/24   192.0.2.1 | 198.51.100.1   198.51.100.2/24 (tbf on s0: the bottleneck)
                             └─ tun dl0: the delay line

Why a router namespace with a user-space delay line: a veth pair has no
propagation delay, and this kernel has no netem, so a LEDBAT-style controller
would be tested against a 0.1 ms RTT where queueing delay looks nothing like a
real access link. Every packet the router forwards is policy-routed into the
tun device; the delay line (`python tests/netlab.py delay-line ...`, run inside
the router namespace) holds it for the one-way delay and writes it back, and the
main table forwards it on. The bottleneck is tbf on the server's egress, as in
issue 6 (`rate 100mbit burst 32kbit latency 100ms`): downloads queue there.
`shape_upload` adds the same on the client's egress for uploads.

Addresses come from the documentation ranges only. Everything is removed in
`close()` (and `with NetLab() as lab:`), even after a failure half-way.
"""

from __future__ import annotations

import fcntl
import os
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Sequence

CLIENT_ADDR = "192.0.2.2"
SERVER_ADDR = "198.51.100.2"
ECHO_PORT = 7

_TUNSETIFF = 0x400454CA
_IFF_TUN, _IFF_NO_PI = 0x0001, 0x1000


def available() -> bool:
    """Root, iproute2, tc and the tun device: what the lab needs."""
    return (os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("tc") is not None
            and os.path.exists("/dev/net/tun"))


def _run(*command: str) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class NetLab:
    """Client, router and server namespaces; `rate` shapes the server's egress; RTT = 2 × `one_way_ms`."""

    def __init__(self, *, rate: str = "100mbit", one_way_ms: float = 10.0, server_cc: str = "cubic") -> None:
        tag = uuid.uuid4().hex[:6]
        self.client, self.router, self.server = f"obl{tag}c", f"obl{tag}r", f"obl{tag}s"
        self.rate = rate
        self._procs: list[subprocess.Popen[bytes]] = []
        try:
            self._build(one_way_ms, server_cc)
        except BaseException:
            self.close()
            raise

    def _build(self, one_way_ms: float, server_cc: str) -> None:
        c, r, s = self.client, self.router, self.server
        for ns in (c, r, s):
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "link", "add", "c0", "netns", c, "type", "veth", "peer", "name", "rc", "netns", r)
        _run("ip", "link", "add", "s0", "netns", s, "type", "veth", "peer", "name", "rs", "netns", r)
        _run("ip", "-n", c, "addr", "add", f"{CLIENT_ADDR}/24", "dev", "c0")
        _run("ip", "-n", r, "addr", "add", "192.0.2.1/24", "dev", "rc")
        _run("ip", "-n", r, "addr", "add", "198.51.100.1/24", "dev", "rs")
        _run("ip", "-n", s, "addr", "add", f"{SERVER_ADDR}/24", "dev", "s0")
        for ns, dev in ((c, "c0"), (r, "rc"), (r, "rs"), (s, "s0")):
            _run("ip", "-n", ns, "link", "set", dev, "up")
        _run("ip", "-n", c, "route", "add", "default", "via", "192.0.2.1")
        # Per route: a namespace may not make cubic its default (not in tcp_allowed_congestion_control).
        _run("ip", "-n", s, "route", "add", "default", "via", "198.51.100.1", "congctl", server_cc)
        self.ns_exec(r, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                     "net.ipv4.conf.default.rp_filter=0")
        # The delay line: everything arriving on the veths goes through dl0 first.
        _run("ip", "-n", r, "tuntap", "add", "dev", "dl0", "mode", "tun")
        _run("ip", "-n", r, "link", "set", "dl0", "up", "txqueuelen", "10000")
        self.ns_exec(r, "sysctl", "-qw", "net.ipv4.conf.dl0.rp_filter=0")
        _run("ip", "-n", r, "route", "add", "default", "dev", "dl0", "table", "100")
        for dev in ("rc", "rs"):
            _run("ip", "-n", r, "rule", "add", "iif", dev, "lookup", "100")
        self.spawn(r, sys.executable, os.path.abspath(__file__), "delay-line", "dl0", str(one_way_ms))
        _run("ip", "netns", "exec", s, "tc", "qdisc", "add", "dev", "s0", "root", "tbf", "rate", self.rate,
             "burst", "32kbit", "latency", "100ms")
        self.spawn(s, sys.executable, os.path.abspath(__file__), "echo", SERVER_ADDR)
        deadline = time.monotonic() + 10
        while self.ping(timeout=0.5) is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the lab's delay line or echo server did not come up")

    def shape_upload(self) -> None:
        """The same tbf on the client's egress: uploads queue there."""
        self.ns_exec(self.client, "tc", "qdisc", "add", "dev", "c0", "root", "tbf", "rate", self.rate,
                     "burst", "32kbit", "latency", "100ms")

    @staticmethod
    def wrap(ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def ns_exec(self, ns: str, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.wrap(ns), *command], check=True, capture_output=True, text=True)

    def spawn(self, ns: str, *command: str, **kwargs: object) -> subprocess.Popen[bytes]:
        """A process inside `ns`, stopped by `close()` unless the caller stops it first."""
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen([*self.wrap(ns), *command], **kwargs)  # type: ignore[call-overload]
        self._procs.append(proc)
        return proc

    def wait_listening(self, ns: str, port: int, timeout: float = 15.0) -> None:
        """Return once something in `ns` listens on TCP `port`: a server just spawned there may take
        seconds to start on a busy machine, and a job that finds nobody waits out its retry delay."""
        deadline = time.monotonic() + timeout
        while not self.ns_exec(ns, "ss", "-Hltn", f"sport = :{port}").stdout.strip():
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port} in {ns} after {timeout} s")
            time.sleep(0.05)

    def client_rx_bytes(self) -> int:
        """Bytes the client's interface received (all flows)."""
        out = self.ns_exec(self.client, "cat", "/sys/class/net/c0/statistics/rx_bytes").stdout
        return int(out)

    def ping(self, timeout: float = 1.0) -> float | None:
        """One UDP echo from the client namespace to the server: RTT in ms, None if lost."""
        script = ("import socket,sys,time;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                  f"s.settimeout({timeout});t=time.monotonic();s.sendto(b'p',('{SERVER_ADDR}',{ECHO_PORT}));"
                  "s.recv(16);print((time.monotonic()-t)*1000)")
        result = subprocess.run([*self.wrap(self.client), sys.executable, "-c", script], capture_output=True,
                                text=True)
        return float(result.stdout) if result.returncode == 0 else None

    def pinger(self, interval: float = 0.1) -> subprocess.Popen[bytes]:
        """A process in the client namespace printing one UDP echo RTT (ms, or 'lost') per line."""
        return self.spawn(self.client, sys.executable, os.path.abspath(__file__), "pinger", SERVER_ADDR,
                          str(interval), stdout=subprocess.PIPE)

    def close(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for ns in (self.client, self.router, self.server):
            subprocess.run(["ip", "netns", "del", ns], check=False, stderr=subprocess.DEVNULL)

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _delay_line(dev: str, one_way_ms: float) -> None:
    """Hold every packet for `one_way_ms`, in order (a fixed delay keeps FIFO order)."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", dev.encode(), _IFF_TUN | _IFF_NO_PI))
    os.set_blocking(fd, False)
    delay = one_way_ms / 1000
    held: deque[tuple[float, bytes]] = deque()
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    while True:
        now = time.monotonic()
        while held and held[0][0] <= now:
            os.write(fd, held.popleft()[1])
        if sel.select(held[0][0] - now if held else None):
            now = time.monotonic()
            try:
                while True:
                    held.append((now + delay, os.read(fd, 65536)))
            except BlockingIOError:
                pass


def _echo(addr: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((addr, ECHO_PORT))
        while True:
            data, peer = s.recvfrom(64)
            s.sendto(data, peer)


def _pinger(addr: str, interval: float) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        seq = 0
        while True:
            seq += 1
            started = time.monotonic()
            s.sendto(seq.to_bytes(4, "big"), (addr, ECHO_PORT))
            try:
                while int.from_bytes(s.recv(16), "big") != seq:
                    pass
                print(f"{(time.monotonic() - started) * 1000:.2f}", flush=True)
            except TimeoutError:
                print("lost", flush=True)
            time.sleep(max(0.0, interval - (time.monotonic() - started)))


def main(argv: Sequence[str]) -> None:
    """Helpers the lab runs inside its namespaces."""
    what, *args = argv
    if what == "delay-line":
        _delay_line(args[0], float(args[1]))
    elif what == "echo":
        _echo(args[0])
    elif what == "pinger":
        _pinger(args[0], float(args[1]))
    else:
        raise SystemExit(f"unknown helper {what!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
