"""Job proxy settings (SetProxySettings / GetProxySettings) and proxy authentication, end to end.

Every request goes to a forward proxy of our own (tests/servers/proxy.py) or straight to the origin,
both on 127.0.0.1. The last test uses real users and a root daemon (tests/test_security.py fixtures).
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbits import BitsError, JobState, Manager, ProxyUsage
from openbits.enums import AuthScheme, AuthTarget

from .daemon import DaemonProcess
from .servers.auth import BODY, AuthServer
from .servers.proxy import ForwardProxy
from .test_security import daemon as system_daemon  # noqa: F401  (fixtures, under names of their own here)
from .test_security import run_as, users, world  # noqa: F401
from .test_security import web as auth_web  # noqa: F401
from .users import owned_folder
from .waiting import wait_until

#: a port nothing listens on: a proxy there fails every request that tries it
DEAD_PROXY = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def origin() -> Iterator[AuthServer]:
    server = AuthServer()
    yield server
    server.stop()


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    server = ForwardProxy()
    yield server
    server.stop()


def fetch(manager: Manager, url: str, dest: Path, usage: ProxyUsage | None = None, proxy_list: str | None = None,
          bypass: str | None = None, creds: tuple[str, str] | None = None,
          timeout: float = 30) -> tuple[JobState, BitsError | None]:
    """One download job with these proxy settings; its state and error when it settles (or after timeout s:
    a transient error never settles)."""
    job = manager.create_job("proxy-" + secrets.token_hex(3))
    if usage is not None:
        job.set_proxy_settings(usage, proxy_list, bypass)
    if creds is not None:
        job.set_credentials(AuthTarget.PROXY, AuthScheme.BASIC, *creds)
    job.add_file(url, str(dest))
    job.resume()
    state = job.wait(timeout)
    error = job.error
    if state == JobState.TRANSFERRED:
        job.complete()
        assert dest.read_bytes() == BODY
    else:
        job.cancel()
    return state, error


def test_override_goes_through_the_proxy_and_the_bypass_list_skips_it(manager: Manager, origin: AuthServer,
                                                                      proxy: ForwardProxy, tmp_path: Path) -> None:
    url = origin.url("/open/a")
    assert fetch(manager, url, tmp_path / "a", ProxyUsage.OVERRIDE, proxy.url)[0] == JobState.TRANSFERRED
    assert proxy.targets == [url]  # the absolute URI: the request went through the proxy
    # "http=" is the proxy for http:// URLs; the dead default would serve only other schemes
    listed = f"{DEAD_PROXY.removeprefix('http://')} http={proxy.url}"
    assert fetch(manager, url, tmp_path / "b", ProxyUsage.OVERRIDE, listed)[0] == JobState.TRANSFERRED
    assert proxy.targets == [url, url]
    for bypass in ("127.0.0.1", "*.0.0.1", "example.org 127.0.0.1"):
        state, _ = fetch(manager, url, tmp_path / f"c{bypass}", ProxyUsage.OVERRIDE, DEAD_PROXY, bypass)
        assert state == JobState.TRANSFERRED, bypass
    assert proxy.targets == [url, url]
    state, error = fetch(manager, url, tmp_path / "d", ProxyUsage.OVERRIDE, DEAD_PROXY, "<local>",
                         timeout=3)  # the address has dots: not <local>, so proxied
    assert state != JobState.TRANSFERRED and error is not None and error.name == "ERROR_INTERNET_CANNOT_CONNECT"


def test_preconfig_is_the_environment_and_no_proxy_ignores_it(origin: AuthServer, proxy: ForwardProxy,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", proxy.url)
    daemon = DaemonProcess(tmp_path / "daemon").start()  # inherits this environment
    try:
        url = origin.url("/open/env")
        with daemon.manager() as manager:
            assert manager.create_job("default").proxy_settings.usage == ProxyUsage.PRECONFIG
            assert fetch(manager, url, tmp_path / "a")[0] == JobState.TRANSFERRED
            assert fetch(manager, url, tmp_path / "b", ProxyUsage.AUTODETECT)[0] == JobState.TRANSFERRED
            assert proxy.targets == [url, url]
            assert fetch(manager, url, tmp_path / "c", ProxyUsage.NO_PROXY)[0] == JobState.TRANSFERRED
            assert proxy.targets == [url, url]
    finally:
        daemon.stop()


def test_preconfig_prefers_the_config_section(origin: AuthServer, proxy: ForwardProxy, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", DEAD_PROXY)
    daemon = DaemonProcess(tmp_path / "daemon", {"proxy": {"http_proxy": proxy.url, "no_proxy": "example.org"}})
    daemon.start()
    try:
        url = origin.url("/open/config")
        with daemon.manager() as manager:
            assert fetch(manager, url, tmp_path / "a")[0] == JobState.TRANSFERRED
        assert proxy.targets == [url]
        daemon.reload({"proxy": {"http_proxy": proxy.url, "no_proxy": "127.0.0.1"}})
        wait_until(lambda: "configuration reloaded" in daemon.log(), 10, "the reload")  # SIGHUP is asynchronous
        with daemon.manager() as manager:
            assert fetch(manager, url, tmp_path / "b")[0] == JobState.TRANSFERRED
        assert proxy.targets == [url]  # no_proxy of the section: direct
    finally:
        daemon.stop()


def test_proxy_challenge_is_answered_with_the_jobs_proxy_credentials(daemon: DaemonProcess, manager: Manager,
                                                                    origin: AuthServer, tmp_path: Path) -> None:
    password = "proxy-" + secrets.token_hex(8)
    proxy = ForwardProxy(accounts={"pu": password})
    try:
        url = origin.url("/open/auth")
        state, error = fetch(manager, url, tmp_path / "a", ProxyUsage.OVERRIDE, proxy.url)
        assert state == JobState.ERROR and error is not None
        assert (error.name, error.context.name, error.http_status) == ("BG_E_HTTP_ERROR_407", "REMOTE_FILE", 407)
        state, _ = fetch(manager, url, tmp_path / "b", ProxyUsage.OVERRIDE, proxy.url, creds=("pu", password))
        assert state == JobState.TRANSFERRED
        basic = "Basic " + base64.b64encode(f"pu:{password}".encode()).decode()
        assert proxy.requests[-2:] == [("GET", url, ""), ("GET", url, basic)]
        # https: the proxy answers the CONNECT; the tunnel opens with the credentials (TLS then fails: a plain origin)
        secure = f"https://127.0.0.1:{origin.port}/open/tls"
        state, error = fetch(manager, secure, tmp_path / "c", ProxyUsage.OVERRIDE, proxy.url)
        assert error is not None and (error.name, error.context.name) == ("BG_E_HTTP_ERROR_407", "REMOTE_FILE")
        assert state == JobState.ERROR
        fetch(manager, secure, tmp_path / "d", ProxyUsage.OVERRIDE, proxy.url, creds=("pu", password), timeout=3)
        assert proxy.requests[-1] == ("CONNECT", f"127.0.0.1:{origin.port}", basic)
        # the password is nowhere to be seen
        shown = "".join(j.info().model_dump_json() for j in manager.jobs())
        assert password not in shown
        for path in [*daemon.state_dir.rglob("*"), daemon.log_path]:
            if path.is_file():
                assert password.encode() not in path.read_bytes(), path
    finally:
        proxy.stop()


def test_a_proxy_offering_only_what_the_job_cannot_give_is_told(manager: Manager, origin: AuthServer,
                                                                 tmp_path: Path) -> None:
    """NTLM without the job's NTLM credentials (Squid with NTLM: tests/test_proxy_auth.py), or a scheme openbits
    has not at all: the proxy's 407, naming what it wants and what openbits answers."""
    for scheme in ("NTLM", "Kerberos"):
        proxy = ForwardProxy(scheme=scheme)
        try:
            for url in (origin.url("/open/ntlm"), "https://127.0.0.1:1/ntlm"):  # a request, and a CONNECT
                state, error = fetch(manager, url, tmp_path / "a", ProxyUsage.OVERRIDE, proxy.url, creds=("u", "p"))
                assert state == JobState.ERROR and error is not None and error.name == "BG_E_HTTP_ERROR_407"
                assert f"({scheme})" in error.description and "cannot give" in error.description, error
        finally:
            proxy.stop()


def test_set_and_get_proxy_settings_and_their_refusals(manager: Manager, origin: AuthServer,
                                                       tmp_path: Path) -> None:
    job = manager.create_job("settings")
    job.set_proxy_settings(ProxyUsage.OVERRIDE, "http=http://p1:80 https=p2:8080", "<local> *.example.org")
    settings = job.proxy_settings
    assert (settings.usage, settings.proxy_list, settings.bypass_list) == (
        ProxyUsage.OVERRIDE, "http=http://p1:80 https=p2:8080", "<local> *.example.org")
    job.set_proxy_settings(ProxyUsage.NO_PROXY)
    assert (job.proxy_settings.proxy_list, job.proxy_settings.bypass_list) == (None, None)
    refusals = [
        ((ProxyUsage.OVERRIDE, None, None), "E_INVALIDARG"),
        ((ProxyUsage.PRECONFIG, "http://p:1", None), "E_INVALIDARG"),
        ((ProxyUsage.NO_PROXY, None, "host"), "E_INVALIDARG"),
        ((ProxyUsage.OVERRIDE, "http://user:pw@p:1", None), "E_INVALIDARG"),
        ((ProxyUsage.OVERRIDE, "p" * 4001, None), "BG_E_PROXY_LIST_TOO_LARGE"),
        ((ProxyUsage.OVERRIDE, "p:1", "h" * 4001), "BG_E_PROXY_BYPASS_LIST_TOO_LARGE"),
    ]
    for args, name in refusals:
        with pytest.raises(BitsError) as refused:
            job.set_proxy_settings(*args)
        assert refused.value.name == name, args
    job.set_proxy_settings(ProxyUsage.OVERRIDE, "p" * 4000, "h" * 4000)  # the limit itself is fine
    with pytest.raises(BitsError) as alone:
        job.set_properties(proxy_list="http://p:1")
    assert alone.value.name == "E_INVALIDARG"
    # the syntax is checked at run time, as BITS does: the job goes to ERROR
    for bad_list, bad_bypass in (("ftp=http://p:1", None), ("https://p:1", None), ("p:1", "aaa.*")):
        state, error = fetch(manager, origin.url("/open/x"), tmp_path / "bad", ProxyUsage.OVERRIDE, bad_list,
                             bad_bypass)
        assert state == JobState.ERROR and error is not None, bad_list
        assert (error.name, error.context.name) == ("BG_E_INVALID_PROXY_INFO", "GENERAL_TRANSPORT")
    job.cancel()
    with pytest.raises(BitsError) as final:
        job.set_proxy_settings(ProxyUsage.NO_PROXY)
    assert final.value.name in ("BG_E_INVALID_STATE", "BG_E_NOT_FOUND")


def test_cli_setproxy_and_getproxy(daemon: DaemonProcess, manager: Manager) -> None:
    job = manager.create_job("cli-proxy")
    cli = [str(Path(sys.prefix) / "bin" / "openbits"), "--socket", str(daemon.socket), "--no-autostart"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=30)

    assert run("setproxy", job.id, "override", "--list", "proxy1:80,proxy2:81", "--bypass", "NULL").returncode == 0
    assert run("getproxy", job.id).stdout == "OVERRIDE\nproxy1:80,proxy2:81\n"
    assert run("setproxy", job.id, "NO_PROXY").returncode == 0
    assert run("getproxy", job.id).stdout == "NO_PROXY\n"
    refused = run("setproxy", job.id, "OVERRIDE")
    assert refused.returncode == 1 and "E_INVALIDARG" in refused.stderr


@pytest.mark.root
def test_network_flag_answers_the_proxy_with_the_helpers_netrc(users, world, system_daemon,  # noqa: F811
                                                               origin: AuthServer) -> None:
    alice, bob = users["alice"], users["bob"]
    password = "pw-" + secrets.token_hex(6)
    proxy = ForwardProxy(accounts={"bobproxy": password})
    try:
        netrc = bob.home / ".netrc"
        netrc.write_text(f"machine 127.0.0.1 login bobproxy password {password}\n")
        os.chown(netrc, bob.uid, bob.identity.gid)
        netrc.chmod(0o600)
        mine = owned_folder(world / "alice_proxy", alice, 0o700)

        def code(dest: str, flags: int, helper: bool) -> str:
            return f"""
            job = m.create_job("proxied")
            job.set_proxy_settings(openbits.ProxyUsage.OVERRIDE, {proxy.url!r})
            opts = job.token_options()
            if {helper!r}:
                opts.set_helper_token(username={bob.name!r}, password={bob.password!r})
            opts.set_helper_token_flags({flags})
            job.add_file({origin.url('/open/netrc')!r}, {str(mine / dest)!r})
            job.resume()
            state = job.wait(30)
            error = job.error
            if state == JobState.TRANSFERRED:
                job.complete()
            out(state=state.name, error=error and error.name, shown=job.info().model_dump_json())
            """

        owner = run_as(alice, system_daemon, code("owner", 0, False))
        assert owner["error"] == "BG_E_HTTP_ERROR_407", owner  # alice has no netrc entry for the proxy
        helped = run_as(alice, system_daemon, code("helped", 2, True))
        assert helped["state"] == "TRANSFERRED", helped
        assert (mine / "helped").read_bytes() == BODY and (mine / "helped").stat().st_uid == alice.uid
        assert proxy.requests[-1][2] == "Basic " + base64.b64encode(f"bobproxy:{password}".encode()).decode()
        assert password not in owner["shown"] + helped["shown"]
        for path in [*system_daemon.state_dir.rglob("*"), system_daemon.log_path]:
            if path.is_file():
                assert password.encode() not in path.read_bytes(), path
    finally:
        proxy.stop()
