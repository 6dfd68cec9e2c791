"""openbits-server nodes on object storage behind nginx round-robin: the farm of issue 19.

Each node is a real `openbits-server` process on a fixed loopback port (so a node killed with -9 comes
back where nginx expects it); nginx spreads requests over them with no affinity and logs, per request,
the packet type, the session id and the node that served it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .nginx import NginxServer
from .swift import ACCESS_KEY, REGION, SECRET_KEY, free_ports


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(work: Path, endpoint: str, bucket: str, prefix: str, vdirs: dict[str, dict[str, Any]],
                 **top: Any) -> Path:
    """A server TOML for the s3 backend; the credentials go to a 0600 file beside it, not into the TOML."""
    work.mkdir(parents=True, exist_ok=True)
    credentials = work / "s3-credentials.toml"
    credentials.write_text(f"access_key_id = {_toml(ACCESS_KEY)}\nsecret_access_key = {_toml(SECRET_KEY)}\n")
    credentials.chmod(0o600)
    lines = [f"{k} = {_toml(v)}" for k, v in top.items()]
    lines += ["[storage]", 'backend = "s3"', f"endpoint = {_toml(endpoint)}", f"bucket = {_toml(bucket)}",
              f"prefix = {_toml(prefix)}", f"region = {_toml(REGION)}", f"credentials_file = {_toml(credentials)}",
              "max_parts = 1000"]
    for name, settings in vdirs.items():
        lines.append(f'[vdir."{name}"]')
        lines += [f"{k} = {_toml(v)}" for k, v in settings.items()]
    config = work / "server.toml"
    config.write_text("\n".join(lines) + "\n")
    config.chmod(0o644)  # world-readable is fine: it holds no secret
    return config


@dataclass
class Node:
    """One openbits-server process."""

    config: Path
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> Node:
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "openbits.server", "--config", str(self.config), "--listen",
             f"127.0.0.1:{self.port}", "--log-level", "WARNING"],
            stdout=subprocess.PIPE, stderr=out, stdin=subprocess.DEVNULL)
        out.close()
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if "listening on" not in line:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"openbits-server did not start: {line!r}\n{self.log.read_text(errors='replace')}")
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


_UPSTREAM = """
    map $http_bits_session_id $bits_session {{ "" $sent_http_bits_session_id; default $http_bits_session_id; }}
    log_format bits '$upstream_addr $http_bits_packet_type $bits_session $status $request_method $msec';
    upstream farm {{
{servers}
    }}
"""

_LOCATION = """
        location / {{
            proxy_pass http://farm;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_request_buffering off;
            proxy_buffering off;
            client_max_body_size 0;
            proxy_read_timeout 330s;
            access_log {log} bits;
        }}
"""


@dataclass
class Farm:
    """`count` nodes of one configuration and nginx in front of them."""

    work: Path
    config: Path
    count: int = 3
    nodes: list[Node] = field(default_factory=list)
    nginx: NginxServer | None = None

    def start(self) -> Farm:
        self.work.mkdir(parents=True, exist_ok=True)
        for i, port in enumerate(free_ports(self.count)):
            self.nodes.append(Node(self.config, port, self.work / f"node{i}.log").start())
        # max_fails=0: a node that refused a connection is tried again next time (it may be back), not shunned
        # for 10 s; a refused connection still goes on to the next node (nothing was sent yet)
        servers = "\n".join(f"        server 127.0.0.1:{n.port} max_fails=0;" for n in self.nodes)
        (self.work / "www").mkdir(exist_ok=True)
        self.nginx = NginxServer(self.work / "www", http=_UPSTREAM.format(servers=servers),
                                 locations=_LOCATION.format(log=self.access_log))
        return self

    @property
    def access_log(self) -> Path:
        return self.work / "access.log"

    def url(self, name: str) -> str:
        assert self.nginx is not None
        return self.nginx.url(name)

    def served(self, session_id: str | None = None) -> list[tuple[str, str, str, float]]:
        """(node address, packet type or method, status, time answered) of each request (of one session),
        in the order nginx answered them."""
        out = []
        if not self.access_log.exists():
            return out
        for line in self.access_log.read_text().splitlines():
            # "A, B" when A refused the connection and B served the request
            upstream, packet, sid, status, method, msec = line.rsplit(" ", 5)
            if session_id is None or sid.lower() == session_id.lower():
                out.append((upstream.split(", ")[-1], packet if packet != "-" else method, status, float(msec)))
        return out

    def restart(self) -> None:
        """Every node stopped (SIGTERM, all at once), then started again on its port."""
        for node in self.nodes:
            if node.proc is not None:
                node.proc.terminate()
        for node in self.nodes:
            node.stop()
        for node in self.nodes:
            node.start()

    def logs(self) -> str:
        return "\n".join(f"--- {n.log.name}\n{n.log.read_text(errors='replace')[-4000:]}" for n in self.nodes
                         if n.log.exists())

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for node in self.nodes:
            node.stop()


def wait_for(check: Any, timeout: float = 20.0, every: float = 0.05) -> Any:
    """Poll `check()` until it returns something true; that value (TimeoutError after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{getattr(check, '__name__', 'condition')} not met within {timeout} s")
        time.sleep(every)


def receiving_node(nodes: Sequence[Node]) -> Node | None:
    """The node that has a connection open right now (nginx opens one per request): the one receiving
    a fragment while a throttled upload runs."""
    busy = []
    for node in nodes:
        if node.proc is None:
            continue
        out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{node.port} )"],
                             capture_output=True, text=True).stdout
        if out.strip():
            busy.append(node)
    return busy[0] if len(busy) == 1 else None

