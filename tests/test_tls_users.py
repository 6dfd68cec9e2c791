"""Client certificates and CA files of real users against the system daemon (root): the owner's store folder
by thumbprint and subject, the helper's store with TokenFlags.NETWORK, and proof that the daemon (root) never
opens a key: fanotify reports who opened the file, and it is always the user's file broker."""

from __future__ import annotations

import ctypes
import os
import struct
import threading
from pathlib import Path

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from .servers.tls import TlsServers
from .test_security import daemon, run_as, users, world  # noqa: F401  (fixtures of this module too)
from .users import RealUser, owned_folder

pytestmark = pytest.mark.root

BODY = b"for users\n"


class OpenWatch:
    """fanotify FAN_OPEN on some files: the uid of every process that opened one."""

    def __init__(self, paths: list[Path]) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
        self._fd = libc.fanotify_init(0x1, os.O_RDONLY)  # FAN_CLOEXEC, FAN_CLASS_NOTIF, blocking reads
        if self._fd < 0:
            pytest.skip(f"fanotify_init failed: {os.strerror(ctypes.get_errno())}")
        for path in paths:
            assert libc.fanotify_mark(self._fd, 0x1, 0x20, -100, str(path).encode()) == 0  # FAN_MARK_ADD, FAN_OPEN
        self.openers: list[tuple[int, int]] = []  # (pid, uid)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 4096)
            except OSError:
                return
            while data:
                length, _, _, _, _, fd, pid = struct.unpack_from("IBBHQii", data)
                os.close(fd)
                with open(f"/proc/{pid}/status") as status:
                    uid = next(int(line.split()[1]) for line in status if line.startswith("Uid:"))
                self.openers.append((pid, uid))
                data = data[length:]

    def close(self) -> None:
        os.close(self._fd)


def _own(path: Path, user: RealUser, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    os.chown(path, user.uid, user.identity.gid)
    path.chmod(mode)
    return path


@pytest.fixture(scope="module")
def stores(users: dict[str, RealUser], tls_servers: TlsServers) -> dict[str, Path]:  # noqa: F811
    """alice's store holds the fixture's client certificate, bob's one of his own; each has the CA, 0600."""
    (tls_servers.root / "u").write_bytes(BODY)
    paths = {}
    for name, issued in (("alice", tls_servers.client),
                         ("bob", tls_servers.ca.issue("bobcert", usage=ExtendedKeyUsageOID.CLIENT_AUTH))):
        user = users[name]
        store = user.home / ".config" / "openbits" / "certs"
        for part in (user.home / ".config", user.home / ".config" / "openbits", store):
            owned_folder(part, user, 0o700)
        paths[name] = _own(store / f"{name}.pem", user, issued.pem())
        paths[f"{name}-ca"] = _own(user.home / "ca.pem", user, tls_servers.ca.cert.read_bytes())
    return paths


def _download(url: str, dest: Path, ca: Path, choice: str, helper: RealUser | None = None) -> str:
    """run_as code: a job with a CA file and a client certificate chosen by `choice` (keyword arguments)."""
    logon = (f"job.token_options().set_helper_token(username={helper.name!r}, password={helper.password!r})\n"
             "        job.token_options().set_helper_token_flags(2)") if helper else ""
    return f"""
    job = m.create_job("cert")
    try:
        {logon}
        job.set_properties(ca_file={str(ca)!r})
        job.set_client_certificate({choice})
        job.add_file({url!r}, {str(dest)!r})
        job.resume()
        state = job.wait(30).name
        shown = job.info().client_certificate
        out(state=state, error=job.error and job.error.description, store=shown.get("store"),
            thumbprint=shown["thumbprint"], subject=shown["subject"])
        job.complete() if state == "TRANSFERRED" else job.cancel()
    except BitsError as e:
        job.cancel()
        err(e)
    """


def test_owners_store_by_thumbprint_and_subject_read_by_the_broker_only(  # noqa: F811
        users, world, daemon, tls_servers, stores) -> None:
    alice = users["alice"]
    mine = owned_folder(world / "alice_tls", alice, 0o700)
    url = tls_servers.url("clientauth", "u")
    watch = OpenWatch([stores["alice"], stores["alice-ca"]])
    try:
        thumbprint = tls_servers.client.thumbprint
        by_id = run_as(alice, daemon, _download(url, mine / "id", stores["alice-ca"], f"thumbprint={thumbprint!r}"))
        assert by_id == {"state": "TRANSFERRED", "error": None, "store": "CURRENT_USER", "thumbprint": thumbprint,
                         "subject": tls_servers.client.subject}
        by_name = run_as(alice, daemon, _download(url, mine / "name", stores["alice-ca"], "subject='client'"))
        assert by_name["state"] == "TRANSFERRED" and by_name["thumbprint"] == thumbprint
        by_path = run_as(alice, daemon, _download(url, mine / "path", stores["alice-ca"],
                                                  f"path={str(stores['alice'])!r}"))
        assert by_path["state"] == "TRANSFERRED" and by_path["store"] is None
        assert (mine / "id").read_bytes() == BODY and (mine / "id").stat().st_uid == alice.uid
    finally:
        watch.close()
    assert watch.openers, "fanotify saw no open"
    assert {uid for _, uid in watch.openers} == {alice.uid}, watch.openers
    assert daemon.proc is not None and daemon.proc.pid not in {pid for pid, _ in watch.openers}


def test_helper_with_network_uses_the_helpers_store(users, world, daemon, tls_servers, stores) -> None:  # noqa: F811
    alice, bob = users["alice"], users["bob"]
    mine = owned_folder(world / "alice_helper_tls", alice, 0o700)
    url = tls_servers.url("clientauth", "u")
    # bob's CA file and bob's certificate: read as bob, the helper
    helped = run_as(alice, daemon, _download(url, mine / "h", stores["bob-ca"], "subject='bobcert'", helper=bob))
    assert helped["state"] == "TRANSFERRED" and helped["subject"] == "CN=bobcert", helped
    alone = run_as(alice, daemon, _download(url, mine / "a", stores["alice-ca"], "subject='bobcert'"))
    assert alone["error"] == "ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED", alone
    assert "subject 'bobcert'" in alone["description"] and alice.name in alone["description"]


def test_files_of_others_and_the_machine_store_are_refused(users, world, daemon, tls_servers,  # noqa: F811
                                                           stores) -> None:
    alice = users["alice"]
    mine = owned_folder(world / "alice_refused", alice, 0o700)
    url = tls_servers.url("clientauth", "u")
    theirs = run_as(alice, daemon, _download(url, mine / "x", stores["alice-ca"], f"path={str(stores['bob'])!r}"))
    assert theirs["error"] == "E_ACCESSDENIED" and f"as user {alice.name}" in theirs["description"], theirs
    ca = run_as(alice, daemon, _download(url, mine / "y", stores["bob-ca"], f"path={str(stores['alice'])!r}"))
    assert ca["state"] == "ERROR" and f"as user {alice.name}" in ca["error"], ca
    machine = run_as(alice, daemon, _download(url, mine / "z", stores["alice-ca"],
                                              "subject='client', store=openbits.enums.CertStoreLocation.LOCAL_MACHINE"))
    assert machine["error"] == "E_ACCESSDENIED" and "administrators" in machine["description"], machine
