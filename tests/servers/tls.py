"""A private certificate authority made per test run, and nginx serving TLS with its certificates.

One nginx process, several `server` blocks, each on its own loopback port, each showing one case a
BITS security flag is about: a good certificate, an expired one, one for another name, one whose
extended key usage does not allow a server, one the CA revoked (its CRL is in `ca.crl`), and one
server that wants a client certificate (`ssl_verify_client on`). The plain http server of the same
nginx is the target of the https -> http redirect chain. EC P-256 keys: the whole CA with every
certificate takes a few milliseconds.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .nginx import NginxServer, free_port

_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM files (and the key's PEM, the certificate's SHA-1 thumbprint)."""

    cert: Path
    key: Path
    thumbprint: str
    subject: str

    def pem(self) -> bytes:
        """Certificate then key, one PEM file (what `setclientcertificate JOB PATH` takes)."""
        return self.cert.read_bytes() + self.key.read_bytes()

    def pkcs12(self, passphrase: bytes | None) -> bytes:
        cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        key = serialization.load_pem_private_key(self.key.read_bytes(), None)
        encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                      else serialization.NoEncryption())
        return pkcs12.serialize_key_and_certificates(b"openbits", key, cert, None, encryption)  # type: ignore[arg-type]

    def encrypted_pem(self, passphrase: bytes) -> bytes:
        key = serialization.load_pem_private_key(self.key.read_bytes(), None)
        return self.cert.read_bytes() + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase))


class PrivateCA:
    """A root CA in `folder` (ca.pem, ca.crl) that issues server and client certificates."""

    def __init__(self, folder: Path, name: str = "openbits test CA") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self._cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - 365 * _DAY).not_valid_after(now + 365 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert = folder / "ca.pem"
        self.cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self.crl = folder / "ca.crl"
        self._revoked: list[x509.RevokedCertificate] = []
        self._write_crl()

    def issue(self, name: str, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), expired: bool = False,
              usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.SERVER_AUTH, revoked: bool = False) -> Issued:
        """A leaf certificate for `hosts` (subject CN=name), in name.pem and name.key."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        start, end = (now - 20 * _DAY, now - 10 * _DAY) if expired else (now - _DAY, now + 10 * _DAY)
        sans = [x509.IPAddress(ipaddress.ip_address(h)) if h[0].isdigit() else x509.DNSName(h) for h in hosts]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        if revoked:
            self._revoked.append(x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
                                 .revocation_date(now - _DAY).build())
            self._write_crl()
        paths = Issued(self.folder / f"{name}.pem", self.folder / f"{name}.key",
                       hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
                       cert.subject.rfc4514_string())
        paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
        os.chmod(paths.key, 0o600)
        return paths

    def _write_crl(self) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self._cert.subject)
                   .last_update(now - _DAY).next_update(now + 10 * _DAY))
        for entry in self._revoked:
            builder = builder.add_revoked_certificate(entry)
        self.crl.write_bytes(builder.sign(self._key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


#: server block name -> how its certificate is made
_CASES: dict[str, dict[str, object]] = {
    "good": {},
    "expired": {"expired": True},
    "wrongname": {"hosts": ("wrong.example",)},
    "wrongusage": {"usage": ExtendedKeyUsageOID.CLIENT_AUTH},
    "revoked": {"revoked": True},
    "clientauth": {},
}


class TlsServers:
    """nginx over `root` with one https port per case of `_CASES`, plus its plain http port.

    Every https server also answers /to-http/NAME with a 302 to http://.../NAME and /to-good/NAME with a
    302 to the good server; the plain server answers /to-https/NAME with a 302 to the good server and
    /to-plain/NAME with a 302 to its own /NAME.
    """

    def __init__(self, root: Path, work: Path) -> None:
        self.ca = PrivateCA(work / "ca")
        self.other_ca = PrivateCA(work / "other-ca", "another CA")  # a CA nobody trusts
        self.client = self.ca.issue("client", usage=ExtendedKeyUsageOID.CLIENT_AUTH)
        self.stranger = self.other_ca.issue("stranger", usage=ExtendedKeyUsageOID.CLIENT_AUTH)
        self.ports = {case: free_port() for case in _CASES}
        http_port = free_port()
        blocks = []
        for case, options in _CASES.items():
            issued = self.ca.issue(case, **options)  # type: ignore[arg-type]
            client = (f"        ssl_verify_client on;\n        ssl_client_certificate {self.ca.cert};\n"
                      if case == "clientauth" else "")
            blocks.append(
                f"    server {{\n        listen 127.0.0.1:{self.ports[case]} ssl;\n"
                f"        ssl_certificate {issued.cert};\n        ssl_certificate_key {issued.key};\n{client}"
                f"        location /to-http/ {{ rewrite ^/to-http/(.*)$ http://127.0.0.1:{http_port}/$1 redirect; }}\n"
                f"        location /to-good/ {{ rewrite ^/to-good/(.*)$ https://127.0.0.1:{self.ports['good']}/$1 "
                "redirect; }\n"
                f"        root {root};\n    }}\n")
        to_https = (f"        location /to-https/ {{ rewrite ^/to-https/(.*)$ https://127.0.0.1:{self.ports['good']}/$1 "
                    "redirect; }\n"
                    f"        location /to-plain/ {{ rewrite ^/to-plain/(.*)$ http://127.0.0.1:{http_port}/$1 redirect; }}\n")
        self.nginx = NginxServer(root, port=http_port, locations=to_https, servers="".join(blocks))
        self.root = root

    def url(self, case: str, name: str) -> str:
        return f"https://127.0.0.1:{self.ports[case]}/{name}"

    def http_url(self, name: str) -> str:
        return self.nginx.url(name)

    def stop(self) -> None:
        self.nginx.stop()
