"""The download transports against real servers, sockets and files (no mocks)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import pytest

from openbits.enums import SIZE_UNKNOWN, ErrorContext
from openbits.errors import ErrorCode, TransferError
from openbits.pools import Pools
from openbits.transport import DURABLE_STEP, DownloadSpec, HttpTransport, RemoteValidator, copy_local

from .servers.faulty import FaultyServer, Request, content, sha256
from .servers.nginx import NginxServer


class Sink:
    """Plays the core: records every call and checks the durable offsets never run ahead of the file."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.starts: list[tuple[RemoteValidator, int]] = []
        self.progress: list[int] = []
        self.durables: list[int] = []
        self.exchanges: list[tuple[str, str]] = []

    @property
    def durable_offset(self) -> int:
        return self.durables[-1] if self.durables else 0

    def started(self, validator: RemoteValidator, offset: int) -> None:
        self.starts.append((validator, offset))

    def received(self, offset: int) -> None:
        self.progress.append(offset)

    def exchanged(self, request: str, response: str, headers: Mapping[str, str]) -> None:
        self.exchanges.append((request, response))

    def durable(self, offset: int) -> None:
        assert offset <= os.fstat(self.fd).st_size
        assert not self.durables or offset >= self.durables[-1] or self.starts[-1][1] == 0
        self.durables.append(offset)


class Harness:
    """One temporary file and a transport; `get()` runs one attempt as the core would."""

    def __init__(self, transport: HttpTransport, path: Path) -> None:
        self.transport = transport
        self.path = path
        self.sink: Sink | None = None

    async def get(
        self,
        url: str,
        offset: int = 0,
        validator: RemoteValidator | None = None,
        headers: dict[str, str] | None = None,
        dynamic: bool = False,
    ) -> RemoteValidator:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, offset)
            self.sink = Sink(fd)
            spec = DownloadSpec(url, offset, validator, headers or {}, dynamic)
            return await self.transport.download(spec, fd, self.sink)
        finally:
            os.close(fd)

    async def fail(self, url: str, **kwargs: object) -> TransferError:
        with pytest.raises(TransferError) as info:
            await self.get(url, **kwargs)  # type: ignore[arg-type]
        return info.value

    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


@pytest.fixture(params=[True, False], ids=["fastget", "aiohttp"])
async def http(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """Every case runs on both download paths: the lean fast path and aiohttp, which takes the rest."""
    transport = HttpTransport(read_timeout=1.0, fast_path=request.param)
    try:
        yield Harness(transport, tmp_path / "download.tmp")
    finally:
        await transport.aclose()


@pytest.fixture
def faulty() -> Iterator[FaultyServer]:
    """A server per case: each case runs on both paths, and `fail=K` counts requests per server."""
    with FaultyServer() as server:
        yield server


def requests_for(server: FaultyServer, path_qs: str) -> list[Request]:
    return [r for r in server.requests if r.path_qs == "/" + path_qs]


async def test_download_whole_file(http: Harness, faulty: FaultyServer) -> None:
    path = "whole?size=300k"
    validator = await http.get(faulty.url(path), headers={"X-Job": "42"})
    assert http.sha256() == sha256(path)
    assert validator.size == 300 * 1024 and validator.etag and validator.last_modified
    assert http.sink is not None and http.sink.starts == [(validator, 0)]
    assert http.sink.durables[-1] == validator.size and http.sink.progress[-1] == validator.size
    (request,) = requests_for(faulty, path)
    assert request.headers["X-Job"] == "42" and request.headers["Accept-Encoding"] == "identity"
    assert request.range is None and request.headers["User-Agent"].startswith("openbits/")


@pytest.mark.parametrize(("etag", "if_range_from"), [("strong", "etag"), ("weak", "last_modified"), ("none", "last_modified")])
async def test_resume_sends_validated_range(http: Harness, faulty: FaultyServer, etag: str, if_range_from: str) -> None:
    path = f"resume-{etag}?size=200k&etag={etag}"
    validator = await http.get(faulty.url(path))
    half = 77_777
    http.path.write_bytes(content(path)[:half])
    sent_before = faulty.bytes_sent
    assert await http.get(faulty.url(path), half, validator) == validator
    assert http.sha256() == sha256(path)
    request = requests_for(faulty, path)[-1]
    assert (request.status, request.range, request.if_range) == (206, f"bytes={half}-", getattr(validator, if_range_from))
    assert faulty.bytes_sent - sent_before == validator.size - half
    assert http.sink is not None and http.sink.starts[-1] == (validator, half)


async def test_drop_mid_body_is_transient_and_resumes(http: Harness, faulty: FaultyServer) -> None:
    path = "drop?size=1m&drop=300000&fail=1"
    error = await http.fail(faulty.url(path))
    assert error.transient and error.code == ErrorCode.ERROR_INTERNET_CONNECTION_RESET
    assert error.context == ErrorContext.GENERAL_TRANSPORT and faulty.url(path) in error.description
    assert http.sink is not None
    first = requests_for(faulty, path)[0]
    durable, validator = http.sink.durable_offset, http.sink.starts[0][0]
    assert 0 < durable <= first.bytes_sent == 300000
    await http.get(faulty.url(path), durable, validator)
    assert http.sha256() == sha256(path)
    assert requests_for(faulty, path)[1].bytes_sent == 1024 * 1024 - durable


async def test_changed_remote_restarts_from_zero(http: Harness, faulty: FaultyServer) -> None:
    path = "changing?size=200k&changing=1&fail=1&drop=50000"
    await http.fail(faulty.url(path))
    assert http.sink is not None
    old, durable = http.sink.starts[0][0], http.sink.durable_offset
    new = await http.get(faulty.url(path), durable, old)
    assert new.etag != old.etag and http.sink.starts == [(new, 0)]
    assert http.sha256() == sha256(path) and http.path.stat().st_size == new.size
    assert requests_for(faulty, path)[1].status == 200


async def test_server_without_ranges_restarts_from_zero(http: Harness, faulty: FaultyServer) -> None:
    path = "noranges?size=200k&ranges=0"
    validator = await http.get(faulty.url(path))
    http.path.write_bytes(b"\0" * 1000)  # wrong bytes: they must be overwritten, not kept
    await http.get(faulty.url(path), 1000, validator)
    assert http.sink is not None and http.sink.starts[-1][1] == 0
    assert http.sha256() == sha256(path)


async def test_wrong_content_range_restarts_once(http: Harness, faulty: FaultyServer) -> None:
    path = "badrange?size=100k&bad_range=1"
    validator = await http.get(faulty.url(path))
    http.path.write_bytes(content(path)[:5000])
    await http.get(faulty.url(path), 5000, validator)
    assert http.sha256() == sha256(path)
    assert [r.range for r in requests_for(faulty, path)[1:]] == ["bytes=5000-", None]


async def test_wrong_content_range_that_persists_is_permanent(http: Harness, faulty: FaultyServer) -> None:
    path = "badrange-always?size=100k&bad_range=always"
    validator = RemoteValidator(100 * 1024, None, None)
    error = await http.fail(faulty.url(path), offset=5000, validator=validator)
    assert error.code == ErrorCode.BG_E_INSUFFICIENT_RANGE_SUPPORT and not error.transient
    assert len(requests_for(faulty, path)) == 2


async def test_offset_at_end_completes_without_body(http: Harness, faulty: FaultyServer) -> None:
    """A crash after the last durable byte but before completion: 416 for the empty range means done."""
    path = "complete?size=10k"
    validator = await http.get(faulty.url(path))
    assert await http.get(faulty.url(path), validator.size, validator) == validator
    assert requests_for(faulty, path)[-1].status == 416 and http.sha256() == sha256(path)


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [(500, None, None), (503, "7", 7.0), (429, "120", 120.0), (408, None, None), (503, "date:30", 30.0)],
)
async def test_retryable_statuses(
    http: Harness, faulty: FaultyServer, status: int, retry_after: str | None, expected: float | None
) -> None:
    path = f"status?status={status}" + (f"&retry_after={retry_after}" if retry_after else "")
    error = await http.fail(faulty.url(path))
    assert error.transient and error.code == ErrorCode.http(status) and error.http_status == status
    if expected is None:
        assert error.retry_after is None
    else:
        assert error.retry_after is not None and expected - 2 <= error.retry_after <= expected


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410])
async def test_permanent_statuses(http: Harness, faulty: FaultyServer, status: int) -> None:
    error = await http.fail(faulty.url(f"status?status={status}"))
    assert not error.transient and error.code == ErrorCode.http(status) and error.http_status == status
    assert error.context == ErrorContext.REMOTE_FILE and faulty.url(f"status?status={status}") in error.description


async def test_redirects_followed_with_custom_headers(http: Harness, faulty: FaultyServer) -> None:
    path = "redirected?size=20k&redirect=3"
    await http.get(faulty.url(path), headers={"X-Custom": "yes"})
    assert http.sha256() == sha256(path)
    hops = [r for r in faulty.requests if r.path_qs.startswith("/redirected?")]
    assert len(hops) == 4 and all(r.headers.get("X-Custom") == "yes" for r in hops)


async def test_redirect_loop_is_permanent(http: Harness, faulty: FaultyServer) -> None:
    error = await http.fail(faulty.url("loop?redirect=loop"))
    assert error.code == ErrorCode.ERROR_HTTP_REDIRECT_FAILED and not error.transient


async def test_no_content_length_reports_size_at_end(http: Harness, faulty: FaultyServer) -> None:
    path = "chunked?size=150k&chunked=1"
    validator = await http.get(faulty.url(path))
    assert validator.size == 150 * 1024 and http.sha256() == sha256(path)
    assert http.sink is not None and http.sink.starts[0][0].size == SIZE_UNKNOWN


async def test_chunked_body_cut_short_is_transient(http: Harness, faulty: FaultyServer) -> None:
    error = await http.fail(faulty.url("chunked-drop?size=150k&chunked=1&drop=1000"))
    assert error.transient and error.code == ErrorCode.ERROR_INTERNET_CONNECTION_RESET


async def test_stalled_body_times_out(http: Harness, faulty: FaultyServer) -> None:
    error = await http.fail(faulty.url("stall?size=100k&stall=5&stall_at=4096"))
    assert error.transient and error.code == ErrorCode.ERROR_INTERNET_TIMEOUT
    assert http.sink is not None and http.sink.durable_offset == 4096


@pytest.mark.parametrize(("fault", "code"), [("drop=9000000", ErrorCode.ERROR_INTERNET_CONNECTION_RESET),
                                           ("stall=3&stall_at=9000000", ErrorCode.ERROR_INTERNET_TIMEOUT)])
async def test_faults_in_a_large_body(http: Harness, faulty: FaultyServer, fault: str, code: ErrorCode) -> None:
    """Past fastget.SPLICE_MIN the fast path splices the body into the file: faults there end the same way."""
    path = f"large-fault?size=12m&fail=1&{fault}"
    error = await http.fail(faulty.url(path))
    assert error.transient and error.code == code and error.context == ErrorContext.GENERAL_TRANSPORT
    assert http.sink is not None
    durable, validator = http.sink.durable_offset, http.sink.starts[0][0]
    assert 0 < durable <= 9000000 and http.path.stat().st_size >= durable
    await http.get(faulty.url(path), durable, validator)
    assert http.sha256() == sha256(path)


async def test_cancelled_download_reports_what_it_wrote(http: Harness, faulty: FaultyServer) -> None:
    """The core suspends a job by cancelling its task: the bytes so far are made durable first."""
    task = asyncio.create_task(http.get(faulty.url("cancel?size=1m&trickle=5")))
    while http.sink is None or not http.sink.progress:
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 0 < http.sink.durable_offset == http.path.stat().st_size


async def test_connections_are_reused(http: Harness, faulty: FaultyServer) -> None:
    for name in ("reuse-a?size=10k", "reuse-b?size=10k"):
        await http.get(faulty.url(name))
    assert requests_for(faulty, "reuse-a?size=10k")[0].peer == requests_for(faulty, "reuse-b?size=10k")[0].peer


async def test_dynamic_content_never_asks_for_ranges(http: Harness, faulty: FaultyServer) -> None:
    path = "dynamic?size=50k"
    validator = await http.get(faulty.url(path))
    await http.get(faulty.url(path), 1000, validator, dynamic=True)
    assert requests_for(faulty, path)[-1].range is None and http.sha256() == sha256(path)


async def test_connection_refused_is_transient(http: Harness) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    error = await http.fail(f"http://127.0.0.1:{port}/x")
    assert error.transient and error.code == ErrorCode.ERROR_INTERNET_CANNOT_CONNECT
    assert error.context == ErrorContext.GENERAL_TRANSPORT


async def test_unsupported_scheme(http: Harness) -> None:
    error = await http.fail("ftp://example.com/file")
    assert error.code == ErrorCode.BG_E_PROTOCOL_NOT_AVAILABLE and not error.transient


async def test_credentials_never_in_descriptions(http: Harness, faulty: FaultyServer) -> None:
    url = faulty.url("secret?status=404").replace("http://", "http://alice:hunter2@")
    error = await http.fail(url)
    assert "hunter2" not in error.description and "alice" not in error.description


async def test_disk_full_is_a_local_error(faulty: FaultyServer) -> None:
    transport = HttpTransport()
    fd = os.open("/dev/full", os.O_RDWR)
    try:
        sink = Sink(fd)
        spec = DownloadSpec(faulty.url("full?size=10k"), 0, None, {})
        with pytest.raises(TransferError) as info:
            await transport.download(spec, fd, sink)
    finally:
        os.close(fd)
        await transport.aclose()
    assert info.value.code == ErrorCode.ERROR_DISK_FULL and info.value.context == ErrorContext.LOCAL_FILE
    assert not info.value.transient


async def test_durable_offsets_follow_fdatasync_steps(http: Harness, faulty: FaultyServer) -> None:
    """Large files become durable step by step while they arrive, not only at the end."""
    path = "large?size=20m"
    validator = await http.get(faulty.url(path))
    assert http.sink is not None and http.sha256() == sha256(path)
    durables = http.sink.durables
    assert durables == sorted(durables) and durables[-1] == validator.size
    assert len(durables) >= 2 and durables[0] >= DURABLE_STEP
    assert len(http.sink.progress) <= 2 + 20  # a few reports a second, not one per chunk


async def test_throttle_sees_every_byte(http: Harness, faulty: FaultyServer) -> None:
    class Counting:
        total = 0

        async def consume(self, nbytes: int) -> None:
            Counting.total += nbytes
            await asyncio.sleep(0)

    path = "throttled?size=100k"
    fd = os.open(http.path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await http.transport.download(DownloadSpec(faulty.url(path), 0, None, {}), fd, Sink(fd), Counting())
    finally:
        os.close(fd)
    assert Counting.total == 100 * 1024


async def test_nginx_resume(http: Harness, nginx: NginxServer) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    (nginx.root / "blob.bin").write_bytes(data)
    validator = await http.get(nginx.url("blob.bin"))
    assert validator.size == len(data) and validator.etag
    http.path.write_bytes(data[:1_000_000])
    assert await http.get(nginx.url("blob.bin"), 1_000_000, validator) == validator
    assert http.sink is not None and http.sink.starts == [(validator, 1_000_000)]
    assert http.path.read_bytes() == data
    assert await http.get(nginx.url("blob.bin"), len(data), validator) == validator  # 416 with an HTML body
    assert http.path.read_bytes() == data


async def _copy(src: Path, dst: Path, offset: int, validator: RemoteValidator | None) -> tuple[RemoteValidator, Sink]:
    src_fd = os.open(src, os.O_RDONLY)
    dst_fd = os.open(dst, os.O_RDWR | os.O_CREAT, 0o600)
    pools = Pools()
    try:
        os.ftruncate(dst_fd, offset)
        sink = Sink(dst_fd)
        result = await copy_local(src_fd, dst_fd, offset, sink, validator=validator, pools=pools)
        return result, sink
    finally:
        pools.shutdown()
        os.close(src_fd)
        os.close(dst_fd)


async def test_file_copy_and_resume(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    data = os.urandom(3 * 1024 * 1024 + 5)
    src.write_bytes(data)
    validator, sink = await _copy(src, dst, 0, None)
    assert dst.read_bytes() == data and validator.size == len(data) and sink.durables[-1] == len(data)
    dst.write_bytes(data[:100])
    _, sink = await _copy(src, dst, 100, validator)
    assert sink.starts == [(validator, 100)] and dst.read_bytes() == data
    os.utime(src, ns=(0, 10**18))  # the source changed: the copy starts over
    new, sink = await _copy(src, dst, 100, validator)
    assert new != validator and sink.starts == [(new, 0)] and dst.read_bytes() == data
