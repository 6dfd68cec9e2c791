"""Authenticating proxies, for real: Squid with Digest (digest_file_auth), Negotiate (negotiate_kerberos_auth)
and NTLM (pyspnego's acceptor as its helper), alone or Negotiate and NTLM together, for plain requests and for
the CONNECT tunnels of https; the access log says who the proxy took each request for. tests/test_proxy.py has the proxy settings and Basic."""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
from pathlib import Path

import pytest

from openbits import BitsError, Job, JobState, Manager, ProxyUsage
from openbits.enums import AuthScheme, AuthTarget

from .daemon import DaemonProcess
from .download import download
from .servers.kerberos import KerberosRealm, NegotiateServer
from .servers.squid import SquidProxy
from .servers.thread import ServerThread, stream_listener
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


def test_proxy_offering_negotiate_and_ntlm(manager: Manager, squid_negotiate: SquidProxy,
                                           kerberos: tuple[KerberosRealm, NegotiateServer],
                                           targets: tuple[list[str], Path], tmp_path: Path) -> None:
    """A corporate proxy offers both: the job's NTLM credentials go before the ticket of the network identity,
    which answers (as Negotiate) a job without credentials."""
    assert {"negotiate", "ntlm"} <= set(squid_negotiate.schemes)
    realm = kerberos[0]
    password = "pw-" + secrets.token_hex(6)
    squid_negotiate.add_user("both", password)
    principal = realm.add_user("ticketed", password)
    realm.kinit(principal, password)
    try:
        urls, ca = targets
        for i, url in enumerate(urls):
            state, error = fetch(manager, url, tmp_path / f"ntlm{i}", squid_negotiate, ca,
                                 (AuthScheme.NTLM, "OPENBITS\\both", password))
            assert state == JobState.TRANSFERRED, error
            state, error = fetch(manager, url, tmp_path / f"ticket{i}", squid_negotiate, ca, None)
            assert state == JobState.TRANSFERRED, error
            state, error = fetch(manager, url, tmp_path / f"bad{i}", squid_negotiate, ca,
                                 (AuthScheme.NTLM, "OPENBITS\\both", "wrong"))  # no falling back to the ticket
            assert state == JobState.ERROR and error is not None and error.name == "BG_E_HTTP_ERROR_407", error
            assert "refused the job's NTLM logon" in error.description, error
    finally:
        realm.kdestroy()
    # Squid logs a tunnel only when it closes: the plain request shows who the proxy took each job for
    assert [user for user, status, _, url in squid_negotiate.users() if url == urls[0] and status == "200"][-2:] == [
        "both", principal]


def test_ntlm_proxy(manager: Manager, squid_ntlm: SquidProxy, targets: tuple[list[str], Path], daemon: DaemonProcess,
                    tmp_path: Path) -> None:
    """NTLM's three legs on one connection: a plain request's, and a CONNECT tunnel's the daemon opens itself."""
    password = "pw-" + secrets.token_hex(6)
    squid_ntlm.add_user("ntlmer", password)
    urls, ca = targets
    for i, url in enumerate(urls):
        state, error = fetch(manager, url, tmp_path / f"ok{i}", squid_ntlm, ca,
                             (AuthScheme.NTLM, "OPENBITS\\ntlmer", password))
        assert state == JobState.TRANSFERRED, error
        state, error = fetch(manager, url, tmp_path / f"bad{i}", squid_ntlm, ca,
                             (AuthScheme.NTLM, "OPENBITS\\ntlmer", "wrong"))
        assert state == JobState.ERROR and error is not None and error.name == "BG_E_HTTP_ERROR_407", error
        assert "refused the job's NTLM logon" in error.description, error
        # only NTLM offered, and the job has Digest credentials: what the proxy wants and what openbits answers
        state, error = fetch(manager, url, tmp_path / f"other{i}", squid_ntlm, ca,
                             (AuthScheme.DIGEST, "ntlmer", password))
        assert state == JobState.ERROR and error is not None and error.name == "BG_E_HTTP_ERROR_407", error
        assert "(NTLM)" in error.description and "cannot give" in error.description, error
    assert ("ntlmer", "200", "GET", urls[0]) in squid_ntlm.users()
    for path in [*daemon.state_dir.rglob("*"), daemon.log_path]:
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path


def test_a_negotiate_proxy_must_prove_who_it_is(manager: Manager, squid_negotiate: SquidProxy,
                                                kerberos: tuple[KerberosRealm, NegotiateServer],
                                                targets: tuple[list[str], Path], tmp_path: Path) -> None:
    """Someone between the job and Squid answers for it with a Kerberos reply of their own (Squid itself sends
    none): the job's mutual authentication refuses the answer, for a request and for a tunnel."""
    password = "pw-" + secrets.token_hex(6)
    principal = kerberos[0].add_user("misled", password)
    forged = b"Proxy-Authentication-Info: Negotiate " + base64.b64encode(secrets.token_bytes(40)) + b"\r\n"

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", squid_negotiate.port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, tamper: bool) -> None:
            while data := await source.read(65536):
                if tamper:  # the answers that took the logon get the forged token
                    data = re.sub(rb"(HTTP/1\.1 200 [^\r]*\r\n)", lambda m: m[1] + forged, data)
                sink.write(data)
                await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream, False), pipe(upstream_reader, writer, True),
                             return_exceptions=True)

    middle = ServerThread(stream_listener(relay), "forging-relay")
    try:
        urls, ca = targets
        for i, url in enumerate(urls):
            def prepare(job: Job) -> None:
                job.set_proxy_settings(ProxyUsage.OVERRIDE, f"http://localhost:{middle.port}")
                job.set_properties(ca_file=str(ca))
                job.set_credentials(AuthTarget.PROXY, AuthScheme.NEGOTIATE, principal, password)

            state, error = download(manager, url, tmp_path / f"f{i}", BODY, prepare)[:2]
            assert state == JobState.ERROR and error is not None, error
            assert error.name == "ERROR_INTERNET_SECURE_FAILURE" and "did not prove who it is" in error.description
    finally:
        middle.stop()
