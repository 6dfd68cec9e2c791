"""Samba's smbd with one share on a free loopback port, its own private folder and passdb, users added with
smbpasswd (no Linux accounts needed: the share's files are served as one mapped local user).

smbd runs in the foreground (--foreground --no-process-group, in a session of its own) with a configuration
of its own (no /etc/samba), SMB2/3 only, NTLM logons from a tdbsam database in its work folder.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .nginx import free_port

SMBD = "/usr/sbin/smbd"
SHARE = "files"

_CONFIG = """\
[global]
    netbios name = OPENBITSTEST
    workgroup = CORP
    server role = standalone server
    security = user
    passdb backend = tdbsam:{work}/private/passdb.tdb
    private dir = {work}/private
    lock directory = {work}/lock
    state directory = {work}/state
    cache directory = {work}/cache
    pid directory = {work}
    ncalrpc dir = {work}/ncalrpc
    log file = {work}/log.smbd
    log level = 1
    interfaces = 127.0.0.1
    bind interfaces only = yes
    smb ports = {port}
    disable netbios = yes
    load printers = no
    printing = bsd
    printcap name = /dev/null
    disable spoolss = yes
    server min protocol = SMB2_02
    ntlm auth = ntlmv2-only
{kerberos}    force user = {user}
[{share}]
    path = {root}
    read only = no
    guest ok = no
"""


def available() -> str | None:
    missing = [b for b in (SMBD, "/usr/bin/smbpasswd") if not os.path.exists(b)]
    return f"missing {', '.join(missing)} (scripts/system-deps.sh installs samba)" if missing else None


class SambaServer:
    """smbd serving `root` as share `files` on 127.0.0.1:`port`; every file is served as `user`."""

    def __init__(self, user: str = "nobody", *, realm: str = "", keytab: Path | None = None) -> None:
        """`realm` and `keytab` (cifs/HOST's, its tickets without a PAC: smbd refuses a PAC in standalone mode)
        let users log on with Kerberos too; smbd takes the principal's name for the Linux user."""
        self.work = Path(tempfile.mkdtemp(prefix="openbits-smb-"))
        self.work.chmod(0o755)  # the share is served as `user`
        self.root = self.work / "share"
        self.root.mkdir()
        entry = pwd.getpwnam(user)
        os.chown(self.root, entry.pw_uid, entry.pw_gid)
        for sub in ("private", "lock", "state", "cache", "ncalrpc"):
            (self.work / sub).mkdir()
        self.port = free_port()
        self.config = self.work / "smb.conf"
        kerberos = ""
        if keytab is not None:
            shutil.copy(keytab, self.work / "cifs.keytab")
            (self.work / "cifs.keytab").chmod(0o600)
            kerberos = (f"    realm = {realm}\n    kerberos method = dedicated keytab\n"
                        f"    dedicated keytab file = FILE:{self.work}/cifs.keytab\n")
        self.config.write_text(_CONFIG.format(work=self.work, port=self.port, root=self.root, share=SHARE, user=user,
                                              kerberos=kerberos))
        with open(self.work / "stderr.log", "ab") as log:
            # a session of its own: smbd's helpers are in its process group, which stop() ends as a whole
            self._proc = subprocess.Popen([SMBD, "--foreground", "--no-process-group", "-s", str(self.config)],
                                          stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError("smbd exited at start: " + (self.work / "stderr.log").read_text(errors="replace"))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"smbd did not listen on port {self.port}")

    def add_user(self, name: str, password: str) -> None:
        """A Samba account (smbpasswd -a needs a Linux user of that name: `name` must exist)."""
        subprocess.run(["/usr/bin/smbpasswd", "-c", str(self.config), "-s", "-a", name],
                       input=f"{password}\n{password}\n", capture_output=True, text=True, check=True)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        shutil.rmtree(self.work, ignore_errors=True)
