"""An OpenStack Swift all-in-one with its S3 API, from Debian's packages, on loopback.

One proxy (s3api before tempauth, slo for multipart, copy for UploadPartCopy), one account, container and
object server, each with one device (a plain directory), rings of one replica, and memcached for tempauth.
S3 credentials: access key `test:tester`, secret `testing`, region us-east-1, path-style addressing.
The storage servers do not fork (`workers = 0`); the main proxy has two workers, which its parent stops
with it (stop() sends SIGTERM).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

PACKAGES = ("swift", "swift-proxy", "swift-account", "swift-container", "swift-object", "memcached")
ACCESS_KEY = "test:tester"
SECRET_KEY = "testing"
REGION = "us-east-1"

_STORAGE = """\
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
devices = {devices}
mount_check = false
swift_dir = {swift_dir}
workers = 0
log_level = WARNING

[pipeline:main]
pipeline = {kind}-server

[app:{kind}-server]
use = egg:swift#{kind}
"""

_PROXY = """\
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
swift_dir = {swift_dir}
workers = {workers}
user = root
log_level = WARNING

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl s3api tempauth copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
# A refused connection must not block the only device for a minute (every request 503 meanwhile).
error_suppression_interval = 0

[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{memcached}
# Two connections a worker (the default) time out under 100 uploads at once, and after 10 timeouts memcached
# is shunned for a minute: every request then asks the account and container servers again.
memcache_max_connections = 64
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:tempurl]
use = egg:swift#tempurl
[filter:s3api]
use = egg:swift#s3api
location = {region}
[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
"""


def missing_packages() -> list[str]:
    """Debian packages of the all-in-one that are not installed."""
    out = []
    for package in PACKAGES:
        status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
        if "install ok installed" not in status.stdout:
            out.append(package)
    return out


def ensure_installed() -> None:
    """Install what is missing (as scripts/system-deps.sh would); RuntimeError if that cannot be done."""
    missing = missing_packages()
    if missing:
        done = subprocess.run(["sh", str(Path(__file__).resolve().parents[2] / "scripts" / "system-deps.sh")])
        if done.returncode != 0 or missing_packages():
            raise RuntimeError(f"Swift's Debian packages are missing: {missing} (run scripts/system-deps.sh as root)")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


class SwiftAllInOne:
    """The five processes of a Swift all-in-one; `endpoint` is the proxy's (S3 and native) URL."""

    def __init__(self, timeout: float = 30.0) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="openbits-swift-"))
        self._procs: list[subprocess.Popen[bytes]] = []
        self.proxy_port, account, container, obj, self.memcached_port = free_ports(5)
        self.endpoint = f"http://127.0.0.1:{self.proxy_port}"
        devices = self.work / "devices"
        (devices / "d1").mkdir(parents=True)
        try:
            self._write_rings({"account": account, "container": container, "object": obj})
            self._spawn(["memcached", "-u", "root", "-l", "127.0.0.1", "-p", str(self.memcached_port), "-U", "0"])
            for kind, port in (("account", account), ("container", container), ("object", obj)):
                conf = self.work / f"{kind}-server.conf"
                conf.write_text(_STORAGE.format(port=port, devices=devices, swift_dir=self.work, kind=kind))
                self._spawn([f"/usr/bin/swift-{kind}-server", str(conf), "-v"])
            # The proxy last: one that answers before the account server listens says ServiceUnavailable.
            self._wait([account, container, obj, self.memcached_port], timeout)
            # Two workers: the proxy is the busiest part, and on a shared machine two processes get two shares.
            self._procs.append(self.start_proxy(self.proxy_port, timeout, workers=2))
        except BaseException:
            self.stop()
            raise

    def start_proxy(self, port: int, timeout: float = 30.0, workers: int = 0) -> subprocess.Popen[bytes]:
        """A proxy server on `port` in front of the same storage (proxies hold no state): the main one, or
        a second door a test closes (kill -9: with no workers, nothing else keeps serving) and opens again
        to make the store unreachable for some."""
        conf = self.work / f"proxy-{port}.conf"
        conf.write_text(_PROXY.format(port=port, swift_dir=self.work, memcached=self.memcached_port, region=REGION,
                                      workers=workers))
        log = open(self.work / f"proxy-{port}.log", "ab")
        proc = subprocess.Popen(["/usr/bin/swift-proxy-server", str(conf), "-v"], stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL)
        log.close()
        try:
            self._wait([port], timeout, [proc])
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        return proc

    def _write_rings(self, ports: dict[str, int]) -> None:
        for kind, port in ports.items():
            builder = str(self.work / f"{kind}.builder")
            for args in (["create", "8", "1", "1"], ["add", f"r1z1-127.0.0.1:{port}/d1", "100"], ["rebalance"]):
                subprocess.run(["swift-ring-builder", builder, *args], check=True, capture_output=True)

    def _spawn(self, command: list[str]) -> None:
        log = open(self.work / f"{Path(command[0]).name}.log", "ab")
        self._procs.append(subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL))
        log.close()

    def _wait(self, ports: list[int], timeout: float, also: tuple[subprocess.Popen[bytes], ...] = ()) -> None:
        deadline = time.monotonic() + timeout
        while not all(_listening(p) for p in ports):
            for proc in (*self._procs, *also):
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[0]} exited at start: {self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Swift did not listen within {timeout} s: {self.logs()}")
            time.sleep(0.05)

    def pids(self) -> dict[str, list[int]]:
        """The proxy and the storage servers (with memcached): whose CPU a benchmark counts."""
        return {"swift-proxy": [self._procs[-1].pid], "swift storage": [p.pid for p in self._procs[:-1]]}

    def client(self) -> Any:
        """A botocore (synchronous) S3 client of this Swift, for fixtures and checks."""
        config = Config(region_name=REGION, s3={"addressing_style": "path"}, retries={"total_max_attempts": 1},
                        request_checksum_calculation="when_required", response_checksum_validation="when_required")
        return botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            config=config)

    def make_bucket(self, name: str, timeout: float = 20.0) -> None:
        """Create a bucket; the first requests after start-up may meet a proxy not yet ready (503)."""
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.create_bucket(Bucket=name)
                return
            except (ClientError, BotoCoreError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.work.glob("*.log"))

    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> SwiftAllInOne:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
