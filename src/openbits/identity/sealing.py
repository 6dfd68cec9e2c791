"""Secrets sealed at rest: AES-GCM under a data key that lives beside the store, never in it.

BITS keeps SetCredentials' passwords for the life of the job, encrypted. openbits seals each
one with AES-256-GCM (the `cryptography` package), bound to its job and pair (the label is the
associated data, so a sealed value copied to another job or pair does not open). The 32-byte
data key is a file in the state directory, beside the database:

    credentials.key.cred  the key sealed by `systemd-creds encrypt` with the host key
                          (/var/lib/systemd/credential.secret) and the TPM2 where there is one:
                          a system daemon as root, where systemd-creds works
    credentials.key       else the key itself, mode 0600, readable by the daemon's user only
                          (root, for the system daemon)

The key is opened (or made) once, when the first credential is set or at a start-up that finds
some stored: one systemd-creds call, then sealing and opening a credential is an AES-GCM call,
not a process per credential; a daemon whose jobs never have credentials never makes one. A store copied to another machine (another host
key, or without its key file) cannot open what it holds: the job says which credentials to set
again. A key file that no longer opens (another host key) is kept as `*.unusable` and a new key
is made, so an administrator can still bring the old one back.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger("openbits.sealing")

SEALED_KEY, PLAIN_KEY = "credentials.key.cred", "credentials.key"
#: the name systemd-creds binds into the sealed key (decrypting under another name fails)
_CRED_NAME = "openbits-credentials"
_NONCE = 12
_TIMEOUT = 30.0


class SealBroken(Exception):
    """A sealed value that does not open with this key: another machine's, or altered."""


class Sealer:
    """Seals and opens secrets with one data key; says how the key is kept (for the log and the README)."""

    def __init__(self, key: bytes, kept_by: str) -> None:
        self._aead = AESGCM(key)
        self.kept_by = kept_by

    def seal(self, secret: bytes, label: str) -> str:
        nonce = os.urandom(_NONCE)
        return base64.b64encode(nonce + self._aead.encrypt(nonce, secret, label.encode())).decode()

    def open(self, sealed: str, label: str) -> bytes:
        try:
            raw = base64.b64decode(sealed, validate=True)
            return self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], label.encode())
        except (InvalidTag, binascii.Error, ValueError):
            raise SealBroken(label) from None


class KeyRing:
    """The state directory's Sealer, opened on first use (KeyRing.get blocks: systemd-creds runs)."""

    def __init__(self, state_dir: Path) -> None:
        self._state_dir = state_dir
        self.sealer: Sealer | None = None

    def get(self) -> Sealer:
        if self.sealer is None:
            self.sealer = open_key(self._state_dir)
        return self.sealer


def open_key(state_dir: Path) -> Sealer:
    """The state directory's data key: opened if it is there and opens, made otherwise."""
    sealed, plain = state_dir / SEALED_KEY, state_dir / PLAIN_KEY
    if sealed.exists():
        try:
            return Sealer(_unseal_key(sealed), "systemd-creds")
        except OSError as exc:
            _set_aside(sealed, exc)
    elif plain.exists():
        try:
            return Sealer(_read_plain(plain), "a key file")
        except OSError as exc:
            _set_aside(plain, exc)
    key = AESGCM.generate_key(bit_length=256)
    if _systemd_creds_usable():
        try:
            _write_private(sealed, _run_creds(["encrypt", f"--with-key={_creds_key_kind()}", f"--name={_CRED_NAME}",
                                               "-", "-"], key))
            log.info("made a credentials key, sealed by systemd-creds in %s", sealed)
            return Sealer(key, "systemd-creds")
        except OSError as exc:
            log.warning("systemd-creds could not seal the credentials key (%s); keeping it in %s (mode 0600)", exc,
                        plain)
    _write_private(plain, key)
    log.info("made a credentials key in %s (mode 0600; systemd-creds seals it where it works, as root)", plain)
    return Sealer(key, "a key file")


def _systemd_creds_usable() -> bool:
    """systemd-creds seals with the host key, which only root may read."""
    return os.geteuid() == 0 and shutil.which("systemd-creds") is not None


def _creds_key_kind() -> str:
    """The host key, and the TPM2 as well where the machine has a usable one."""
    done = subprocess.run(["systemd-creds", "has-tpm2", "--quiet"], capture_output=True, timeout=_TIMEOUT,
                          check=False)
    return "host+tpm2" if done.returncode == 0 else "host"


def _run_creds(args: list[str], data: bytes) -> bytes:
    """systemd-creds with `data` on stdin (a key never goes on a command line); OSError when it fails."""
    try:
        done = subprocess.run(["systemd-creds", *args], input=data, capture_output=True, timeout=_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OSError(f"systemd-creds {args[0]}: {exc}") from None
    if done.returncode != 0:
        raise OSError(f"systemd-creds {args[0]}: {done.stderr.decode(errors='replace').strip() or done.returncode}")
    return done.stdout


def _unseal_key(path: Path) -> bytes:
    key = _run_creds(["decrypt", f"--name={_CRED_NAME}", str(path), "-"], b"")
    if len(key) != 32:
        raise OSError(f"{path} holds {len(key)} bytes, not a 32-byte key")
    return key


def _read_plain(path: Path) -> bytes:
    st = path.stat()
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise OSError(f"{path} must belong to uid {os.geteuid()} and be mode 0600 (it is uid {st.st_uid}, mode "
                      f"{st.st_mode & 0o777:o}): another user may have read it")
    key = path.read_bytes()
    if len(key) != 32:
        raise OSError(f"{path} holds {len(key)} bytes, not a 32-byte key")
    return key


def _set_aside(path: Path, exc: OSError) -> None:
    """A key that does not open stays as *.unusable; what it sealed cannot be opened with the new one."""
    aside = path.with_name(path.name + ".unusable")
    log.error("the credentials key %s does not open (%s); it is kept as %s and a new key is made: the jobs' stored "
              "credentials must be set again", path, exc, aside)
    os.replace(path, aside)


def _write_private(path: Path, data: bytes) -> None:
    """Written whole (a temporary file, fsync, rename), mode 0600 from the start."""
    temp = path.with_name(path.name + ".new")
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
