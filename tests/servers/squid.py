"""Squid as an authenticating forward proxy on a free loopback port: Digest (digest_file_auth and a user file),
Negotiate (negotiate_kerberos_auth with HTTP/localhost's keytab of the test realm) or NTLM (ntlm_helper.py:
pyspnego's acceptor over a DOMAIN:user:password file), for requests and CONNECT; Negotiate and NTLM may be
offered together, as corporate proxies do (Negotiate first).

Squid runs in the foreground (-N) without a disk cache and serves as its `proxy` user, which owns its files.
The access log names who each request was authenticated as (`users()`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .nginx import free_port

SQUID = "/usr/sbin/squid"
HELPERS = Path("/usr/lib/squid")

_CONFIG = """\
http_port 127.0.0.1:{port}
pid_filename {work}/squid.pid
cache_log {work}/cache.log
logformat users %un %>Hs %rm %ru
access_log stdio:{work}/access.log users
cache deny all
cache_mem 8 MB
coredump_dir {work}
cache_effective_user proxy
shutdown_lifetime 0 seconds
dns_nameservers 127.0.0.1
{auth}
acl authenticated proxy_auth REQUIRED
http_access allow authenticated
http_access deny all
"""


def available() -> str | None:
    return None if os.access(SQUID, os.X_OK) else "squid is not installed (scripts/system-deps.sh installs it)"


class SquidProxy:
    """`schemes`: "digest" or "ntlm" (accounts in `add_user`), or "negotiate" (needs `keytab` and `krb5_conf`),
    or "negotiate" and "ntlm" together."""

    def __init__(self, *schemes: str, keytab: Path | None = None, krb5_conf: Path | None = None,
                 realm: str = "") -> None:
        self.port, self.schemes = free_port(), schemes
        self.work = Path(tempfile.mkdtemp(prefix="openbits-squid-"))
        self.work.chmod(0o755)
        self._users = self.work / "users"
        env = dict(os.environ)
        auth = []
        if "digest" in schemes:
            self._users.touch()
            auth.append(f"auth_param digest program {HELPERS}/digest_file_auth {self._users}\n"
                        "auth_param digest realm openbits-proxy\nauth_param digest children 2")
        if "negotiate" in schemes:
            assert keytab is not None and krb5_conf is not None
            shutil.copy(keytab, self.work / "proxy.keytab")
            auth.append(f"auth_param negotiate program {HELPERS}/negotiate_kerberos_auth -k {self.work}/proxy.keytab "
                        f"-s HTTP/localhost@{realm}\nauth_param negotiate children 2\nauth_param negotiate keep_alive on")
            env["KRB5_CONFIG"] = str(krb5_conf)
        if "ntlm" in schemes:
            self._users.touch(0o600)
            helper = Path(__file__).with_name("ntlm_helper.py")
            auth.append(f"auth_param ntlm program /usr/bin/env NTLM_USER_FILE={self._users} {sys.executable} {helper}\n"
                        "auth_param ntlm children 2\nauth_param ntlm keep_alive on")
        for path in self.work.iterdir():
            shutil.chown(path, "proxy", "proxy")
        shutil.chown(self.work, "proxy", "proxy")
        config = self.work / "squid.conf"
        config.write_text(_CONFIG.format(port=self.port, work=self.work, auth="\n".join(auth)))
        with open(self.work / "stderr.log", "ab") as log:
            self._proc = subprocess.Popen([SQUID, "-N", "-f", str(config)], env=env, stdout=subprocess.DEVNULL,
                                          stderr=log)
        self._wait()

    def _wait(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError("squid exited at start: " + (self.work / "stderr.log").read_text(errors="replace")
                                   + (self.work / "cache.log").read_text(errors="replace")[-2000:])
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"squid did not listen on port {self.port} within {timeout} s")

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"

    def add_user(self, name: str, password: str, domain: str = "OPENBITS") -> None:
        """An account: `name` with `password` (for NTLM in `domain`)."""
        with open(self._users, "a") as users:
            users.write(f"{domain}:{name}:{password}\n" if "ntlm" in self.schemes else f"{name}:{password}\n")

    def users(self) -> list[tuple[str, str, str, str]]:
        """(user, status, method, URL) of each request the proxy handled."""
        log = self.work / "access.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        return [tuple(line.split(" ", 3)) for line in lines if line.count(" ") >= 3]  # type: ignore[misc]

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self.work, ignore_errors=True)
