"""A job's TLS material: SetClientCertificateByID/ByName, GetClientCertificate, RemoveClientCertificate,
its own CA file, and the TlsSettings its transfer runs with.

Files are read by the file broker as the job's network identity (the helper with TokenFlags.NETWORK, else
the owner), never by the daemon as root: a PEM or PKCS#12 file by path, or a certificate found by SHA-1
thumbprint or subject in the identity's store folder `~/.config/openbits/certs/`. The machine's store,
`/etc/openbits/certs/`, belongs to the administrator: the daemon reads it itself, for jobs of administrators
only. Keys and passphrases stay in memory; the job record keeps where the certificate is and which it is.
"""

from __future__ import annotations

import asyncio
import os
import pwd
from dataclasses import dataclass

from ..enums import CertStoreLocation, ErrorContext, TokenFlags
from ..errors import BitsError, ErrorCode
from ..identity import Identity, LocalFiles
from ..transport import clientcert
from ..transport.tls import ClientCertificate, TlsSettings
from ..model.job import Job
from ..model.checks import check_local_path
from .service import JobService

#: the owner's store folder, under their home
USER_STORE = ".config/openbits/certs"
SYSTEM_STORE = "/etc/openbits/certs"
#: a job's own CA file larger than this is not one
MAX_CA_FILE = 4 << 20


@dataclass(frozen=True)
class CertificateChoice:
    """Which client certificate a job uses: a file, or a certificate of a store by thumbprint or subject."""

    path: str | None = None
    store: CertStoreLocation = CertStoreLocation.CURRENT_USER
    thumbprint: str | None = None
    subject: str | None = None

    @classmethod
    def from_record(cls, record: dict[str, str]) -> CertificateChoice:
        """The choice a job record keeps: `by` says which of the certificate's path, thumbprint or subject."""
        by = record["by"]
        return cls(record.get("path"), CertStoreLocation[record.get("store", "CURRENT_USER")],
                   record["thumbprint"] if by == "thumbprint" else None, record["subject"] if by == "subject" else None)

    def record(self, loaded: ClientCertificate) -> dict[str, str]:
        """What the job keeps (no key, no passphrase): where the certificate is, and which one it is."""
        found = {"subject": loaded.subject, "thumbprint": loaded.thumbprint}
        if self.path is not None:
            return {"by": "path", "path": self.path, **found}
        return {"by": "thumbprint" if self.thumbprint else "subject", "store": self.store.name, **found}

    def check(self) -> None:
        if sum(v is not None for v in (self.path, self.thumbprint, self.subject)) != 1:
            raise BitsError(ErrorCode.E_INVALIDARG, "give exactly one of a certificate file path, a SHA-1 thumbprint "
                            "or a subject name", ErrorContext.GENERAL_QUEUE_MANAGER)
        if self.path is not None:
            check_local_path(self.path)
        if self.thumbprint is not None and not (len(self.thumbprint) == 40 and _is_hex(self.thumbprint)):
            raise BitsError(ErrorCode.E_INVALIDARG, f"thumbprint {self.thumbprint!r} is not a SHA-1 hash (40 hex "
                            "digits, as `openssl x509 -fingerprint -sha1` prints without the colons)",
                            ErrorContext.GENERAL_QUEUE_MANAGER)


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def _identity(service: JobService, job: Job) -> Identity:
    return service.acting_identity(job, TokenFlags.NETWORK, ErrorContext.GENERAL_TRANSPORT)


async def _read(files: LocalFiles, path: str, limit: int, what: str) -> bytes:
    """A small file's bytes through the broker (it opens, the daemon reads the descriptor)."""
    fd = await files.open_read(path)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise BitsError(ErrorCode.E_INVALIDARG, f"{path} has {size} bytes: too large for {what}",
                            ErrorContext.GENERAL_TRANSPORT)
        return await asyncio.to_thread(os.pread, fd, limit, 0)
    finally:
        os.close(fd)


def _read_system(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(clientcert.MAX_CERTIFICATE_FILE + 1)


async def _store_files(service: JobService, job: Job, location: CertStoreLocation) -> list[tuple[str, bytes]]:
    """Every certificate file of the store: (path, bytes)."""
    if location == CertStoreLocation.LOCAL_MACHINE:
        if not service.is_admin(Identity.from_uid(job.owner_uid)):
            raise BitsError(ErrorCode.E_ACCESSDENIED, f"the machine's certificate store ({SYSTEM_STORE}) serves jobs "
                            "of administrators only; use your own store (~/.config/openbits/certs/) or a file",
                            ErrorContext.GENERAL_TRANSPORT)
        names = await asyncio.to_thread(lambda: sorted(os.listdir(SYSTEM_STORE)) if os.path.isdir(SYSTEM_STORE) else [])
        paths = [os.path.join(SYSTEM_STORE, n) for n in names if n.endswith(clientcert.STORE_SUFFIXES)]
        return [(p, await asyncio.to_thread(_read_system, p)) for p in paths if os.path.isfile(p)]
    who = _identity(service, job)
    files = service.broker.files_for(who)
    folder = os.path.join(pwd.getpwuid(who.uid).pw_dir, USER_STORE)
    found = []
    for name in await files.list_folder(folder):
        if name.endswith(clientcert.STORE_SUFFIXES):
            try:
                found.append((f"{folder}/{name}", await _read(files, f"{folder}/{name}",
                                                               clientcert.MAX_CERTIFICATE_FILE, "a certificate")))
            except BitsError:
                continue  # a folder, a link, an unreadable file: not a certificate of this store
    return found


async def load_client_certificate(service: JobService, job: Job, choice: CertificateChoice,
                                  passphrase: str | None) -> ClientCertificate:
    """The chosen certificate with its key, read as the job's network identity; a clear BitsError otherwise."""
    if choice.path is not None:
        data = await _read(service.broker.files_for(_identity(service, job)), choice.path,
                           clientcert.MAX_CERTIFICATE_FILE, "a certificate")
        return clientcert.load(data, passphrase, choice.path)
    store = "~/.config/openbits/certs/" if choice.store == CertStoreLocation.CURRENT_USER else SYSTEM_STORE
    for path, data in await _store_files(service, job, choice.store):
        for cert in clientcert.certificates(data):
            if (clientcert.thumbprint(cert) == (choice.thumbprint or "").lower()
                    or (choice.subject is not None and clientcert.matches_subject(cert, choice.subject))):
                return clientcert.load(data, passphrase, path)
    wanted = f"thumbprint {choice.thumbprint}" if choice.thumbprint else f"subject {choice.subject!r}"
    raise BitsError(ErrorCode.ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED, f"no certificate with {wanted} in {store} "
                    f"of {_identity(service, job).name} (PEM with its key, or PKCS#12, named *.pem, *.p12 or *.pfx)",
                    ErrorContext.GENERAL_TRANSPORT)


async def tls_settings(service: JobService, job: Job) -> TlsSettings:
    """What the job's https requests run with: its security flags, its CA file, its client certificate."""
    extra = b""
    if job.ca_file is not None:
        extra = await _read(service.broker.files_for(_identity(service, job)), job.ca_file, MAX_CA_FILE, "a CA file")
    client = None
    if job.client_certificate is not None:
        client = await load_client_certificate(service, job, CertificateChoice.from_record(job.client_certificate),
                                               service.tokens.passphrase(job.id))
    return TlsSettings(job.security_flags, extra, client)


class CertificateService:
    """The API's client-certificate operations over a JobService."""

    def __init__(self, service: JobService) -> None:
        self.service = service

    async def set_client_certificate(self, caller: Identity, ref: str, choice: CertificateChoice,
                                     passphrase: str | None) -> Job:
        """The certificate is loaded now, as it will be for each transfer, so a wrong choice is told at once."""
        choice.check()
        job = self.service.find(caller, ref)
        job.check_modifiable()
        loaded = await load_client_certificate(self.service, job, choice, passphrase)
        self.service.tokens.set_passphrase(job.id, passphrase)
        job.client_certificate = choice.record(loaded)
        job.touch()
        await self.service.commit(job)
        return job

    async def remove_client_certificate(self, caller: Identity, ref: str) -> Job:
        job = self.service.find(caller, ref)
        job.check_modifiable()
        self.service.tokens.set_passphrase(job.id, None)
        job.client_certificate = None
        job.touch()
        await self.service.commit(job)
        return job
