"""Upload and upload-reply jobs end to end: a real openbitsd against openbits-server (in this process).

The server runs in the test's event loop with a middleware that records every
packet, so a test can tell how many bytes the client sent and which packets
it used; the daemon is a real process that can be killed with -9.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from openbits import AsyncManager
from openbits.client import AsyncJob
from openbits.enums import ErrorContext, JobPriority, JobState, JobType, ProxyUsage
from openbits.errors import BitsError, ErrorCode
from openbits.schema.models import JobInfo
from openbits.enums import AuthScheme, AuthTarget, SecurityFlags
from openbits.server import BitsAppRunner, ServerSettings, VirtualDirectory, make_upload_app
from openbits.uploadprotocol import LEGACY_FRAGMENT_LIMIT, Header

from .daemon import DaemonProcess
from .servers import nginx
from .servers.auth import digest_challenge, digest_ok
from .servers.proxy import ForwardProxy
from .servers.squid import SquidProxy
from .servers.thread import serve_app
from .servers.tls import TlsServers
from .servers.uploadapp import UploadApp
from .test_upload_server import _PROXY_LOCATION, _proxying_nginx
from .waiting import until

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_NONCE = "0123456789abcdef"


@dataclass
class Server:
    """openbits-server on a fixed loopback port, restartable, recording (packet type, Content-Length) per request."""

    root: Path
    vdir: dict[str, object]
    port: int = 0
    packets: list[tuple[str, int]] = field(default_factory=list)
    #: (packet type, Host header) per request
    hosts: list[tuple[str, str]] = field(default_factory=list)
    #: (user, password) a Digest challenge (tests/servers/auth.py) asks every request for; None: none
    digest_account: tuple[str, str] | None = None
    #: Fragments answered with a bare HTTP 500 (no BITS-Error-Code), before their body is read
    fail_fragments: int = 0
    #: Requests with a longer body are answered 413 before it is read, as nginx's client_max_body_size does
    body_limit: int | None = None
    runner: BitsAppRunner | None = None

    async def start(self) -> Server:
        settings = ServerSettings(vdirs=(VirtualDirectory(prefix="/", directory=self.root, **self.vdir),))  # type: ignore[arg-type]
        app = make_upload_app(settings)
        app.middlewares.append(self._record)
        if self.digest_account is not None:
            app.middlewares.append(self._digest)
        # stop() is a server going away: a graceful shutdown's default 60 s wait for a request it stopped
        # reading (aiohttp drops the rest of a body then) outlasted the tests' waits now and then
        self.runner, self.port = await serve_app(app, self.port, runner=BitsAppRunner, shutdown_timeout=1.0)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.packets.append((request.headers.get(Header.PACKET_TYPE, request.method), request.content_length or 0))
        self.hosts.append((request.headers.get(Header.PACKET_TYPE, request.method), request.host))
        if self.fail_fragments and request.headers.get(Header.PACKET_TYPE) == "Fragment":
            self.fail_fragments -= 1
            return web.Response(status=500, text="Internal Server Error")
        if self.body_limit is not None and (request.content_length or 0) > self.body_limit:
            return web.Response(status=413, text="Request Entity Too Large")
        return await handler(request)

    @web.middleware
    async def _digest(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        assert self.digest_account is not None
        if digest_ok(request.headers.get("Authorization", ""), request.method, *self.digest_account, _NONCE):
            return await handler(request)
        return web.Response(status=401, headers={"WWW-Authenticate": digest_challenge(_NONCE)})

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def count(self, packet: str) -> int:
        return sum(1 for kind, _ in self.packets if kind == packet)

    @property
    def fragment_bytes(self) -> list[int]:
        return [length for kind, length in self.packets if kind == "Fragment"]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    servers: list[Server] = []
    (tmp_path / "root").mkdir()

    async def start(digest_account: tuple[str, str] | None = None, fail_fragments: int = 0,
                    body_limit: int | None = None, **vdir: object) -> Server:
        servers.append(await Server(tmp_path / "root", vdir, digest_account=digest_account,
                                    fail_fragments=fail_fragments, body_limit=body_limit).start())
        return servers[-1]

    yield start
    for s in servers:
        await s.stop()


@pytest.fixture
async def amanager(daemon: DaemonProcess) -> AsyncIterator[AsyncManager]:
    async with AsyncManager(daemon.socket, autostart=False) as m:
        yield m


@pytest.fixture
async def backend() -> AsyncIterator[UploadApp]:
    app = await UploadApp().start()
    yield app
    await app.stop()


def _file(tmp_path: Path, size: int, name: str = "up.bin") -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / "local" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path, data


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _upload_job(m: AsyncManager, url: str, path: Path, kind: JobType = JobType.UPLOAD, **props: object) -> AsyncJob:
    job = await m.create_job("up", kind, priority=JobPriority.FOREGROUND)  # background jobs yield bandwidth
    await job.add_file(url, path)
    if props:
        await job.set_properties(**props)
    await job.resume()
    return job


async def _until(job: AsyncJob, done: Callable[..., bool], timeout: float = 20) -> None:
    """Until `done(info)`; a job that fails meanwhile fails the test with its error."""
    def checked(info: JobInfo) -> bool:
        assert info.state != JobState.ERROR, info.error
        return done(info)

    await until(job.info, checked, timeout)


async def _proxied(m: AsyncManager, kind: JobType, url: str, path: Path, proxy: str,
                   credential: tuple[AuthScheme, str, str]) -> AsyncJob:
    """An upload through `proxy` with the job's PROXY credential, TRANSFERRED (else the test fails with why)."""
    job = await m.create_job("via-proxy", kind, priority=JobPriority.FOREGROUND)
    await job.add_file(url, path)
    await job.set_proxy_settings(ProxyUsage.OVERRIDE, proxy)
    await job.set_credentials(AuthTarget.PROXY, *credential)
    await job.resume()
    assert await job.wait(30) == JobState.TRANSFERRED, (await job.info()).error
    return job


def _resent(s: Server, size: int) -> int:
    """Bytes sent beyond the file's size (probes and fragments cut short)."""
    return sum(s.fragment_bytes) - size


# ---------------------------------------------------------------- rules at AddFile and Complete


async def test_upload_rules(amanager: AsyncManager, server: Callable[..., Awaitable[Server]], tmp_path: Path) -> None:
    s = await server()
    path, _ = _file(tmp_path, 10)
    job = await amanager.create_job("rules", JobType.UPLOAD)
    with pytest.raises(BitsError) as missing:
        await job.add_file(s.url("x"), tmp_path / "nope")
    assert missing.value.code == ErrorCode.ERROR_FILE_NOT_FOUND and missing.value.context == ErrorContext.LOCAL_FILE
    with pytest.raises(BitsError) as scheme:
        await job.add_file(f"file://{tmp_path}/x", path)
    assert scheme.value.code == ErrorCode.BG_E_PROTOCOL_NOT_AVAILABLE
    with pytest.raises(BitsError) as two:
        await job.add_files([(s.url("a"), path), (s.url("b"), path)])
    assert two.value.code == ErrorCode.BG_E_TOO_MANY_FILES
    await job.add_file(s.url("a"), path)
    with pytest.raises(BitsError) as early:
        await job.complete()
    assert early.value.code == ErrorCode.BG_E_INVALID_STATE
    for call in (job.reply_data(), job.set_reply_file_name(tmp_path / "r")):
        with pytest.raises(BitsError) as notimpl:
            await call
        assert notimpl.value.code == ErrorCode.E_NOTIMPL
    assert await job.reply_file_name() is None


# ---------------------------------------------------------------- uploads end to end


async def test_upload_end_to_end(amanager: AsyncManager, server: Callable[..., Awaitable[Server]], tmp_path: Path) -> None:
    s = await server()
    path, data = _file(tmp_path, 3 * 1024 * 1024 + 7)
    empty, _ = _file(tmp_path, 0, "empty.bin")
    job = await _upload_job(amanager, s.url("f.bin"), path)
    nothing = await _upload_job(amanager, s.url("empty.bin"), empty)
    for j in (job, nothing):
        assert await j.wait(30) == JobState.TRANSFERRED, (await j.info()).error
        await j.complete()
    assert _sha((s.root / "f.bin").read_bytes()) == _sha(data)
    assert (s.root / "empty.bin").read_bytes() == b""
    assert s.count("Ping") == 2 and s.count("Create-Session") == 2 and s.count("Close-Session") == 2
    assert _resent(s, len(data)) == 0
    info = await job.info()
    assert info.bytes_total == info.bytes_transferred == len(data) and info.state == JobState.ACKNOWLEDGED


async def test_fragments_grow_to_the_limit_the_server_tells(
    amanager: AsyncManager, server: Callable[..., Awaitable[Server]], tmp_path: Path
) -> None:
    """openbits-server tells its OpenBits-Fragment-Limit (256 MiB by default), so a fast link's fragments
    grow past 16 MiB; to a server that tells nothing (IIS takes 30,000,000 bytes a request) they stay at
    most 16 MiB. Either way the file arrives whole."""
    path, data = _file(tmp_path, (80 << 20) + 3)
    for vdir, name in (({}, "told.bin"), ({"fragment_limit": 0}, "untold.bin")):
        s = await server(**vdir)
        job = await _upload_job(amanager, s.url(name), path)
        assert await job.wait(60) == JobState.TRANSFERRED, (await job.info()).error
        await job.complete()
        assert _sha((s.root / name).read_bytes()) == _sha(data)
        assert _resent(s, len(data)) == 0
        if vdir:
            assert max(s.fragment_bytes) <= LEGACY_FRAGMENT_LIMIT
        else:
            assert LEGACY_FRAGMENT_LIMIT < max(s.fragment_bytes) <= 256 << 20, s.fragment_bytes


async def test_a_front_ends_413_for_a_large_fragment_brings_them_down_to_16_mib(
    amanager: AsyncManager, server: Callable[..., Awaitable[Server]], tmp_path: Path
) -> None:
    """The server said 256 MiB, but a front end takes 20 MiB a request (nginx's client_max_body_size):
    its bare 413 (no BITS-Error-Code) is not the server's BG_E_TOO_LARGE, and the fragments go on at
    most 16 MiB."""
    s = await server(body_limit=20 << 20)
    path, data = _file(tmp_path, 80 << 20)
    job = await _upload_job(amanager, s.url("capped.bin"), path)
    assert await job.wait(60) == JobState.TRANSFERRED, (await job.info()).error
    await job.complete()
    assert _sha((s.root / "capped.bin").read_bytes()) == _sha(data)
    sizes = s.fragment_bytes
    refused = [i for i, n in enumerate(sizes) if n > 20 << 20]
    assert len(refused) == 1 and max(sizes[refused[0] + 1:]) <= LEGACY_FRAGMENT_LIMIT, sizes


async def test_upload_reply_default_and_chosen_reply_file(
    amanager: AsyncManager, server: Callable[..., Awaitable[Server]], backend: UploadApp, tmp_path: Path
) -> None:
    s = await server(notification_type=1, notification_url=backend.url("/echo"))
    path, data = _file(tmp_path, 100_000)
    job = await amanager.create_job("reply", JobType.UPLOAD_REPLY)
    assert await job.reply_file_name() is None
    await job.add_file(s.url("f.bin"), path)
    default = await job.reply_file_name()
    assert default is not None and Path(default).parent == path.parent
    assert (await job.reply_progress()).bytes_total == -1
    await job.resume()
    assert await job.wait(30) == JobState.TRANSFERRED, (await job.info()).error
    assert await job.reply_data() == b"reply:" + data
    assert not Path(default).exists()  # the reply file appears at Complete
    progress = await job.reply_progress()
    assert progress.bytes_total == progress.bytes_transferred == len(data) + 6
    await job.complete()
    assert Path(default).read_bytes() == b"reply:" + data
    assert await job.reply_data() == b"reply:" + data  # GetReplyData works after Complete too
    assert not (s.root / "f.bin").exists()  # the application did not ask for a copy

    chosen = tmp_path / "answers" / "reply.txt"
    chosen.parent.mkdir()
    second = await amanager.create_job("reply2", JobType.UPLOAD_REPLY)
    await second.add_file(s.url("g.bin"), path)
    with pytest.raises(BitsError):
        await second.set_reply_file_name(tmp_path / "no-such-folder" / "r")
    await second.set_reply_file_name(chosen)
    await second.resume()
    assert await second.wait(30) == JobState.TRANSFERRED
    with pytest.raises(BitsError) as late:
        await second.set_reply_file_name(tmp_path / "other")
    assert late.value.code == ErrorCode.BG_E_INVALID_STATE
    await second.complete()
    assert chosen.read_bytes() == b"reply:" + data and await second.reply_file_name() == str(chosen)
    assert [p.name for p in chosen.parent.iterdir()] == ["reply.txt"]  # no temporary left behind


# ---------------------------------------------------------------- errors


async def test_server_errors_map_to_contexts(
    amanager: AsyncManager, server: Callable[..., Awaitable[Server]], backend: UploadApp, tmp_path: Path
) -> None:
    small = await server(max_upload_size=10)
    path, _ = _file(tmp_path, 1000)
    too_large = await _upload_job(amanager, small.url("f.bin"), path)
    assert await too_large.wait(20) == JobState.ERROR
    error = await too_large.error()
    assert error is not None and (error.code, error.context) == (ErrorCode.BG_E_TOO_LARGE, ErrorContext.REMOTE_FILE)
    with pytest.raises(BitsError):
        await too_large.complete()  # uploads complete only in TRANSFERRED
    await too_large.cancel()

    failing = await server(notification_type=1, notification_url=backend.url("/fail"))
    app_error = await _upload_job(amanager, failing.url("g.bin"), path, JobType.UPLOAD_REPLY)
    await _until(app_error, lambda i: i.state == JobState.TRANSIENT_ERROR)  # 500: transient, as the docs say
    error = await app_error.error()
    assert error is not None and error.context == ErrorContext.REMOTE_APPLICATION
    assert error.code == ErrorCode.http(500) and error.http_status == 500

    missing = await _upload_job(amanager, small.url("no/such/folder/f.bin"), path)
    assert await missing.wait(20) == JobState.ERROR
    error = await missing.error()
    assert error is not None and (error.code, error.context) == (ErrorCode.ERROR_PATH_NOT_FOUND, ErrorContext.REMOTE_FILE)


async def test_a_fragment_answered_500_is_http_error_500_and_retried(
        amanager: AsyncManager, server: Callable[..., Awaitable[Server]], tmp_path: Path) -> None:
    s = await server(fail_fragments=1)
    path, data = _file(tmp_path, 3_000_000)
    job = await _upload_job(amanager, s.url("f500.bin"), path, minimum_retry_delay=1)
    await _until(job, lambda i: i.error is not None or i.state == JobState.TRANSFERRED)
    error = (await job.info()).error
    assert error is not None and (error.name, error.http_status) == ("BG_E_HTTP_ERROR_500", 500)
    assert error.file is not None and (error.file.index, error.protocol) == (0, "http")
    assert await job.wait(30) == JobState.TRANSFERRED  # transient: retried after the minimum retry delay
    await job.complete()
    assert (s.root / "f500.bin").read_bytes() == data


async def _upload_under_way(m: AsyncManager, s: Server, tmp_path: Path) -> tuple[AsyncJob, Path]:
    """A 1 MiB upload slowed to 256 KiB/s, once the server has acknowledged its first bytes."""
    path, _ = _file(tmp_path, 1024 * 1024)
    job = await _upload_job(m, s.url("f.bin"), path, max_bandwidth=256 * 1024)
    await _until(job, lambda i: i.bytes_transferred > 0)
    return job, path


async def test_local_file_changed_is_an_error(
    amanager: AsyncManager, server: Callable[..., Awaitable[Server]], tmp_path: Path
) -> None:
    job, path = await _upload_under_way(amanager, await server(), tmp_path)
    with path.open("ab") as f:
        f.write(b"more")
    assert await job.wait(20) == JobState.ERROR
    error = await job.error()
    assert error is not None and error.code == ErrorCode.BG_E_LOCAL_FILE_CHANGED
    assert error.context == ErrorContext.LOCAL_FILE


async def test_cancel_sends_cancel_session(
    amanager: AsyncManager, server: Callable[..., Awaitable[Server]], tmp_path: Path
) -> None:
    s = await server()
    job, _ = await _upload_under_way(amanager, s, tmp_path)
    await job.cancel()
    assert s.count("Cancel-Session") == 1
    assert list((s.root / "BITS-Sessions").iterdir()) == []
    assert not (s.root / "f.bin").exists()


# ---------------------------------------------------------------- interruption and resume


async def test_kill9_mid_upload_resumes_from_servers_range(
    daemon: DaemonProcess, amanager: AsyncManager, server: Callable[..., Awaitable[Server]], tmp_path: Path
) -> None:
    s = await server()
    size = 3 * 1024 * 1024
    path, data = _file(tmp_path, size)
    job = await _upload_job(amanager, s.url("f.bin"), path, max_bandwidth=1024 * 1024)
    cut = random.randint(size // 5, size * 4 // 5)
    await _until(job, lambda i: i.bytes_transferred >= cut)
    await asyncio.to_thread(daemon.kill9)
    await asyncio.to_thread(daemon.start)
    async with AsyncManager(daemon.socket, autostart=False) as again:
        revived = await again.get_job(job.id)
        assert await revived.wait(30) == JobState.TRANSFERRED, (await revived.info()).error
        await revived.complete()
    assert _sha((s.root / "f.bin").read_bytes()) == _sha(data)
    assert s.count("Create-Session") == 1  # the same session, continued
    assert _resent(s, size) <= max(s.fragment_bytes) + 1


async def test_server_restart_resumes_and_lost_session_starts_again(
    amanager: AsyncManager, server: Callable[..., Awaitable[Server]], tmp_path: Path
) -> None:
    s = await server()
    size = 2 * 1024 * 1024
    path, data = _file(tmp_path, size)
    job = await _upload_job(amanager, s.url("f.bin"), path, max_bandwidth=1024 * 1024, minimum_retry_delay=0)
    await _until(job, lambda i: i.bytes_transferred >= size // 4)
    await s.stop()  # the connection drops; the session stays on the server's disk
    await s.start()
    # The upload goes on with the new server. (Waiting for more acknowledged bytes instead was often met
    # at once, and a stop a few ms after a start orphaned a connection the server had accepted but not
    # yet set up: the client's Ping on it waited for an answer until the test gave up.)
    fragments = s.count("Fragment")
    await _until(job, lambda _: s.count("Fragment") > fragments)
    assert s.count("Create-Session") == 1 and _resent(s, size) <= max(s.fragment_bytes) + 1
    await s.stop()
    shutil.rmtree(s.root / "BITS-Sessions")  # the server forgot the session (expired, or another machine)
    await s.start()
    assert await job.wait(30) == JobState.TRANSFERRED, (await job.info()).error
    await job.complete()
    assert s.count("Create-Session") == 2
    assert _sha((s.root / "f.bin").read_bytes()) == _sha(data)


@pytest.mark.parametrize("host_id", [None, "localhost"])
async def test_upload_answers_a_digest_challenge_with_the_jobs_credentials(
    amanager: AsyncManager, server: Callable[..., Awaitable[Server]], tmp_path: Path, host_id: str | None
) -> None:
    """A server that wants Digest on every packet: the Ping meets the challenge, the later packets (fragments
    paced by a bandwidth cap, whose bodies could not be sent twice) answer it at once. A BITS-Host-Id server
    (localhost) is a server of the same farm: the credentials answer its own challenge too, met by a Ping."""
    s = await server(digest_account=("erin", "digest-pw"), **({} if host_id is None else {"host_id": host_id}))
    path, data = _file(tmp_path, 600_000)
    job = await amanager.create_job("digest", JobType.UPLOAD, priority=JobPriority.FOREGROUND)
    await job.add_file(s.url("f.bin"), path)
    await job.set_properties(max_bandwidth=1024 * 1024)
    await job.set_credentials(AuthTarget.SERVER, AuthScheme.DIGEST, "erin", "digest-pw")
    await job.resume()
    assert await job.wait(30) == JobState.TRANSFERRED, (await job.info()).error
    await job.complete()
    assert _sha((s.root / "f.bin").read_bytes()) == _sha(data)
    assert s.count("Ping") >= 2 and s.count("Fragment") >= 2  # the first Ping met the challenge
    if host_id is not None:
        farm_node = f"{host_id}:{s.port}"
        assert ("Fragment", farm_node) in s.hosts and ("Close-Session", farm_node) in s.hosts


async def test_packets_after_create_session_go_to_the_servers_host_id(
    amanager: AsyncManager, server: Callable[..., Awaitable[Server]], tmp_path: Path
) -> None:
    """create-session.md: the client replaces the server portion of the URL with BITS-Host-Id on all
    later packets (here the same server under the name localhost)."""
    s = await server(host_id="localhost")
    path, data = _file(tmp_path, 300_000)
    job = await _upload_job(amanager, s.url("f.bin"), path)
    assert await job.wait(30) == JobState.TRANSFERRED, (await job.info()).error
    await job.complete()
    assert _sha((s.root / "f.bin").read_bytes()) == _sha(data)
    own, farm_node = f"127.0.0.1:{s.port}", f"localhost:{s.port}"
    assert s.hosts[:2] == [("Ping", own), ("Create-Session", own)]
    assert {host for _, host in s.hosts[2:]} == {farm_node} and s.hosts[-1][0] == "Close-Session"


async def test_an_unreachable_host_id_falls_back_to_the_urls_host_after_its_timeout(
    amanager: AsyncManager, server: Callable[..., Awaitable[Server]], tmp_path: Path
) -> None:
    """BITS-Host-Id-Fallback-Timeout: a host id nothing answers on (127.0.0.2) is tried for 1 s; then the
    packets go to the URL's host, which continues the same session."""
    s = await server(host_id="127.0.0.2", host_id_fallback_timeout=1)
    path, data = _file(tmp_path, 300_000)
    job = await _upload_job(amanager, s.url("f.bin"), path, minimum_retry_delay=0)
    assert await job.wait(30) == JobState.TRANSFERRED, (await job.info()).error
    assert (await job.info()).error_count >= 1  # the connections to 127.0.0.2 failed first
    await job.complete()
    assert _sha((s.root / "f.bin").read_bytes()) == _sha(data)
    assert s.count("Create-Session") == 1


async def test_upload_reply_goes_through_the_jobs_proxy_with_its_credentials(
    amanager: AsyncManager, server: Callable[..., Awaitable[Server]], backend: UploadApp, tmp_path: Path
) -> None:
    """SetProxySettings and PROXY credentials hold for every packet of an upload and for its reply download."""
    s = await server(notification_type=1, notification_url=backend.url("/echo"))
    path, data = _file(tmp_path, 300_000)
    proxy = ForwardProxy(accounts={"carol": "proxy-pw"})
    try:
        job = await _proxied(amanager, JobType.UPLOAD_REPLY, s.url("f.bin"), path, proxy.url,
                             (AuthScheme.BASIC, "carol", "proxy-pw"))
        assert await job.reply_data() == b"reply:" + data  # the backend echoes what the server received
        await job.complete()
    finally:
        proxy.stop()
    credential = "Basic " + base64.b64encode(b"carol:proxy-pw").decode()
    answered = [(method, target) for method, target, auth in proxy.requests if auth == credential]
    # Ping, Create-Session, Fragment(s) and Close-Session to the upload server; the reply's GET
    assert sum(method == "BITS_POST" and target == s.url("f.bin") for method, target in answered) >= 4
    assert any(method == "GET" for method, _ in answered)


@pytest.mark.skipif(not nginx.available(), reason="nginx is not installed (make test installs it)")
async def test_upload_answers_the_servers_basic_challenge_with_the_jobs_credentials(
    amanager: AsyncManager, server: Callable[..., Awaitable[Server]], tmp_path: Path
) -> None:
    """An upload server behind nginx's auth_basic: SERVER credentials get the file there; without them,
    ERROR with the 401 (a refusal the job cannot outwait)."""
    s = await server()
    path, data = _file(tmp_path, 200_000)
    users = tmp_path / "htpasswd"
    users.write_text("dave:{PLAIN}upload-pw\n")
    guarded = _PROXY_LOCATION.format(upstream=s.port).replace(
        "proxy_pass", f'auth_basic "uploads"; auth_basic_user_file {users}; proxy_pass')
    with nginx.NginxServer(tmp_path / "www", locations=guarded) as front:
        anonymous = await _upload_job(amanager, front.url("uploads/anon.bin"), path)
        assert await anonymous.wait(30) == JobState.ERROR
        error = await anonymous.error()
        assert error is not None and error.code == ErrorCode.http(401) and error.context == ErrorContext.REMOTE_FILE
        job = await amanager.create_job("authorized", JobType.UPLOAD, priority=JobPriority.FOREGROUND)
        await job.add_file(front.url("uploads/f.bin"), path)
        await job.set_credentials(AuthTarget.SERVER, AuthScheme.BASIC, "dave", "upload-pw")
        await job.resume()
        assert await job.wait(30) == JobState.TRANSFERRED, (await job.info()).error
        await job.complete()
    assert _sha((s.root / "f.bin").read_bytes()) == _sha(data)
    assert not (s.root / "anon.bin").exists()


@pytest.mark.skipif(not nginx.available(), reason="nginx is not installed (make test installs it)")
async def test_upload_through_nginx(
    amanager: AsyncManager, server: Callable[..., Awaitable[Server]], tmp_path: Path
) -> None:
    s = await server()
    path, data = _file(tmp_path, 5 * 1024 * 1024 + 1)
    with _proxying_nginx(s.port) as proxy:
        job = await _upload_job(amanager, proxy.url("uploads/f.bin"), path)
        assert await job.wait(30) == JobState.TRANSFERRED, (await job.info()).error
        await job.complete()
    assert _sha((s.root / "f.bin").read_bytes()) == _sha(data)


@pytest.mark.skipif(not nginx.available(), reason="nginx is not installed (make test installs it)")
async def test_upload_over_https_takes_the_jobs_tls_settings(
    amanager: AsyncManager, server: Callable[..., Awaitable[Server]], tls_servers: TlsServers, tmp_path: Path
) -> None:
    """nginx on the private CA's certificate, wanting a client certificate, in front of the upload server: the
    job's CA file, security flags and client certificate count for its packets as for a download's requests."""
    s = await server()
    issued = tls_servers.ca.issue("uploads")
    port = nginx.free_port()
    block = (f"    server {{\n        listen 127.0.0.1:{port} ssl;\n        ssl_certificate {issued.cert};\n"
             f"        ssl_certificate_key {issued.key};\n        ssl_verify_client on;\n"
             f"        ssl_client_certificate {tls_servers.ca.cert};\n"
             + _PROXY_LOCATION.format(upstream=s.port) + "        root /nonexistent;\n    }\n")
    own = tmp_path / "own"
    own.mkdir()
    ca, client = own / "ca.pem", own / "client.pem"
    ca.write_bytes(tls_servers.ca.cert.read_bytes())
    client.write_bytes(tls_servers.client.pem())
    client.chmod(0o600)
    path, data = _file(tmp_path, 300 * 1024 + 3)
    url = f"https://localhost:{port}/uploads/"
    with nginx.NginxServer(tempfile.mkdtemp(prefix="openbits-www-"), servers=block):
        async def upload(name: str, **props: object) -> tuple[AsyncJob, JobInfo]:
            job = await _upload_job(amanager, url + name, path, **props)
            await job.wait(30)
            return job, await job.info()

        _, untrusted = await upload("a.bin")  # the system store alone does not know the private CA
        assert untrusted.state == JobState.ERROR and untrusted.error is not None
        assert untrusted.error.name == "ERROR_WINHTTP_SECURE_INVALID_CA", untrusted.error
        _, anonymous = await upload("b.bin", ca_file=str(ca))  # trusted, but no client certificate: nginx's 400
        assert anonymous.state == JobState.ERROR and anonymous.error is not None
        assert anonymous.error.name == "BG_E_HTTP_ERROR_400", anonymous.error
        for name, props in (("c.bin", {"ca_file": str(ca)}), ("d.bin", {"security_flags": int(SecurityFlags.SSL_IGNORE_UNKNOWN_CA)})):
            job = await amanager.create_job("tls-up", JobType.UPLOAD, priority=JobPriority.FOREGROUND)
            await job.add_file(url + name, path)
            await job.set_properties(**props)
            await job.set_client_certificate(path=client)
            await job.resume()
            assert await job.wait(30) == JobState.TRANSFERRED, (await job.info()).error
            await job.complete()
            assert _sha((s.root / name).read_bytes()) == _sha(data)


async def test_upload_through_an_ntlm_proxy(amanager: AsyncManager, server: Callable[..., Awaitable[Server]],
                                            squid_ntlm: SquidProxy, tmp_path: Path) -> None:
    """Squid wanting NTLM: the Ping takes the logon's legs, the fragments follow on the connection it authenticated."""
    s = await server()
    path, data = _file(tmp_path, 3 * 1024 * 1024 + 1)
    squid_ntlm.add_user("uploader", "up-pw")
    job = await _proxied(amanager, JobType.UPLOAD, s.url("n.bin"), path, squid_ntlm.url,
                         (AuthScheme.NTLM, "OPENBITS\\uploader", "up-pw"))
    await job.complete()
    assert _sha((s.root / "n.bin").read_bytes()) == _sha(data)
    taken = [(user, status, method) for user, status, method, url in squid_ntlm.users() if url == s.url("n.bin")]
    assert ("uploader", "200", "BITS_POST") in taken
    assert sum(status == "407" for _, status, _ in taken) <= 2, taken  # the logon's legs, then no more challenges
