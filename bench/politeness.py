"""`make bench-politeness`: does a background download leave the link to the user? (issue 6)

On a shaped link with a real RTT (tests/netlab.py: tbf 100 Mbit, burst 32 kbit,
latency 100 ms on the server's egress; a 20 ms RTT delay line), for each sender
congestion control (cubic, bbr) and each background downloader - aria2c
unlimited, aria2c capped at 10 % of the link, an openbits NORMAL job - it
measures, in one run:

* fg kept: a foreground `curl` of 30 MiB, with the background running, as a
  share of the same curl alone (goal for openbits: >= 90 %);
* ping +: median UDP echo RTT while the background runs alone, minus idle
  (goal: <= 25 ms);
* bg solo: the background's rate alone, as a share of the link (rx bytes of
  the client's interface, headers included, over the tbf rate; goal >= 85 %);
* recovery: seconds after the curl ends until the background is back at 85 %.

Then uploads (issue 6), on the lab at 20 Mbit/s with the same tbf on the
client's egress (`shape_upload`; Python keeps up at both ends on a shared
core; the sender's congestion control is this host's): a foreground `curl -T`
of 12 MiB to nginx's PUT beside `curl -T` unlimited, capped at 10 %, and an
openbits NORMAL upload job (to openbits-server), with the same four figures
from the client interface's tx bytes.

Root only; everything stays inside the lab's namespaces. The machine is shared:
run it more than once before believing a figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from openbits import JobPriority, JobState, JobType  # noqa: E402
from tests.daemon import DaemonProcess  # noqa: E402
from tests.netlab import SERVER_ADDR, NetLab, available  # noqa: E402
from tests.servers.nginx import NginxServer  # noqa: E402

LINK_BITS = 100e6
FG_SIZE = 30 * 1024 * 1024
WARMUP, SOLO_WINDOW, RECOVERY_LIMIT = 5.0, 4.0, 10.0
UP_RATE, UP_BITS = "20mbit", 20e6
UP_FG_SIZE = 12 * 1024 * 1024
UPLOAD_PORT = 8080
_PUT = """        location /put/ {{ dav_methods PUT; client_max_body_size 0; root {root}; }}
"""


@dataclass
class Result:
    sender: str
    contender: str
    fg_kept: float
    ping_added: float
    bg_solo: float
    recovery: float | None


class RxMeter:
    """Samples the client interface's rx_bytes (or tx_bytes) every 0.1 s in the client namespace."""

    def __init__(self, lab: NetLab, counter: str = "rx_bytes", link_bits: float = LINK_BITS) -> None:
        self._proc = lab.spawn(lab.client, "sh", "-c",
                               f"while :; do cat /sys/class/net/c0/statistics/{counter}; sleep 0.1; done",
                               stdout=subprocess.PIPE)
        self._link_bits = link_bits
        self.samples: list[tuple[float, int]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.samples.append((time.monotonic(), int(line)))

    def rate(self, start: float, end: float) -> float:
        """Link share (0..1) received between two instants."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return 0.0
        (t0, b0), (t1, b1) = inside[0], inside[-1]
        return (b1 - b0) * 8 / (t1 - t0) / self._link_bits

    def settle(self, share: float = 0.05, limit: float = 10.0) -> None:
        """Wait until the link is quiet: a killed `curl -T` leaves its socket buffer draining."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = time.monotonic()
            if self.rate(now - 0.5, now) < share:
                return

    def recovered_after(self, start: float, share: float, limit: float) -> float | None:
        """Seconds after `start` until a 0.5 s window reaches `share` of the link."""
        deadline = start + limit
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = time.monotonic()
            if now - start >= 0.5 and self.rate(now - 0.5, now) >= share:
                return now - start
        return None


def pings(lab: NetLab, seconds: float) -> list[float]:
    pinger = lab.pinger(0.05)
    time.sleep(seconds)
    pinger.terminate()
    assert pinger.stdout is not None
    out = pinger.stdout.read().decode().split()
    pinger.wait()
    return [float(x) for x in out if x != "lost"]


def curl(lab: NetLab, url: str) -> float:
    """Foreground download of the 30 MiB file: bytes/s."""
    out = lab.ns_exec(lab.client, "curl", "-s", "-o", "/dev/null", "-w", "%{speed_download}", url).stdout
    return float(out)


@contextmanager
def running(lab: NetLab, command: list[str]) -> Iterator[None]:
    """A program in the client namespace for as long as the block lasts."""
    proc = lab.spawn(lab.client, *command)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def aria2c(lab: NetLab, url: str, scratch: Path, limit: str | None) -> Iterator[None]:
    scratch.mkdir(parents=True, exist_ok=True)
    command = ["aria2c", "-q", "-x1", "-s1", "--file-allocation=none", "--allow-overwrite=true",
               "--auto-file-renaming=false", "-d", str(scratch), "-o", "bg.bin", url]
    if limit:
        command.insert(1, f"--max-download-limit={limit}")
    try:
        with running(lab, command):
            yield
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def curl_upload(lab: NetLab, path: Path, url: str) -> float:
    """Foreground upload (`curl -T`, a PUT): bytes/s."""
    out = lab.ns_exec(lab.client, "curl", "-s", "-o", "/dev/null", "-T", str(path), "-w", "%{speed_upload}",
                      url).stdout
    return float(out)


def curl_upload_background(lab: NetLab, path: Path, url: str, limit: str | None) -> AbstractContextManager[None]:
    command = ["curl", "-s", "-o", "/dev/null", "-T", str(path), url]
    if limit:
        command[1:1] = ["--limit-rate", limit]
    return running(lab, command)


@contextmanager
def openbits(lab: NetLab, url: str, scratch: Path, upload: Path | None = None) -> Iterator[None]:
    """An openbits NORMAL job: a download of `url`, or an upload of `upload` to it."""
    daemon = DaemonProcess(scratch / "daemon", wrap=NetLab.wrap(lab.client)).start()
    try:
        with daemon.manager() as manager:
            job_type = JobType.DOWNLOAD if upload is None else JobType.UPLOAD
            job = manager.create_job("background", job_type, priority=JobPriority.NORMAL)
            job.add_file(url, scratch / "bg.bin" if upload is None else upload)
            job.resume()
            try:
                yield
            finally:
                if job.state not in (JobState.CANCELLED, JobState.ACKNOWLEDGED):
                    job.cancel()
    finally:
        daemon.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def measure(lab: NetLab, meter: RxMeter, foreground: Callable[[], float], sender: str, solo: float,
            idle_ping: float, name: str, background: Callable[[], AbstractContextManager[None]]) -> Result:
    """The four figures of one background beside one foreground transfer (`foreground` returns bytes/s)."""
    with background():
        time.sleep(WARMUP)
        started = time.monotonic()
        ping_list = pings(lab, SOLO_WINDOW)
        bg_solo = meter.rate(started, time.monotonic())
        fg = foreground()
        recovery = meter.recovered_after(time.monotonic(), 0.85, RECOVERY_LIMIT)
    return Result(sender, name, fg / solo, statistics.median(ping_list) - idle_ping, bg_solo, recovery)


def run_contenders(lab: NetLab, meter: RxMeter, foreground: Callable[[], float], sender: str,
                   contenders: list[tuple[str, Callable[[], AbstractContextManager[None]]]]) -> list[Result]:
    idle_ping = statistics.median(pings(lab, 2.0))
    solo = max(foreground() for _ in range(2))
    print(f"# {sender}: foreground alone {solo * 8 / 1e6:.1f} Mbit/s, idle ping {idle_ping:.1f} ms", flush=True)
    results = []
    for name, background in contenders:
        meter.settle()
        result = measure(lab, meter, foreground, sender, solo, idle_ping, name, background)
        print(f"  {row(result)}", flush=True)
        results.append(result)
    return results


def run_sender(sender: str, www: Path, scratch: Path) -> list[Result]:
    with NetLab(server_cc=sender) as lab:
        nginx = NginxServer(www, host=SERVER_ADDR, port=80, wrap=NetLab.wrap(lab.server))
        try:
            big = nginx.url("big.bin")
            contenders: list[tuple[str, Callable[[], AbstractContextManager[None]]]] = [
                ("aria2c", lambda: aria2c(lab, big, scratch / "aria2c", None)),
                ("aria2c capped 10 %", lambda: aria2c(lab, big, scratch / "aria2c", f"{int(LINK_BITS / 80)}")),
                ("openbits NORMAL", lambda: openbits(lab, big, scratch / "openbits")),
            ]
            return run_contenders(lab, RxMeter(lab), lambda: curl(lab, nginx.url("fg.bin")), sender, contenders)
        finally:
            nginx.stop()


def run_uploads(work: Path) -> list[Result]:
    """Background uploads beside a foreground `curl -T`, on a link shaped in the upload direction."""
    www, incoming, fg = work / "up-www", work / "incoming", work / "fg-up.bin"
    (www / "put").mkdir(parents=True)
    incoming.mkdir()
    for d in (work, www, www / "put", incoming):
        d.chmod(0o777)  # nginx's worker and openbits-server write here
    fg.write_bytes(os.urandom(UP_FG_SIZE))
    big = work / "big-up.bin"
    with open(big, "wb") as fh:
        fh.truncate(8 * 1024 ** 3)  # sparse: no background upload ends during the bench
    with NetLab(rate=UP_RATE) as lab:
        lab.shape_upload()
        cc = lab.ns_exec(lab.client, "sysctl", "-n", "net.ipv4.tcp_congestion_control").stdout.strip()
        server = lab.spawn(lab.server, sys.executable, "-m", "openbits.server", "--root", str(incoming),
                           "--listen", f"{SERVER_ADDR}:{UPLOAD_PORT}")
        nginx = NginxServer(www, host=SERVER_ADDR, port=80, wrap=NetLab.wrap(lab.server),
                            locations=_PUT.format(root=www))
        try:
            lab.wait_listening(lab.server, UPLOAD_PORT)
            bg_put, bits = nginx.url("put/bg.bin"), f"http://{SERVER_ADDR}:{UPLOAD_PORT}/bg.bin"
            capped = f"{int(UP_BITS / 80)}"  # 10 % of the link, bytes/s
            contenders: list[tuple[str, Callable[[], AbstractContextManager[None]]]] = [
                ("curl -T", lambda: curl_upload_background(lab, big, bg_put, None)),
                ("curl -T capped 10 %", lambda: curl_upload_background(lab, big, bg_put, capped)),
                ("openbits NORMAL upload", lambda: openbits(lab, bits, work / "openbits-up", upload=big)),
            ]
            return run_contenders(lab, RxMeter(lab, "tx_bytes", UP_BITS),
                                  lambda: curl_upload(lab, fg, nginx.url("put/fg.bin")), f"upload ({cc})",
                                  contenders)
        finally:
            nginx.stop()
            server.terminate()
            server.wait(10)


def row(r: Result) -> str:
    recovery = f"{r.recovery:.1f} s" if r.recovery is not None else f"> {RECOVERY_LIMIT:.0f} s"
    return (f"| {r.sender} | {r.contender} | {r.fg_kept * 100:.0f} % | {r.ping_added:+.1f} ms | "
            f"{r.bg_solo * 100:.0f} % | {recovery} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--senders", default="cubic,bbr", help="server congestion controls (default cubic,bbr)")
    parser.add_argument("--no-uploads", action="store_true", help="leave out the upload rows")
    args = parser.parse_args()
    if not available() or shutil.which("aria2c") is None or shutil.which("curl") is None:
        raise SystemExit("bench-politeness needs root, iproute2, tc, /dev/net/tun, curl and aria2c")
    work = Path(tempfile.mkdtemp(prefix="openbits-politeness-"))
    try:
        www = work / "www"
        www.mkdir()
        (www / "fg.bin").write_bytes(os.urandom(FG_SIZE))
        with open(www / "big.bin", "wb") as fh:
            fh.truncate(8 * 1024 ** 3)  # sparse: nginx serves zeros from the page cache, never from disk
        results = [r for sender in args.senders.split(",") if sender
                   for r in run_sender(sender, www, work / "scratch")]
        if not args.no_uploads:
            results += run_uploads(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n| sender | background | fg kept | ping + (bg alone) | bg solo, % of link | recovery to 85 % |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(row(r))
    print("\nGoals for openbits: fg kept >= 90 %, ping + <= 25 ms, bg solo >= 85 %, recovery within a few s. "
          "Link: tbf 100 Mbit/s (bg solo counts headers, as tbf does); RTT 20 ms (delay line). Upload rows: "
          f"tbf {UP_BITS / 1e6:.0f} Mbit/s on the client's egress, a {UP_FG_SIZE >> 20} MiB curl -T to nginx.")


if __name__ == "__main__":
    main()
