"""Negotiate (Kerberos) against a real MIT KDC and Apache mod_auth_gssapi: explicit credentials from
SetCredentials, implicit ones from the network identity's ticket cache, and the errors when neither works.
The user-mode daemon runs as the test's user; tests/test_negotiate_users.py has real users and helpers."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from openbits import BitsError, Job, JobState, Manager
from openbits.identity.tokens import AuthScheme, AuthTarget

from .daemon import DaemonProcess
from .download import download
from .servers.kerberos import KerberosRealm, NegotiateServer

BODY = b"behind kerberos\n" * 64


@pytest.fixture(scope="module")
def web(kerberos: tuple[KerberosRealm, NegotiateServer]) -> NegotiateServer:
    (kerberos[1].root / "negotiate" / "f").write_bytes(BODY)
    return kerberos[1]


@pytest.fixture(scope="module")
def account(kerberos: tuple[KerberosRealm, NegotiateServer]) -> tuple[str, str]:
    password = "pw-" + secrets.token_hex(8)
    return kerberos[0].add_user("explicit", password), password


def fetch(m: Manager, url: str, dest: Path, credential: tuple[str, str] | None = None,
          scheme: AuthScheme = AuthScheme.NEGOTIATE) -> tuple[JobState, BitsError | None]:
    def prepare(job: Job) -> None:
        if credential is not None:
            job.set_credentials(AuthTarget.SERVER, scheme, *credential)

    return download(m, url, dest, BODY, prepare)[:2]


def test_explicit_credentials(manager: Manager, web: NegotiateServer, account: tuple[str, str],
                              daemon: DaemonProcess, tmp_path: Path) -> None:
    state, error = fetch(manager, web.url("negotiate/f"), tmp_path / "ok", account)
    assert state == JobState.TRANSFERRED, error
    assert web.users("/negotiate/f")[-1] == account[0]
    state, error = fetch(manager, web.url("negotiate/f"), tmp_path / "bad", (account[0], "wrong"))
    assert state == JobState.ERROR and error is not None and error.name == "BG_E_HTTP_ERROR_401"
    assert f"refused the ntlm logon of {account[0]}" in error.description  # Kerberos failed, NTLM was tried
    for path in [*daemon.state_dir.rglob("*"), daemon.log_path]:
        if path.is_file():
            assert account[1].encode() not in path.read_bytes(), path


def test_no_ticket_is_a_401_that_says_kinit(manager: Manager, web: NegotiateServer, tmp_path: Path) -> None:
    state, error = fetch(manager, web.url("negotiate/f"), tmp_path / "f")
    assert state == JobState.ERROR and error is not None and error.name == "BG_E_HTTP_ERROR_401"
    assert "no usable Kerberos ticket" in error.description and "run kinit" in error.description


def test_passport_is_refused(manager: Manager) -> None:
    job = manager.create_job("passport")
    with pytest.raises(BitsError) as caught:
        job.set_credentials(AuthTarget.SERVER, AuthScheme.PASSPORT, "u", "p")
    assert caught.value.name == "BG_E_INVALID_AUTH_SCHEME"
    job.cancel()


def test_ntlm_inside_negotiate(manager: Manager, web: NegotiateServer, tmp_path: Path) -> None:
    """gss-ntlmssp behind Negotiate: explicit NEGOTIATE credentials of a domain account go as NTLM."""
    password = "nt-" + secrets.token_hex(6)
    web.add_ntlm_user("CORP", "ntuser", password)
    (web.root / "ntlm" / "f").write_bytes(BODY)
    state, error = fetch(manager, web.url("ntlm/f"), tmp_path / "bad", ("CORP\\ntuser", "wrong"))
    assert state == JobState.ERROR and error is not None and error.name == "BG_E_HTTP_ERROR_401", error
    state, error = fetch(manager, web.url("ntlm/f"), tmp_path / "ok", ("CORP\\ntuser", password))
    assert state == JobState.TRANSFERRED, error
    state, error = fetch(manager, web.url("ntlm/f"), tmp_path / "bad2", ("CORP\\ntuser", "wrong"))
    assert state == JobState.ERROR and error is not None and error.name == "BG_E_HTTP_ERROR_401", error
    # one logon: a connection an NTLM logon authenticated never carries another job's request
    assert sum("ntuser" in user for user in web.users("/ntlm/f")) == 1, web.users("/ntlm/f")
