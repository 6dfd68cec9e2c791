"""A throwaway nginx serving one directory on a free loopback port.

Tests and benchmarks use it as the reference HTTP/1.1 server: real range
support, strong ETags, sendfile - what BITS expects of a download server.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

NGINX = "/usr/sbin/nginx"

_CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    types {{ }}
    default_type application/octet-stream;
{http}
    server {{
        listen {host}:{port};
        root {root};
    }}
}}
"""


def available() -> bool:
    """Whether nginx is installed (tests skip otherwise)."""
    return os.access(NGINX, os.X_OK)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NginxServer:
    """nginx in the foreground serving `root_dir`; `stop()` kills it and removes its scratch dir."""

    def __init__(self, root_dir: str | os.PathLike[str], *, timeout: float = 5.0, host: str = "127.0.0.1",
                 port: int | None = None, wrap: Sequence[str] = (), locations: str = "", http: str = "",
                 servers: str = "") -> None:
        """`wrap` prefixes the command (`ip netns exec NS`: the politeness lab serves from its server namespace);
        `locations` adds nginx `location` blocks to the server (a reverse proxy, say), `http` directives to
        the http block (an `upstream` for them, a `log_format`), `servers` whole `server` blocks beside it (the
        TLS servers of tests/servers/tls.py)."""
        self.root = Path(root_dir).resolve()
        self._work = Path(tempfile.mkdtemp(prefix="openbits-nginx-"))
        self.host, self.port, self._wrap = host, port or free_port(), list(wrap)
        conf = self._work / "nginx.conf"
        config = _CONFIG.format(work=self._work, host=host, port=self.port, root=self.root, http=http)
        config = config.replace("        root ", locations + "        root ", 1)
        conf.write_text(config[: config.rindex("}")] + servers + "}\n")
        self._proc = subprocess.Popen(
            [*self._wrap, NGINX, "-c", str(conf), "-e", str(self._work / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_listening(timeout)

    @property
    def pid(self) -> int:
        """The one nginx process (master_process off)."""
        return self._proc.pid

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                log = (self._work / "error.log").read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"nginx exited at start: {log}")
            if self._listening():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"nginx did not listen on port {self.port} within {timeout} s")

    def _listening(self) -> bool:
        if self._wrap:  # another namespace: ask it rather than connect
            command = [*self._wrap, "ss", "-Hltn", f"sport = :{self.port}"]
            return bool(subprocess.run(command, capture_output=True, text=True).stdout.strip())
        try:
            socket.create_connection((self.host, self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def url(self, name: str) -> str:
        return f"http://{self.host}:{self.port}/{name.lstrip('/')}"

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._work, ignore_errors=True)

    def __enter__(self) -> NginxServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
