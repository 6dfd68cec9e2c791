"""Channel binding on TLS: Negotiate and NTLM logons to an https server that wants them bound to its certificate
(servers/bound.py), and the refusal of a server that sees another certificate's binding (a relay terminating TLS)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbits import Job, JobState, Manager
from openbits.identity.tokens import AuthScheme, AuthTarget

from .download import download
from .servers.bound import BoundServer
from .servers.kerberos import KerberosRealm, NegotiateServer
from .servers.tls import PrivateCA

BODY = b"bound to the channel\n" * 64


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCA:
    return PrivateCA(tmp_path_factory.mktemp("bound-ca"))


@pytest.fixture(scope="module")
def bound(kerberos: tuple[KerberosRealm, NegotiateServer], ca: PrivateCA) -> Iterator[BoundServer]:
    server = BoundServer(kerberos[0], ca)
    for folder in ("negotiate", "ntlm"):
        (server.root / folder).mkdir()
        (server.root / folder / "f").write_bytes(BODY)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def account(kerberos: tuple[KerberosRealm, NegotiateServer]) -> tuple[str, str]:
    password = "pw-" + secrets.token_hex(8)
    return kerberos[0].add_user("bound", password), password


@pytest.fixture(scope="module")
def ntlm_account(bound: BoundServer) -> tuple[str, str]:
    password = "nt-" + secrets.token_hex(6)
    bound.add_ntlm_user("CORP", "bounduser", password)
    return "CORP\\bounduser", password


def fetch(m: Manager, url: str, dest: Path, ca: PrivateCA, scheme: AuthScheme,
          credential: tuple[str, str]) -> tuple[JobState, str]:
    def prepare(job: Job) -> None:
        job.set_properties(ca_file=str(ca.cert))
        job.set_credentials(AuthTarget.SERVER, scheme, *credential)

    state, error, _ = download(m, url, dest, BODY, prepare)
    return state, "" if error is None else f"{error.name}: {error.description}"


@pytest.mark.parametrize(("folder", "scheme"), [("negotiate", AuthScheme.NEGOTIATE), ("ntlm", AuthScheme.NTLM)])
def test_bound_logon_is_taken(manager: Manager, bound: BoundServer, ca: PrivateCA, account: tuple[str, str],
                              ntlm_account: tuple[str, str], tmp_path: Path, folder: str, scheme: AuthScheme) -> None:
    credential = account if folder == "negotiate" else ntlm_account
    state, error = fetch(manager, bound.url("bound", f"{folder}/f"), tmp_path / "f", ca, scheme, credential)
    assert state == JobState.TRANSFERRED, error
    users = bound.users("bound", f"/{folder}/f")
    assert users and users[-1].lower().endswith(credential[0].split("\\")[-1].lower()), users


@pytest.mark.parametrize(("folder", "scheme"), [("negotiate", AuthScheme.NEGOTIATE), ("ntlm", AuthScheme.NTLM)])
def test_the_next_logon_on_the_origin_is_bound_too(manager: Manager, bound: BoundServer, ca: PrivateCA,
                                                    account: tuple[str, str], ntlm_account: tuple[str, str],
                                                    tmp_path: Path, folder: str, scheme: AuthScheme) -> None:
    """A redirect within the server: the origin took the scheme, so the next request's logon comes before any
    challenge, bound to the certificate the origin showed before."""
    credential = account if folder == "negotiate" else ntlm_account
    state, error = fetch(manager, bound.url("bound", f"{folder}/to/f"), tmp_path / "f", ca, scheme, credential)
    assert state == JobState.TRANSFERRED, error
    assert bound.users("bound", f"/{folder}/to/f") and bound.users("bound", f"/{folder}/f")


@pytest.mark.parametrize(("folder", "scheme"), [("negotiate", AuthScheme.NEGOTIATE), ("ntlm", AuthScheme.NTLM)])
def test_logon_bound_to_another_certificate_is_refused(manager: Manager, bound: BoundServer, ca: PrivateCA,
                                                       account: tuple[str, str], ntlm_account: tuple[str, str],
                                                       tmp_path: Path, folder: str, scheme: AuthScheme) -> None:
    credential = account if folder == "negotiate" else ntlm_account
    state, error = fetch(manager, bound.url("relayed", f"{folder}/f"), tmp_path / "f", ca, scheme, credential)
    assert state == JobState.ERROR and error.startswith("BG_E_HTTP_ERROR_401"), error
    assert "channel binding" in error and "terminates TLS" in error, error
    assert bound.users("relayed", f"/{folder}/f") == []
