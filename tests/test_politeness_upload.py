"""Uploads yield too (issue 6): a NORMAL upload job slows down while a foreground
upload (`curl -T` to nginx's PUT) runs on a link shaped in the upload direction,
and takes the link back after it.

tests/netlab.py builds the link (tbf on the client's egress too, 20 ms RTT);
the background job talks the BITS upload protocol to openbits-server in the
server namespace. Rates come from the client interface's tx_bytes (fragments
are acknowledged seconds apart, too coarse to measure with). Lenient bounds:
this checks the direction of the effect, in well under a minute. Before the
upload body went out in pieces of full segments (transport/upload.py), the
server's delayed ACKs inflated tcpi_rtt and held a lone upload at the floor.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbits import JobPriority, JobState, JobType

from .daemon import DaemonProcess
from .netlab import SERVER_ADDR, NetLab, available
from .servers import nginx

pytestmark = [
    pytest.mark.slow,
    pytest.mark.serial,
    pytest.mark.root,
    pytest.mark.skipif(not available() or not nginx.available(),
                       reason="needs root, iproute2, tc, /dev/net/tun and nginx"),
]

#: Small enough that Python on a shared core keeps up on both ends of the upload.
LINK = 20e6 / 8
_PUT = """        location /put/ {{ dav_methods PUT; client_max_body_size 0; root {root}; }}
"""


@pytest.fixture
def lab() -> Iterator[NetLab]:
    with NetLab(rate="20mbit", server_cc="cubic") as lab:
        lab.shape_upload()
        yield lab


def tx_bytes(lab: NetLab) -> int:
    return int(lab.ns_exec(lab.client, "cat", "/sys/class/net/c0/statistics/tx_bytes").stdout)


def tx_rate(lab: NetLab, seconds: float) -> float:
    before, start = tx_bytes(lab), time.monotonic()
    time.sleep(seconds)
    return (tx_bytes(lab) - before) / (time.monotonic() - start)


def test_background_upload_yields_to_a_foreground_upload_and_recovers(lab: NetLab, tmp_path: Path) -> None:
    began = time.monotonic()
    incoming, www = tmp_path / "incoming", tmp_path / "www"
    (www / "put").mkdir(parents=True)
    incoming.mkdir()
    for d in (tmp_path, www, www / "put", incoming):
        d.chmod(0o777)  # nginx's worker and the server write here
    fg = tmp_path / "fg.bin"
    fg.write_bytes(os.urandom(int(8 * LINK)))  # ~8 s alone on the link
    big = tmp_path / "big.bin"
    with open(big, "wb") as fh:
        fh.truncate(1024 ** 3)  # sparse: the job never finishes during the test
    upload_server = lab.spawn(lab.server, sys.executable, "-m", "openbits.server", "--root", str(incoming),
                              "--listen", f"{SERVER_ADDR}:8080")
    put = nginx.NginxServer(www, host=SERVER_ADDR, port=80, wrap=lab.wrap(lab.server),
                            locations=_PUT.format(root=www))
    lab.wait_listening(lab.server, 8080)
    daemon = DaemonProcess(tmp_path / "d", wrap=lab.wrap(lab.client)).start()  # upload_control is on by default
    try:
        with daemon.manager() as manager:
            job = manager.create_job("background", JobType.UPLOAD, priority=JobPriority.NORMAL)
            job.add_file(f"http://{SERVER_ADDR}:8080/big.bin", big)
            job.resume()
            time.sleep(5)  # the controller finds the link
            alone = tx_rate(lab, 3)
            info = job.info()
            assert alone > 0.6 * LINK, (f"alone the upload gets most of the link ({alone:.0f} B/s; {info.state.name}, "
                                        f"{info.rate_reason}, error {info.error})")
            assert job.state == JobState.TRANSFERRING

            before, start = tx_bytes(lab), time.monotonic()
            out = lab.ns_exec(lab.client, "curl", "-s", "-o", "/dev/null", "-T", str(fg),
                              "-w", "%{speed_upload} %{size_upload} %{http_code}", put.url("put/fg.bin")).stdout
            seconds = time.monotonic() - start
            speed, size, status = out.split()
            assert status in ("201", "204"), out
            during = (tx_bytes(lab) - before - float(size)) / seconds
            assert during < 0.35 * alone, f"the job yields: {during:.0f} B/s beside curl -T, {alone:.0f} alone"
            assert float(speed) > 0.6 * LINK, f"the foreground upload gets most of the link ({speed} B/s)"

            deadline = time.monotonic() + 8
            while (after := tx_rate(lab, 1.0)) < 0.6 * alone:
                assert time.monotonic() < deadline, f"no recovery within 8 s ({after:.0f} B/s)"
            assert job.state == JobState.TRANSFERRING
            job.cancel()
    finally:
        daemon.stop()
        put.stop()
        upload_server.terminate()
        upload_server.wait(10)
    assert time.monotonic() - began < 60
