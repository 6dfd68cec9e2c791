"""A throwaway MIT Kerberos realm on loopback, and Apache with mod_auth_gssapi asking for Negotiate.

The realm's krb5.conf is the fixture's own: every process that should see the realm (the daemon, kinit,
the test) gets `KRB5_CONFIG` pointing at it. The KDC listens on TCP only, on a free loopback port; the
database, principals and the web server's keytab are made by kdb5_util/kadmin.local at start (about
half a second). Apache runs in the foreground (-X) with only the modules it needs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .nginx import free_port

REALM = "OPENBITS.TEST"
HOST = "localhost"  # the web server's name in URLs: its principal is HTTP/localhost
MODULES = Path("/usr/lib/apache2/modules")
_BINARIES = ("/usr/sbin/krb5kdc", "/usr/sbin/kdb5_util", "/usr/sbin/kadmin.local", "/usr/sbin/apache2",
             str(MODULES / "mod_auth_gssapi.so"), "/usr/bin/kinit")


def available() -> str | None:
    """Why the realm cannot run here, or None."""
    missing = [b for b in _BINARIES if not os.path.exists(b)]
    return f"missing {', '.join(missing)} (scripts/system-deps.sh installs them)" if missing else None


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited at start: {log.read_text(errors='replace') if log.exists() else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class KerberosRealm:
    """krb5kdc for REALM; `add_user` makes principals, `kinit` gets a user a ticket."""

    def __init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="openbits-krb5-"))
        self.work.chmod(0o755)  # test users read krb5.conf
        self.port = free_port()
        #: every uid's default ticket cache is here (a sticky folder like /tmp), not in the machine's /tmp
        self.ccaches = self.work / "ccaches"
        self.ccaches.mkdir()
        self.ccaches.chmod(0o1777)
        self.krb5_conf = self.work / "krb5.conf"
        self.krb5_conf.write_text(
            f"[libdefaults]\n default_realm = {REALM}\n dns_lookup_kdc = false\n dns_lookup_realm = false\n"
            f" rdns = false\n dns_canonicalize_hostname = false\n udp_preference_limit = 1\n"
            f" default_ccache_name = FILE:{self.ccaches}/krb5cc_%{{uid}}\n"
            f"[realms]\n {REALM} = {{\n  kdc = 127.0.0.1:{self.port}\n }}\n"
            f"[domain_realm]\n {HOST} = {REALM}\n")
        self.krb5_conf.chmod(0o644)
        kdc_conf = self.work / "kdc.conf"
        kdc_conf.write_text(
            f"[kdcdefaults]\n kdc_tcp_listen = 127.0.0.1:{self.port}\n kdc_listen = 127.0.0.1:{self.port}\n"
            f"[realms]\n {REALM} = {{\n  database_name = {self.work}/principal\n"
            f"  key_stash_file = {self.work}/stash\n  acl_file = {self.work}/kadm5.acl\n"
            f"  kdc_tcp_listen = 127.0.0.1:{self.port}\n  kdc_listen = 127.0.0.1:{self.port}\n }}\n"
            f"[logging]\n kdc = FILE:{self.work}/kdc.log\n")
        self.env = {**os.environ, "KRB5_CONFIG": str(self.krb5_conf), "KRB5_KDC_PROFILE": str(kdc_conf)}
        self._run("/usr/sbin/kdb5_util", "create", "-s", "-r", REALM, "-P", "master-" + os.urandom(6).hex())
        self._proc = subprocess.Popen(["/usr/sbin/krb5kdc", "-n", "-r", REALM], env=self.env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, self._proc, "krb5kdc", self.work / "kdc.log")

    def _run(self, *command: str, stdin: str | None = None) -> str:
        result = subprocess.run(command, env=self.env, input=stdin, capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {result.stderr.strip() or result.stdout.strip()}")
        return result.stdout

    def kadmin(self, query: str) -> str:
        return self._run("/usr/sbin/kadmin.local", "-r", REALM, "-q", query)

    def add_user(self, name: str, password: str) -> str:
        """A user principal name@REALM; returns it."""
        self.kadmin(f"addprinc -pw {password} {name}")
        return f"{name}@{REALM}"

    def keytab(self, principal: str) -> Path:
        """A service principal with a random key, in a keytab file of its own."""
        path = self.work / (principal.replace("/", "_") + ".keytab")
        self.kadmin(f"addprinc -randkey {principal}")
        self.kadmin(f"ktadd -k {path} {principal}")
        return path

    def keytab_without_pac(self, principal: str) -> Path:
        """`keytab`, for a service whose tickets carry no PAC (Samba as a standalone server wants none)."""
        path = self.keytab(principal)
        self.kadmin(f"modprinc +no_auth_data_required {principal}")
        return path

    def export_keytab(self, principal: str) -> Path:
        """Another keytab of an existing principal, its key unchanged (a second server of the same name)."""
        path = self.work / (principal.replace("/", "_") + f".{os.urandom(3).hex()}.keytab")
        self.kadmin(f"ktadd -norandkey -k {path} {principal}")
        return path

    def kinit(self, principal: str, password: str, *, user: str | None = None) -> None:
        """A ticket in the default cache of `user` (runuser; the test's own uid when None)."""
        command = ["/usr/bin/kinit", principal]
        if user is not None:
            command = ["/usr/sbin/runuser", "-u", user, "--", "env", f"KRB5_CONFIG={self.krb5_conf}", *command]
        self._run(*command, stdin=password + "\n")

    def kdestroy(self) -> None:
        """The test's own uid has no ticket again (other tests count on that)."""
        (self.ccaches / f"krb5cc_{os.getuid()}").unlink(missing_ok=True)

    def stop(self) -> None:
        _stop(self._proc)
        shutil.rmtree(self.work, ignore_errors=True)


_APACHE = """\
ServerRoot {work}
ServerName {host}
Listen 127.0.0.1:{port}
PidFile {work}/httpd.pid
ErrorLog {work}/error.log
LogLevel info
DefaultRuntimeDir {work}
Mutex file:{work}
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authn_core_module {modules}/mod_authn_core.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule authz_user_module {modules}/mod_authz_user.so
LoadModule auth_gssapi_module {modules}/mod_auth_gssapi.so
CustomLog {work}/access.log "%u %U"
User {user}
Group {group}
DocumentRoot {root}
<Directory {root}>
    Require all granted
</Directory>
<Location /negotiate>
    AuthType GSSAPI
    AuthName "openbits test"
    GssapiCredStore keytab:{keytab}
    GssapiAllowedMech krb5
    GssapiBasicAuth Off
    Require valid-user
</Location>
<Location /ntlm>
    AuthType GSSAPI
    AuthName "openbits test"
    GssapiAllowedMech ntlmssp
    GssapiConnectionBound On
    GssapiBasicAuth Off
    Require valid-user
</Location>
"""


class NegotiateServer:
    """Apache serving its folder `root`; everything under /negotiate/ wants Kerberos (HTTP/localhost's keytab),
    everything under /ntlm/ NTLM (gss-ntlmssp, with the accounts of `ntlm_users`: DOMAIN:user:password lines).
    It serves as www-data, which owns the keytab and the NTLM user file."""

    def __init__(self, realm: KerberosRealm) -> None:
        self.port = free_port()
        self._work = Path(tempfile.mkdtemp(prefix="openbits-apache-"))
        self._work.chmod(0o755)
        self.root = self._work / "www"
        (self.root / "negotiate").mkdir(parents=True)
        (self.root / "ntlm").mkdir()
        self.ntlm_users = self._work / "ntlm_users"
        self.ntlm_users.touch(0o600)
        shutil.chown(self.ntlm_users, "www-data", "www-data")
        keytab = self._work / "http.keytab"
        shutil.copy(realm.keytab(f"HTTP/{HOST}"), keytab)
        shutil.chown(keytab, "www-data", "www-data")
        keytab.chmod(0o600)
        config = self._work / "httpd.conf"
        config.write_text(_APACHE.format(work=self._work, host=HOST, port=self.port, modules=MODULES, root=self.root,
                                         keytab=keytab, user="www-data", group="www-data"))
        with open(self._work / "error.log", "ab") as log:  # what apache says before it opens its own log
            self._proc = subprocess.Popen(["/usr/sbin/apache2", "-X", "-f", str(config), "-DFOREGROUND"],
                                          env={**realm.env, "APACHE_RUN_DIR": str(self._work),
                                               "NTLM_USER_FILE": str(self.ntlm_users)},
                                          stdout=subprocess.DEVNULL, stderr=log)
        _wait_port(self.port, self._proc, "apache2", self._work / "error.log")

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}/{path.lstrip('/')}"

    def add_ntlm_user(self, domain: str, name: str, password: str) -> None:
        with open(self.ntlm_users, "a") as users:
            users.write(f"{domain}:{name}:{password}\n")

    def users(self, path: str) -> list[str]:
        """Who the server took each request for `path` to be (the access log: Kerberos principal, or -)."""
        log = self._work / "access.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        return [user for user, _, url in (line.partition(" ") for line in lines) if url == path]

    def stop(self) -> None:
        _stop(self._proc)
        shutil.rmtree(self._work, ignore_errors=True)
