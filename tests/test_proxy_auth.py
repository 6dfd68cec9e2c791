"""Authenticating proxies, for real: Squid with Digest (digest_file_auth) and with Negotiate
(negotiate_kerberos_auth), for plain requests and for the CONNECT tunnels of https; the access log says
who the proxy took each request for. tests/test_proxy.py has the proxy settings and Basic."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from openbits import BitsError, Job, JobState, Manager, ProxyUsage
from openbits.enums import AuthScheme, AuthTarget

from .daemon import DaemonProcess
from .download import download
from .servers.kerberos import KerberosRealm, NegotiateServer
from .servers.squid import SquidProxy
from .servers.tls import TlsServers

BODY = b"through the proxy\n" * 32


@pytest.fixture(scope="module")
def targets(tls_servers: TlsServers, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    """The file over plain http and over https (through a CONNECT), and the CA file the https one needs."""
    (tls_servers.root / "p").write_bytes(BODY)
    ca = tmp_path_factory.mktemp("proxy-ca") / "ca.pem"
    ca.write_bytes(tls_servers.ca.cert.read_bytes())
    return [tls_servers.http_url("p"), tls_servers.url("good", "p")], ca


def fetch(m: Manager, url: str, dest: Path, proxy: SquidProxy, ca: Path,
          credential: tuple[AuthScheme, str, str] | None) -> tuple[JobState, BitsError | None]:
    def prepare(job: Job) -> None:
        job.set_proxy_settings(ProxyUsage.OVERRIDE, proxy.url)
        job.set_properties(ca_file=str(ca))
        if credential is not None:
            job.set_credentials(AuthTarget.PROXY, *credential)

    return download(m, url, dest, BODY, prepare)[:2]


def test_digest_proxy(manager: Manager, squid_digest: SquidProxy, targets: tuple[list[str], Path],
                      daemon: DaemonProcess, tmp_path: Path) -> None:
    password = "pw-" + secrets.token_hex(6)
    squid_digest.add_user("digester", password)
    urls, ca = targets
    for i, url in enumerate(urls):
        state, error = fetch(manager, url, tmp_path / f"ok{i}", squid_digest, ca, (AuthScheme.DIGEST, "digester", password))
        assert state == JobState.TRANSFERRED, error
        state, error = fetch(manager, url, tmp_path / f"bad{i}", squid_digest, ca, (AuthScheme.DIGEST, "digester", "no"))
        assert state == JobState.ERROR and error is not None and error.name == "BG_E_HTTP_ERROR_407", error
    # Squid lets nobody through unauthenticated, and logs a tunnel only when it closes: the https file came
    # through an authenticated CONNECT, the http one shows in the log
    assert ("digester", "200", "GET", urls[0]) in squid_digest.users()
    for path in [*daemon.state_dir.rglob("*"), daemon.log_path]:
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path


def test_negotiate_proxy(manager: Manager, squid_negotiate: SquidProxy, kerberos: tuple[KerberosRealm, NegotiateServer],
                         targets: tuple[list[str], Path], tmp_path: Path) -> None:
    password = "pw-" + secrets.token_hex(6)
    principal = kerberos[0].add_user("proxied", password)
    urls, ca = targets
    for i, url in enumerate(urls):
        state, error = fetch(manager, url, tmp_path / f"ok{i}", squid_negotiate, ca,
                             (AuthScheme.NEGOTIATE, principal, password))
        assert state == JobState.TRANSFERRED, error
    assert (principal, "200", "GET", urls[0]) in squid_negotiate.users()
    # no credentials and no ticket: the proxy's 407, saying why
    state, error = fetch(manager, urls[1], tmp_path / "none", squid_negotiate, ca, None)
    assert state == JobState.ERROR and error is not None and error.name == "BG_E_HTTP_ERROR_407", error
    assert "wants Negotiate" in error.description and "kinit" in error.description
