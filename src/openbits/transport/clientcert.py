"""Client certificates from files: PEM (certificate and key in one file) or PKCS#12, maybe encrypted.

Linux has no certificate store API, so openbits defines one: a folder of such files (the owner's
`~/.config/openbits/certs/`, the machine's `/etc/openbits/certs/`), where a certificate is found by its
SHA-1 thumbprint (BITS's SetClientCertificateByID) or its subject (SetClientCertificateByName). The bytes
come from the file broker, read as the job's network identity; this module only parses them.
"""

from __future__ import annotations

import hashlib
import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from ..enums import ErrorContext
from ..errors import BitsError, ErrorCode
from .tls import ClientCertificate

#: a certificate file larger than this is not one
MAX_CERTIFICATE_FILE = 1 << 20
#: the file names a store folder's certificates have
STORE_SUFFIXES = (".pem", ".p12", ".pfx")
_PASSPHRASE = ("(setclientcertificate JOB PATH --passphrase-stdin); openbitsd keeps it in memory only, so after a "
               "restart set the certificate again")
_KEY_BLOCK = re.compile(rb"-----BEGIN ((?:ENCRYPTED |RSA |EC )?PRIVATE KEY)-----.+?-----END \1-----", re.DOTALL)


def _refused(description: str) -> BitsError:
    return BitsError(ErrorCode.ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED, description, ErrorContext.GENERAL_TRANSPORT)


def certificates(data: bytes) -> list[x509.Certificate]:
    """The certificates of a file, without its key (a store search reads no key it does not need)."""
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            return x509.load_pem_x509_certificates(data)
        except ValueError:
            return []
    try:
        _, cert, chain = pkcs12.load_key_and_certificates(data, None)
    except (ValueError, TypeError):
        return []  # an encrypted PKCS#12 hides its certificates too: found by path only, or with the passphrase
    return [c for c in (cert, *chain) if c is not None]


def thumbprint(cert: x509.Certificate) -> str:
    return hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def matches_subject(cert: x509.Certificate, subject: str) -> bool:
    """SetClientCertificateByName: the whole subject (RFC 4514) or its common name, case-insensitive."""
    wanted = subject.strip().casefold()
    names = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    return wanted == cert.subject.rfc4514_string().casefold() or any(str(n).casefold() == wanted for n in names)


def load(data: bytes, passphrase: str | None, shown: str) -> ClientCertificate:
    """Certificate and key from a file's bytes; a clear BitsError when the key is missing, encrypted without a
    passphrase, or the passphrase is wrong. `shown` names the file in errors."""
    password = passphrase.encode() if passphrase is not None else None
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            chain = x509.load_pem_x509_certificates(data)
            block = _KEY_BLOCK.search(data)
            if block is None:
                raise _refused(f"{shown} holds no private key; put the certificate and its key in one PEM file, "
                               "or use a PKCS#12 file")
            key = serialization.load_pem_private_key(block.group(0), password)
        else:
            key, cert, extra = pkcs12.load_key_and_certificates(data, password)
            if key is None or cert is None:
                raise _refused(f"{shown} holds no certificate with a private key")
            chain = [cert, *extra]
    except TypeError:
        if password is None:
            raise _refused(f"the key in {shown} is encrypted: give its passphrase {_PASSPHRASE}") from None
        raise _refused(f"the key in {shown} is not encrypted: set the certificate without a passphrase") from None
    except ValueError as exc:
        if password is None and not data.lstrip().startswith(b"-----BEGIN"):  # PKCS#12 tells no more than this
            raise _refused(f"cannot read {shown}: it is not PKCS#12, or it is encrypted: give its passphrase "
                           f"{_PASSPHRASE}") from None
        why = "the passphrase is wrong, or " if password is not None else ""
        raise _refused(f"cannot read the certificate or key in {shown}: {why}it is not PEM or PKCS#12 ({exc})") from None
    leaf = chain[0]
    if leaf.public_key() != key.public_key():
        raise _refused(f"the key in {shown} does not belong to its first certificate ({leaf.subject.rfc4514_string()})")
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ClientCertificate(pem, leaf.subject.rfc4514_string(), thumbprint(leaf))
