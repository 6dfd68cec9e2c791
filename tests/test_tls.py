"""https against real nginx on a private CA: SetSecurityFlags (every certificate flag, every redirect policy),
the trust store (system, [tls] ca_file, a job's CA file), client certificates by path (PEM, PKCS#12, encrypted),
and bad input. The daemon runs in user mode as the test's user; tests/test_tls_users.py covers stores and
who reads the key."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbits import BitsError, Job, JobState, Manager

from .daemon import DaemonProcess
from .download import download
from .test_cli import Cli, one_line_error
from .servers.tls import TlsServers

BODY = b"tls body\n" * 100


@pytest.fixture(scope="module")
def tls(tls_servers: TlsServers) -> TlsServers:
    (tls_servers.root / "f").write_bytes(BODY)
    return tls_servers


@pytest.fixture(scope="module")
def tls_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    process = DaemonProcess(tmp_path_factory.mktemp("tls-daemon")).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def m(tls_daemon: DaemonProcess) -> Iterator[Manager]:
    with tls_daemon.manager() as manager:
        yield manager


@pytest.fixture(scope="module")
def trust(tls: TlsServers, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A job's CA files: the CA alone, and the CA with its CRL."""
    folder = tmp_path_factory.mktemp("trust")
    (folder / "ca.pem").write_bytes(tls.ca.cert.read_bytes())
    (folder / "ca-crl.pem").write_bytes(tls.ca.cert.read_bytes() + tls.ca.crl.read_bytes())
    return {"ca": folder / "ca.pem", "crl": folder / "ca-crl.pem"}


def fetch(m: Manager, url: str, dest: Path, *, flags: int = 0, ca_file: Path | None = None,
          **certificate: object) -> tuple[JobState, BitsError | None, str]:
    """A download job: its final state, its error, and its file's remote name at the end."""
    def prepare(job: Job) -> None:
        job.set_properties(security_flags=flags, **({"ca_file": str(ca_file)} if ca_file else {}))
        if certificate:
            job.set_client_certificate(**certificate)  # type: ignore[arg-type]

    return download(m, url, dest, BODY, prepare, timeout=20)


# -- trust -----------------------------------------------------------------------------------


def test_private_ca_is_unknown_until_trusted(m: Manager, tls: TlsServers, trust: dict[str, Path],
                                             tmp_path: Path) -> None:
    state, error, _ = fetch(m, tls.url("good", "f"), tmp_path / "a")
    assert state == JobState.ERROR and error is not None
    assert error.name == "ERROR_WINHTTP_SECURE_INVALID_CA" and "SSL_IGNORE_UNKNOWN_CA" in error.description
    assert fetch(m, tls.url("good", "f"), tmp_path / "b", ca_file=trust["ca"])[0] == JobState.TRANSFERRED


def test_administrators_ca_file_is_trusted_by_every_job(tls: TlsServers, tmp_path: Path) -> None:
    process = DaemonProcess(tmp_path / "d", {"tls": {"ca_file": str(tls.ca.cert)}}).start()
    try:
        with process.manager() as m:
            assert fetch(m, tls.url("good", "f"), tmp_path / "a")[0] == JobState.TRANSFERRED
    finally:
        process.stop()
    bad = DaemonProcess(tmp_path / "bad", {"tls": {"ca_file": str(tmp_path / "missing.pem")}})
    with pytest.raises(RuntimeError, match=r"\[tls\] ca_file .*missing.pem"):
        bad.start()


# -- every certificate flag ------------------------------------------------------------------

CN, DATE, UNKNOWN_CA, USAGE, CRL = 0x2, 0x4, 0x8, 0x10, 0x1


@pytest.mark.parametrize(("case", "flags", "trusted", "expected"), [
    ("expired", 0, "ca", "ERROR_WINHTTP_SECURE_CERT_DATE_INVALID"),
    ("expired", DATE, "ca", None),
    ("wrongname", 0, "ca", "ERROR_WINHTTP_SECURE_CERT_CN_INVALID"),
    ("wrongname", CN, "ca", None),
    ("wrongusage", 0, "ca", "ERROR_WINHTTP_SECURE_CERT_WRONG_USAGE"),
    ("wrongusage", USAGE, "ca", None),
    ("good", UNKNOWN_CA, None, None),
    # with UNKNOWN_CA or WRONG_USAGE openbits checks the rest itself (transport/tls.py LeafChecks)
    ("expired", UNKNOWN_CA, None, "ERROR_WINHTTP_SECURE_CERT_DATE_INVALID"),
    ("wrongname", UNKNOWN_CA, None, "ERROR_WINHTTP_SECURE_CERT_CN_INVALID"),
    ("wrongusage", UNKNOWN_CA, None, "ERROR_WINHTTP_SECURE_CERT_WRONG_USAGE"),
    ("wrongusage", USAGE, None, "ERROR_WINHTTP_SECURE_INVALID_CA"),
    ("expired", DATE | USAGE, "ca", None),
    ("wrongname", CN | USAGE | DATE, "ca", None),
    # revocation: the CRL must be among the trusted files
    ("revoked", 0, "ca", None),
    ("revoked", CRL, "crl", "ERROR_WINHTTP_SECURE_CERT_REVOKED"),
    ("good", CRL, "crl", None),
    ("good", CRL, "ca", "ERROR_WINHTTP_SECURE_CERT_REV_FAILED"),
    ("revoked", CRL | USAGE, "crl", "ERROR_WINHTTP_SECURE_CERT_REVOKED"),
    ("good", CRL | USAGE, "crl", None),
])
def test_security_flags(m: Manager, tls: TlsServers, trust: dict[str, Path], tmp_path: Path, case: str, flags: int,
                        trusted: str | None, expected: str | None) -> None:
    state, error, _ = fetch(m, tls.url(case, "f"), tmp_path / "f", flags=flags,
                            ca_file=trust[trusted] if trusted else None)
    if expected is None:
        assert state == JobState.TRANSFERRED, error
    else:
        assert state == JobState.ERROR and error is not None and error.name == expected, error
        assert error.context.name == "GENERAL_TRANSPORT"


# -- redirect policy -------------------------------------------------------------------------

REPORT, DISALLOW, HTTPS_TO_HTTP = 0x100, 0x200, 0x800


def test_https_to_http_needs_its_flag(m: Manager, tls: TlsServers, trust: dict[str, Path], tmp_path: Path) -> None:
    url = tls.url("good", "to-http/f")
    state, error, _ = fetch(m, url, tmp_path / "a", ca_file=trust["ca"])
    assert state == JobState.ERROR and error is not None and error.name == "ERROR_HTTP_REDIRECT_FAILED"
    assert tls.http_url("f") in error.description and "0x800" in error.description
    state, _, remote = fetch(m, url, tmp_path / "b", ca_file=trust["ca"], flags=HTTPS_TO_HTTP)
    assert state == JobState.TRANSFERRED and remote == url  # ALLOW_SILENT: the remote name stays
    state, _, remote = fetch(m, url, tmp_path / "c", ca_file=trust["ca"], flags=HTTPS_TO_HTTP | REPORT)
    assert state == JobState.TRANSFERRED and remote == tls.http_url("f")


@pytest.mark.parametrize("path", ["to-https/f", "to-plain/f"])  # aiohttp's way, and the plain-http fast path
def test_redirect_policies(m: Manager, tls: TlsServers, trust: dict[str, Path], tmp_path: Path, path: str) -> None:
    url, final = tls.http_url(path), (tls.url("good", "f") if "https" in path else tls.http_url("f"))
    state, _, remote = fetch(m, url, tmp_path / "silent", ca_file=trust["ca"])
    assert state == JobState.TRANSFERRED and remote == url
    state, _, remote = fetch(m, url, tmp_path / "report", ca_file=trust["ca"], flags=REPORT)
    assert state == JobState.TRANSFERRED and remote == final
    state, error, remote = fetch(m, url, tmp_path / "disallow", ca_file=trust["ca"], flags=DISALLOW)
    assert state == JobState.ERROR and error is not None
    assert error.name == "HTTP_STATUS_REDIRECT" and error.code == 0x8007012E  # HRESULT_FROM_WIN32(302)
    assert final in error.description and remote == final  # BITS puts the redirected URL in the remote name
    assert not (tmp_path / "disallow").exists()


# -- client certificates by path -------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tls: TlsServers, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("client-certs")
    files = {"pem": tls.client.pem(), "p12": tls.client.pkcs12(None), "p12-locked": tls.client.pkcs12(b"sesame"),
             "pem-locked": tls.client.encrypted_pem(b"sesame"), "stranger": tls.stranger.pem(),
             "cert-only": tls.client.cert.read_bytes()}
    paths = {}
    for name, data in files.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
        paths[name].chmod(0o600)
    return paths


def test_server_wants_a_client_certificate(m: Manager, tls: TlsServers, trust: dict[str, Path], tmp_path: Path,
                                           certificates: dict[str, Path]) -> None:
    url = tls.url("clientauth", "f")
    state, error, _ = fetch(m, url, tmp_path / "none", ca_file=trust["ca"])
    assert state == JobState.ERROR and error is not None and error.name == "BG_E_HTTP_ERROR_400"
    for name in ("pem", "p12"):
        assert fetch(m, url, tmp_path / name, ca_file=trust["ca"], path=certificates[name])[0] == JobState.TRANSFERRED
    for name in ("pem-locked", "p12-locked"):
        state, error, _ = fetch(m, url, tmp_path / name, ca_file=trust["ca"], path=certificates[name],
                                passphrase="sesame")
        assert state == JobState.TRANSFERRED, error
    state, error, _ = fetch(m, url, tmp_path / "stranger", ca_file=trust["ca"], path=certificates["stranger"])
    assert state == JobState.ERROR and error is not None and error.name == "BG_E_HTTP_ERROR_400"
    job = m.create_job("shown")
    job.set_client_certificate(path=certificates["pem"])
    assert job.info().client_certificate == {"by": "path", "path": str(certificates["pem"]),
                                             "thumbprint": tls.client.thumbprint, "subject": tls.client.subject}
    assert job.remove_client_certificate().client_certificate is None
    job.cancel()


@pytest.mark.parametrize(("name", "passphrase", "words"), [
    ("pem-locked", None, "is encrypted: give its passphrase"),
    ("p12-locked", None, "passphrase"),
    ("pem-locked", "wrong", "the passphrase is wrong"),
    ("p12-locked", "wrong", "the passphrase is wrong"),
    ("pem", "unneeded", "is not encrypted"),
    ("cert-only", None, "holds no private key"),
    ("missing", None, "cannot read"),
])
def test_bad_client_certificates_are_refused_when_set(m: Manager, tls_daemon: DaemonProcess,
                                                      certificates: dict[str, Path], name: str,
                                                      passphrase: str | None, words: str) -> None:
    job = m.create_job("bad certificate")
    path = certificates.get(name, certificates["pem"].parent / name)
    with pytest.raises(BitsError) as caught:
        job.set_client_certificate(path=path, passphrase=passphrase)
    assert words in caught.value.description and str(path) in caught.value.description
    assert job.info().client_certificate is None
    job.cancel()
    assert m.status().pid == tls_daemon.proc.pid  # type: ignore[union-attr]


def test_bad_choices_and_flags_are_refused(m: Manager) -> None:
    job = m.create_job("bad input")
    for flags in (0x20, 0x300, 0x400, 0x1000):
        with pytest.raises(BitsError) as caught:
            job.set_properties(security_flags=flags)
        assert caught.value.name == "E_NOTIMPL" and f"0x{flags:x}" in caught.value.description
    with pytest.raises(BitsError, match="SHA-1"):
        job.set_client_certificate(thumbprint="not-hex")
    with pytest.raises(BitsError, match="exactly one"):
        job.set_client_certificate(thumbprint="a" * 40, subject="CN=x")
    with pytest.raises(BitsError, match="absolute"):
        job.set_properties(ca_file="relative.pem")
    assert job.info().security_flags == 0
    job.set_properties(security_flags=0x91F & ~0x100)
    assert job.info().security_flags == 0x81F
    job.cancel()


def test_passphrase_lives_in_memory_only(tls: TlsServers, trust: dict[str, Path], certificates: dict[str, Path],
                                         tmp_path: Path) -> None:
    """Never in the store, the log or the job's info; gone after a restart, with the error that says so."""
    phrase = "phrase-" + secrets.token_hex(8)
    locked = tmp_path / "locked.pem"
    locked.write_bytes(tls.client.encrypted_pem(phrase.encode()))
    key_body = b"".join(tls.client.key.read_bytes().splitlines()[1:-1])[:40]
    process = DaemonProcess(tmp_path / "d").start()
    try:
        with process.manager() as m:
            job = m.create_job("locked")
            job.set_properties(ca_file=str(trust["ca"]))
            job.set_client_certificate(path=locked, passphrase=phrase)
            job.add_file(tls.url("clientauth", "f"), str(tmp_path / "out"))
            job.resume()
            assert job.wait(20) == JobState.TRANSFERRED
            shown = job.info().model_dump_json()
            job_id = job.id
            job.suspend()
            job.add_file(tls.url("clientauth", "f"), str(tmp_path / "again"))
        assert phrase not in shown
        process.stop()
        for path in [*process.state_dir.rglob("*"), process.log_path]:
            if path.is_file():
                data = path.read_bytes()
                assert phrase.encode() not in data and key_body not in data, path
        process.start()
        with process.manager() as m:
            job = m.get_job(job_id)
            job.resume()
            assert job.wait(20) == JobState.ERROR
            error = job.error
            assert error is not None and error.name == "ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED"
            assert "passphrase" in error.description and "restart" in error.description
            job.set_client_certificate(path=locked, passphrase=phrase)
            job.resume()
            assert job.wait(20) == JobState.TRANSFERRED
            job.complete()
    finally:
        process.stop()


def test_cli_verbs(tls_daemon: DaemonProcess, tls: TlsServers, trust: dict[str, Path],
                   certificates: dict[str, Path], tmp_path: Path) -> None:
    cli = Cli(tls_daemon.socket, tls_daemon.env)
    job = cli.ok("create", "cli-tls").split()[-1]
    cli.ok("setsecurityflags", job, "SSL_IGNORE_CERT_CN_INVALID|ALLOW_REPORT")
    assert cli.ok("getsecurityflags", job).strip() == "0x0102 SSL_IGNORE_CERT_CN_INVALID|HTTP_REDIRECT_POLICY_ALLOW_REPORT"
    one_line_error(cli("setsecurityflags", job, "0x40"), 1, "openbits: E_NOTIMPL")
    cli.ok("setcafile", job, str(trust["ca"]))
    assert cli.ok("getcafile", job).strip() == str(trust["ca"])
    locked = tmp_path / "locked.p12"
    locked.write_bytes(tls.client.pkcs12(b"sesame"))
    result = cli("setclientcertificate", job, str(locked), "--passphrase-stdin", input="sesame\n")
    assert result.returncode == 0, result.stderr
    shown = cli.ok("getclientcertificate", job)
    assert f"location: {locked}" in shown and tls.client.thumbprint in shown and "sesame" not in shown
    one_line_error(cli("setclientcertificate", job, str(locked)), 1, "openbits: ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED")
    cli.ok("removeclientcertificate", job)
    assert cli.ok("getclientcertificate", job) == ""
    cli.ok("setcafile", job, "--clear")
    assert cli.ok("getcafile", job) == ""
    cli.ok("cancel", job)
