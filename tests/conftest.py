"""Shared fixtures: a real daemon, a real fault-injecting server, real nginx; the daemon's core in-process."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shutil
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType

from typing import TYPE_CHECKING

import pytest

from openbits import Manager
from openbits.identity import FileBroker

from .daemon import DaemonProcess
from .inprocess import Core

if TYPE_CHECKING:
    from .servers.faulty import FaultyServer
    from .servers.nginx import NginxServer
    from .servers.kerberos import KerberosRealm, NegotiateServer
    from .servers.samba import SambaServer
    from .servers.squid import SquidProxy
    from .servers.tls import TlsServers



@pytest.fixture(scope="session", autouse=True)
def host_credential_secret(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """systemd-creds in every daemon the tests start seals with a host key of the run's, never the machine's
    /var/lib/systemd/credential.secret (identity/sealing.py)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SYSTEMD_CREDENTIAL_SECRET", str(tmp_path_factory.mktemp("host") / "credential.secret"))
        yield


@pytest.fixture
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A user-mode openbitsd on a private socket; its log is printed when a test fails."""
    process = DaemonProcess(tmp_path_factory.mktemp("daemon")).start()
    try:
        yield process
    finally:
        if process.proc is not None:
            process.stop()


@pytest.fixture
def manager(daemon: DaemonProcess) -> Iterator[Manager]:
    with daemon.manager() as m:
        yield m


@pytest.fixture(scope="session")
def faulty() -> Iterator["FaultyServer"]:
    from .servers.faulty import FaultyServer

    server = FaultyServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator["NginxServer"]:
    from .servers.nginx import NginxServer

    if shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"):
        pytest.skip("nginx is not installed (make test installs it)")
    server = NginxServer(tmp_path_factory.mktemp("www"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def file_broker() -> Iterator[FileBroker]:
    """The file broker of the in-process tests: started the first time one asks, outside any event loop
    (pytest-asyncio runs a loop per test), as openbitsd starts it before its loop."""
    broker = FileBroker.start()
    try:
        yield broker
    finally:
        asyncio.run(broker.aclose())


@pytest.fixture
async def core(tmp_path: Path, file_broker: FileBroker) -> AsyncIterator[Core]:
    """The daemon's service, store, events and transfers in this process (tests/inprocess.py)."""
    async with Core.built(tmp_path / "state", file_broker) as built:
        yield built


@pytest.fixture(scope="session")
def tls_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator["TlsServers"]:
    """nginx on a private CA: an https server per certificate case, ssl_verify_client, redirects (servers/tls.py)."""
    from .servers.tls import TlsServers

    if not os.path.exists("/usr/sbin/nginx"):
        pytest.skip("nginx is not installed (make test installs it)")
    root = tmp_path_factory.mktemp("tls-www")
    root.chmod(0o755)
    servers = TlsServers(root, tmp_path_factory.mktemp("tls"))
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="session")
def kerberos() -> Iterator[tuple["KerberosRealm", "NegotiateServer"]]:
    """An MIT KDC and Apache with mod_auth_gssapi (servers/kerberos.py); KRB5_CONFIG points at the realm while
    it runs, so daemons started meanwhile see it."""
    from .servers import kerberos as krb

    why = krb.available()
    if why is not None:
        pytest.skip(f"no Kerberos test realm: {why}")
    realm = krb.KerberosRealm()
    web = None
    before = os.environ.get("KRB5_CONFIG")
    os.environ["KRB5_CONFIG"] = str(realm.krb5_conf)
    try:
        web = krb.NegotiateServer(realm)
        yield realm, web
    finally:
        if before is None:
            os.environ.pop("KRB5_CONFIG", None)
        else:
            os.environ["KRB5_CONFIG"] = before
        if web is not None:
            web.stop()
        realm.stop()


def _squid(scheme: str) -> Iterator["SquidProxy"]:
    from .servers import squid

    why = squid.available()
    if why is not None:
        pytest.skip(why)
    proxy = squid.SquidProxy(scheme)
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="session")
def squid_digest() -> Iterator["SquidProxy"]:
    """Squid wanting Digest from its users (servers/squid.py)."""
    yield from _squid("digest")


@pytest.fixture(scope="session")
def squid_ntlm() -> Iterator["SquidProxy"]:
    """Squid wanting NTLM from its users (servers/ntlm_helper.py checks them)."""
    yield from _squid("ntlm")


@pytest.fixture(scope="session")
def squid_negotiate(kerberos: tuple["KerberosRealm", "NegotiateServer"]) -> Iterator["SquidProxy"]:
    """Squid wanting Negotiate (Kerberos, HTTP/localhost of the test realm) or NTLM (servers/ntlm_helper.py), both
    offered as corporate proxies offer them."""
    from .servers import squid
    from .servers.kerberos import REALM

    why = squid.available()
    if why is not None:
        pytest.skip(why)
    realm = kerberos[0]
    proxy = squid.SquidProxy("negotiate", "ntlm", keytab=realm.export_keytab("HTTP/localhost"),
                             krb5_conf=realm.krb5_conf, realm=REALM)
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="session")
def samba() -> Iterator["SambaServer"]:
    """smbd with the share `files` (servers/samba.py)."""
    from .servers import samba as smb

    why = smb.available()
    if why is not None:
        pytest.skip(why)
    server = smb.SambaServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def samba_kerberos(kerberos: tuple["KerberosRealm", "NegotiateServer"]) -> Iterator["SambaServer"]:
    """smbd that takes Kerberos logons of the test realm too (cifs/localhost)."""
    from .servers import samba as smb
    from .servers.kerberos import REALM

    why = smb.available()
    if why is not None:
        pytest.skip(why)
    server = smb.SambaServer(realm=REALM, keytab=kerberos[0].keytab_without_pac("cifs/localhost"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A URL whose server accepts connections and never answers, so a transfer stays in progress."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/never.bin"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    listener.close()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    """Attach the daemon's log to a failing test's report."""
    if call.excinfo is not None and "daemon" in getattr(item, "funcargs", {}):
        item.add_report_section(call.when, "openbitsd log", item.funcargs["daemon"].log()[-20000:])


#: what starts an openbitsd process, a real server or a lab (network namespace, bus) when a test uses it
STARTERS = ("tests.daemon", "tests.servers", "tests.netlab", "tests.nmlab")
STARTING_FIXTURES = frozenset({"daemon", "manager", "faulty", "nginx"})


def _uses_starters(module: ModuleType) -> bool:
    """Does the test module hold anything of STARTERS (a module, class or function it imported)?"""
    for value in vars(module).values():
        origin = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
        if isinstance(origin, str) and origin.startswith(STARTERS):
            return True
    return False


#: the longest files, in order (minutes each on 2 cores): make test's workers take them first, so that no
#: worker starts one of them when the others are nearly done (pytest-xdist hands out files in this order)
LONGEST_FIRST = ("test_upload_farm", "test_install", "test_first_run", "test_cli_first_hour", "test_cli",
                 "test_hostile", "test_api_schema", "test_security", "test_events_users", "test_verbs")


def _longest_first(item: pytest.Item) -> int:
    module = getattr(item, "module", None)
    name = module.__name__.rpartition(".")[2] if module is not None else ""
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark `servers` every test that starts a daemon or a real server: those of a module that imports one
    of STARTERS, and any test using a STARTING_FIXTURES fixture. `make test-fast` runs the others. Then
    order the longest files first (a stable sort: within a file, the order is the file's)."""
    items.sort(key=_longest_first)
    for item in items:
        module = getattr(item, "module", None)
        if (module is not None and _uses_starters(module)) or STARTING_FIXTURES & set(
                getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)
