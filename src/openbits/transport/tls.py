"""TLS for https transfers (downloads, and the packets of uploads): the trust store, a job's security flags and its client certificate.

OpenSSL checks the server as it always does; the SSL_IGNORE_* flags it can relax itself are passed to it
(CN_INVALID: no host name check; DATE_INVALID: X509_V_FLAG_NO_CHECK_TIME; ENABLE_CRL_CHECK: the leaf's CRL
must be among the trusted files). OpenSSL cannot ignore an unknown CA or a wrong key usage alone, so with
SSL_IGNORE_UNKNOWN_CA or SSL_IGNORE_CERT_WRONG_USAGE the handshake leaves the check to `LeafChecks`, which
runs inside the handshake (an `ssl.SSLObject` subclass), before a request byte is sent, and checks with
the `cryptography` package what the flags do not waive: the chain, the name, the dates, the usage, the CRL.

Key material is never written to a disk: OpenSSL loads PEM only from a path, so the daemon hands it a
memfd (`/proc/self/fd/N`) that lives for the load.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import os
import re
import ssl
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from ..enums import SecurityFlags
from ..errors import ErrorCode

#: OpenSSL's X509_V_FLAG_NO_CHECK_TIME (Python names no constant for it)
_NO_CHECK_TIME = 0x200000
#: contexts kept per transport (each holds its trust store and maybe a key)
_CACHED = 64
#: the CA bundle a Debian system trusts (ca-certificates), when OpenSSL's default file is absent
_SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
_CRL_BLOCK = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)

# OpenSSL X509_V_ERR_* -> what BITS reports (ERROR_WINHTTP_*), and what the owner can do about it
_UNABLE_TO_GET_CRL, _CERT_REVOKED, _INVALID_PURPOSE = 3, 23, 26
_VERIFY_CODES: dict[int, tuple[ErrorCode, str]] = {
    9: (ErrorCode.ERROR_WINHTTP_SECURE_CERT_DATE_INVALID, "it is not valid yet"),
    10: (ErrorCode.ERROR_WINHTTP_SECURE_CERT_DATE_INVALID, "it has expired"),
    62: (ErrorCode.ERROR_WINHTTP_SECURE_CERT_CN_INVALID, "it is for another host name"),
    64: (ErrorCode.ERROR_WINHTTP_SECURE_CERT_CN_INVALID, "it is for another IP address"),
    2: (ErrorCode.ERROR_WINHTTP_SECURE_INVALID_CA, "its issuer is not trusted"),
    18: (ErrorCode.ERROR_WINHTTP_SECURE_INVALID_CA, "it is self-signed"),
    19: (ErrorCode.ERROR_WINHTTP_SECURE_INVALID_CA, "its chain ends in an untrusted self-signed CA"),
    20: (ErrorCode.ERROR_WINHTTP_SECURE_INVALID_CA, "its issuer is not trusted"),
    21: (ErrorCode.ERROR_WINHTTP_SECURE_INVALID_CA, "its issuer is not trusted"),
    _INVALID_PURPOSE: (ErrorCode.ERROR_WINHTTP_SECURE_CERT_WRONG_USAGE, "its key usage does not allow a server"),
    _CERT_REVOKED: (ErrorCode.ERROR_WINHTTP_SECURE_CERT_REVOKED, "its CA revoked it"),
    _UNABLE_TO_GET_CRL: (ErrorCode.ERROR_WINHTTP_SECURE_CERT_REV_FAILED,
                         "no CRL of its CA is at hand (openbits takes CRLs from the trusted CA files only)"),
}
_WAIVED_BY = {
    ErrorCode.ERROR_WINHTTP_SECURE_CERT_DATE_INVALID: "SSL_IGNORE_CERT_DATE_INVALID (0x4)",
    ErrorCode.ERROR_WINHTTP_SECURE_CERT_CN_INVALID: "SSL_IGNORE_CERT_CN_INVALID (0x2)",
    ErrorCode.ERROR_WINHTTP_SECURE_INVALID_CA: "SSL_IGNORE_UNKNOWN_CA (0x8), or trust its CA (setcafile)",
    ErrorCode.ERROR_WINHTTP_SECURE_CERT_WRONG_USAGE: "SSL_IGNORE_CERT_WRONG_USAGE (0x10)",
}


def certificate_error(verify_code: int, message: str) -> tuple[ErrorCode, str]:
    """The BITS code for an OpenSSL verification failure, and a sentence: what is wrong, what to do."""
    code, why = _VERIFY_CODES.get(verify_code, (ErrorCode.ERROR_WINHTTP_SECURE_INVALID_CERT, message))
    waiver = _WAIVED_BY.get(code)
    advice = f"; if you trust this server anyway, set the security flag {waiver}" if waiver else ""
    return code, f"{why} ({message}){advice}"


@dataclass(frozen=True)
class ClientCertificate:
    """A client certificate with its key, as PEM with the key decrypted: memory only, never in a repr."""

    pem: bytes = field(repr=False)
    subject: str
    thumbprint: str


@dataclass(frozen=True)
class TlsSettings:
    """What one job asks of TLS: SetSecurityFlags, its own CA file's bytes, its client certificate."""

    flags: int = 0
    extra_ca: bytes = field(default=b"", repr=False)
    client: ClientCertificate | None = None

    def key(self) -> tuple[int, bytes, bytes]:
        digest = hashlib.sha256(self.client.pem).digest() if self.client else b""
        return self.flags, hashlib.sha256(self.extra_ca).digest(), digest


@contextlib.contextmanager
def memory_file(data: bytes) -> Iterator[str]:
    """A path OpenSSL can load `data` from without it touching a disk."""
    fd = os.memfd_create("openbits-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


class _CheckedObject(ssl.SSLObject):
    """Runs the context's `LeafChecks` when the handshake is done, before any request is sent."""

    def do_handshake(self) -> None:
        super().do_handshake()
        checks = getattr(self.context, "checks", None)
        if checks is not None:
            checks.check(self.getpeercert(binary_form=True), self.server_hostname or "")


class _Context(ssl.SSLContext):
    sslobject_class = _CheckedObject
    checks: LeafChecks | None = None


def _refused(verify_code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"certificate verify failed: {message}")
    error.verify_code, error.verify_message = verify_code, message
    return error


class LeafChecks:
    """The checks OpenSSL cannot relax one by one, made on the server's certificate after the handshake."""

    def __init__(self, flags: int, trusted_pem: bytes) -> None:
        self._flags = SecurityFlags(flags)
        self._trusted_pem = trusted_pem
        self._store: verification.Store | None = None
        self._crls: list[x509.CertificateRevocationList] | None = None

    def _trusted(self) -> verification.Store:
        if self._store is None:
            self._store = verification.Store(x509.load_pem_x509_certificates(self._trusted_pem))
        return self._store

    def check(self, der: bytes | None, host: str) -> None:
        if der is None:
            raise _refused(0, "the server sent no certificate")
        leaf = x509.load_der_x509_certificate(der)
        flags, now = self._flags, datetime.datetime.now(datetime.timezone.utc)
        in_time = leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc
        if not in_time and not flags & SecurityFlags.SSL_IGNORE_CERT_DATE_INVALID:
            raise _refused(10 if now > leaf.not_valid_after_utc else 9, "the certificate is outside its validity")
        if not flags & SecurityFlags.SSL_IGNORE_CERT_CN_INVALID and not _names_host(leaf, host):
            raise _refused(62, f"the certificate does not name {host}")
        if not flags & SecurityFlags.SSL_IGNORE_CERT_WRONG_USAGE and not _serves(leaf):
            raise _refused(_INVALID_PURPOSE, "the certificate's extended key usage does not include serverAuth")
        if not flags & SecurityFlags.SSL_IGNORE_UNKNOWN_CA:
            # an expired leaf (DATE_INVALID waived) is checked at the last moment it was valid
            moment = min(max(now, leaf.not_valid_before_utc), leaf.not_valid_after_utc)
            builder = verification.PolicyBuilder().store(self._trusted()).time(moment).extension_policies(
                ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                ee_policy=verification.ExtensionPolicy.permit_all())  # usage and name were checked above
            try:
                builder.build_client_verifier().verify(leaf, [])
            except verification.VerificationError as exc:
                raise _refused(20, f"no trusted CA issued the certificate ({exc})") from None
        if flags & SecurityFlags.SSL_ENABLE_CRL_CHECK:
            self._check_revocation(leaf)

    def _check_revocation(self, leaf: x509.Certificate) -> None:
        if self._crls is None:
            self._crls = [x509.load_pem_x509_crl(block) for block in _CRL_BLOCK.findall(self._trusted_pem)]
        crls = [crl for crl in self._crls if crl.issuer == leaf.issuer]
        if not crls:
            raise _refused(_UNABLE_TO_GET_CRL, "unable to get certificate CRL")
        if any(crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None for crl in crls):
            raise _refused(_CERT_REVOKED, "certificate revoked")


def _names_host(leaf: x509.Certificate, host: str) -> bool:
    """RFC 6125: the subjectAltName names the host (an IP address exactly, a DNS name or its wildcard)."""
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        host = host.lower().rstrip(".")
        for name in names.get_values_for_type(x509.DNSName):
            name = name.lower().rstrip(".")
            if name == host or (name.startswith("*.") and host.partition(".")[2] == name[2:] and "." in name[2:]):
                return True
        return False
    return address in names.get_values_for_type(x509.IPAddress)


def _serves(leaf: x509.Certificate) -> bool:
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return ExtendedKeyUsageOID.SERVER_AUTH in usages or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages


class TlsContexts:
    """SSL contexts per distinct TlsSettings (aiohttp keeps connections apart per context, so a connection
    made with one job's client certificate never carries another job's request)."""

    def __init__(self, ca_file: str | None = None) -> None:
        """`ca_file`: the administrator's extra CA bundle (`[tls] ca_file`), trusted for every job."""
        self._ca_file = ca_file
        self._contexts: OrderedDict[tuple[int, bytes, bytes], ssl.SSLContext] = OrderedDict()

    def context(self, settings: TlsSettings) -> ssl.SSLContext:
        key = settings.key()
        context = self._contexts.get(key)
        if context is None:
            context = self._contexts[key] = self._build(settings)
            if len(self._contexts) > _CACHED:
                self._contexts.popitem(last=False)
        else:
            self._contexts.move_to_end(key)
        return context

    def _build(self, settings: TlsSettings) -> ssl.SSLContext:
        context = _Context(ssl.PROTOCOL_TLS_CLIENT)
        context.load_default_certs()
        if self._ca_file is not None:
            context.load_verify_locations(cafile=self._ca_file)
        if settings.extra_ca:
            with memory_file(settings.extra_ca) as path:
                context.load_verify_locations(cafile=path)  # certificates and CRLs
        flags = settings.flags
        if flags & SecurityFlags.SSL_ENABLE_CRL_CHECK:
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        if flags & SecurityFlags.SSL_IGNORE_CERT_DATE_INVALID:
            context.verify_flags |= _NO_CHECK_TIME
        if flags & SecurityFlags.SSL_IGNORE_CERT_CN_INVALID:
            context.check_hostname = False
        if flags & (SecurityFlags.SSL_IGNORE_UNKNOWN_CA | SecurityFlags.SSL_IGNORE_CERT_WRONG_USAGE):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.checks = LeafChecks(flags, self._trusted_pem(settings))
        if settings.client is not None:
            with memory_file(settings.client.pem) as path:
                context.load_cert_chain(path)
        return context

    def _trusted_pem(self, settings: TlsSettings) -> bytes:
        """Every trusted certificate (and CRL) as PEM, for LeafChecks: the system's, the administrator's, the job's."""
        system = ssl.get_default_verify_paths().cafile or _SYSTEM_BUNDLE
        parts = []
        for path in (system, self._ca_file):
            if path is not None and os.path.isfile(path):
                with open(path, "rb") as fh:
                    parts.append(fh.read())
        return b"\n".join([*parts, settings.extra_ca])
