"""Channel binding on TLS (RFC 5929 tls-server-end-point): a Negotiate or NTLM logon to an https server carries
the hash of the certificate the client saw on its connection, so a server that checks bindings (Windows's
Extended Protection) refuses a logon a relay took from another TLS session, e.g. one that terminates TLS
with a certificate of its own. The hash is the certificate's signature hash, SHA-256 for MD5 and SHA-1
(and for signatures without one of their own, such as Ed25519)."""

from __future__ import annotations

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes

#: what a certificate signed with these is hashed with instead
_WEAK = (hashes.MD5, hashes.SHA1)


def server_end_point(certificate: bytes) -> bytes:
    """The tls-server-end-point hash of a DER certificate (without RFC 5929's "tls-server-end-point:" prefix)."""
    algorithm = x509.load_der_x509_certificate(certificate).signature_hash_algorithm
    if algorithm is None or isinstance(algorithm, _WEAK):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(certificate)
    return digest.finalize()


def peer_end_point(response: aiohttp.ClientResponse) -> bytes | None:
    """The hash of the server certificate on the connection `response` came on; None for plain http."""
    # aiohttp hands a response's connection back to the pool once its body is in, but its protocol stays
    protocol = response.connection.protocol if response.connection is not None else response._protocol
    transport = None if protocol is None else protocol.transport
    tls = None if transport is None else transport.get_extra_info("ssl_object")
    certificate = None if tls is None else tls.getpeercert(binary_form=True)
    return None if certificate is None else server_end_point(certificate)
