"""Negotiate (Kerberos) and NTLM security contexts, run inside a file broker: the process that holds the
network identity. Implicit credentials - BITS's "the logged-on user" - are that identity's Kerberos ticket
cache (its KRB5CCNAME is not known to the daemon: the default cache of its uid, `FILE:/tmp/krb5cc_UID` or
whatever krb5.conf's default_ccache_name says, KEYRING: included), read by libkrb5 in this process, as
that user, never by root. Explicit credentials (SetCredentials) come with the first step and are dropped
with the context. pyspnego does the protocol (GSSAPI for Kerberos, its own NTLM). A context for an https
server is bound to the TLS connection (RFC 5929 tls-server-end-point: the daemon hands the hash of the
certificate it saw), so a server that checks channel bindings refuses a logon relayed from another TLS session.
"""

from __future__ import annotations

import base64
from collections import OrderedDict
from typing import Any

from ..enums import ErrorContext
from ..errors import BitsError, ErrorCode

#: contexts one broker keeps at once (one per request in flight that met a challenge)
MAX_CONTEXTS = 256
PROTOCOLS = ("negotiate", "ntlm", "kerberos")
#: the service of an SMB server's principal (cifs/HOST)
SMB_SERVICE = "cifs"
#: RFC 5929's channel binding type for TLS, before the certificate's hash
TLS_SERVER_END_POINT = b"tls-server-end-point:"


def auth_error(description: str) -> BitsError:
    return BitsError(ErrorCode.ERROR_LOGON_FAILURE, description, ErrorContext.REMOTE_FILE)


class SecurityContexts:
    """Client contexts by the daemon's id for them; tokens travel base64 in the broker's JSON."""

    def __init__(self, user: str) -> None:
        self._user = user
        #: id -> (context, the explicit user name or None, its service)
        self._contexts: OrderedDict[str, tuple[Any, str | None, str]] = OrderedDict()

    def negotiate_start(self, context_id: str, protocol: str, service: str, host: str, username: str | None,
                        password: str | None, binding: str | None = None) -> list[str | None]:
        """A new context: [its first token, the protocol it chose (kerberos or ntlm)]. `binding`: base64 of the
        channel's tls-server-end-point hash, for a server on TLS."""
        import spnego  # only brokers that authenticate pay for the import
        from spnego.channel_bindings import GssChannelBindings

        if protocol not in PROTOCOLS or not isinstance(host, str) or not isinstance(service, str):
            raise auth_error(f"unknown authentication protocol {protocol!r}")
        if binding is not None and not isinstance(binding, str):
            raise auth_error("malformed channel binding")
        bindings = None if binding is None else GssChannelBindings(
            application_data=TLS_SERVER_END_POINT + base64.b64decode(binding))
        if len(self._contexts) >= MAX_CONTEXTS:
            self._contexts.popitem(last=False)
        try:
            # an SMB session signs with the context's session key: the broker hands it out (negotiate_key)
            options = spnego.NegotiateOptions.session_key if service == SMB_SERVICE else spnego.NegotiateOptions.none
            context = spnego.client(username, password, hostname=host, service=service, protocol=protocol,
                                    context_req=spnego.ContextReq.default | spnego.ContextReq.mutual_auth,
                                    options=options, channel_bindings=bindings)
            token = context.step()
        except Exception as exc:  # noqa: BLE001 - pyspnego and gssapi raise many kinds; each is told as it is
            raise auth_error(self._why(exc, username, protocol, f"{service}/{host}")) from None
        self._contexts[context_id] = (context, username, service)
        return [_encode(token), context.negotiated_protocol]

    def negotiate_step(self, context_id: str, token: str, final: bool) -> list[Any]:
        """The server's token in: [our answer or None, whether the context is complete]. `final`: the token came
        with the server's answer, so it is the server's proof of who it is (mutual authentication)."""
        found = self._contexts.get(context_id)
        if found is None:
            raise auth_error("the security context is gone (too many at once); the request is retried")
        context, username, _ = found
        try:
            answer = context.step(base64.b64decode(token))
        except Exception as exc:  # noqa: BLE001
            self._contexts.pop(context_id, None)
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            protocol = context.negotiated_protocol or "authentication"
            if final:
                raise auth_error(f"the server's {protocol} answer does not prove who it is (mutual authentication "
                                 f"failed: {text})") from None
            raise auth_error(f"the server refused the {protocol} logon of {username or self._user} ({text})") from None
        return [_encode(answer), bool(context.complete)]

    def negotiate_key(self, context_id: str) -> str:
        """The session key of a complete SMB (cifs) context, which the daemon signs that SMB session with."""
        found = self._contexts.get(context_id)
        if found is None or not found[0].complete:
            raise auth_error("no complete security context to take a session key from")
        if found[2] != SMB_SERVICE:
            raise auth_error(f"only an SMB ({SMB_SERVICE}) context gives its session key")
        return base64.b64encode(found[0].session_key).decode()

    def negotiate_end(self, context_id: str) -> None:
        self._contexts.pop(context_id, None)

    def _why(self, exc: Exception, username: str | None, protocol: str, spn: str) -> str:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if username is None:
            return (f"no usable Kerberos ticket of {self._user} for {spn} ({text}); run kinit as {self._user}, or set "
                    f"credentials for the job (setcredentials JOB SERVER {protocol.upper()} USER)")
        return f"the {protocol.upper()} credentials of {username} do not work for {spn} ({text})"


def _encode(token: bytes | None) -> str | None:
    return None if not token else base64.b64encode(token).decode()
