"""Conformance tests of openbits-server, written from the BITS upload protocol pages.

They speak raw HTTP (aiohttp's client with the BITS_POST verb and explicit
headers, or bare sockets where a client library would tidy the URL), never
an openbits client, so they check the wire and not our own reading of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy
from yarl import URL

from openbits.server import (
    BitsAppRunner,
    NotificationType,
    ServerSettings,
    VirtualDirectory,
    load_settings,
    make_upload_app,
)
from openbits.server.notify import notification_target
from openbits.uploadprotocol import (
    PROTOCOL_BITS_1_5,
    ContentRange,
    Header,
    format_content_range,
    parse_content_range,
    parse_hex,
)

from .servers import nginx
from .servers.thread import serve_app
from .servers.uploadapp import STATIC_REPLY, UploadApp

OTHER_PROTOCOL = "{00000000-0000-0000-0000-000000000000}"


@dataclass
class Ack:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def received(self) -> int:
        return int(self.headers[Header.RECEIVED_CONTENT_RANGE])

    @property
    def error(self) -> tuple[int, int]:
        return parse_hex(self.headers[Header.ERROR_CODE]), parse_hex(self.headers[Header.ERROR_CONTEXT])


@dataclass
class Bits:
    """Raw BITS packets against one running server."""

    http: aiohttp.ClientSession
    base: str
    runner: BitsAppRunner | None = None

    async def stop(self) -> None:
        """Stop the server the way a service manager would (SIGTERM: a graceful shutdown)."""
        assert self.runner is not None
        await self.runner.cleanup()
        self.runner = None

    async def send(self, path: str, packet: str, headers: dict[str, str] | None = None, data: bytes | None = None) -> Ack:
        all_headers = {Header.PACKET_TYPE: packet, **(headers or {})}
        async with self.http.request("BITS_POST", self.base + path, headers=all_headers, data=data) as resp:
            ack = Ack(resp.status, resp.headers, await resp.read())
        assert ack.headers[Header.PACKET_TYPE] == "Ack"
        assert int(ack.headers["Content-Length"]) == len(ack.body)
        if ack.status in (200, 201):
            assert Header.ERROR_CODE not in ack.headers and Header.ERROR_CONTEXT not in ack.headers
        else:
            assert Header.ERROR_CODE in ack.headers and Header.ERROR_CONTEXT in ack.headers
        return ack

    async def create(self, path: str) -> str:
        ack = await self.send(path, "Create-Session", {Header.SUPPORTED_PROTOCOLS: PROTOCOL_BITS_1_5})
        assert ack.status == 200, ack.body
        return ack.headers[Header.SESSION_ID]

    async def fragment(self, path: str, sid: str, data: bytes, first: int, total: int) -> Ack:
        headers = {
            Header.SESSION_ID: sid,
            Header.CONTENT_RANGE: format_content_range(first, first + len(data) - 1, total),
        }
        return await self.send(path, "Fragment", headers, data)

    async def upload(self, path: str, data: bytes, size: int = 1000) -> tuple[str, Ack]:
        """Create a session and send every fragment; the last Ack is returned."""
        sid = await self.create(path)
        ack = None
        for first in range(0, len(data), size):
            ack = await self.fragment(path, sid, data[first : first + size], first, len(data))
            assert ack.status == 200, ack.body
            assert ack.received == min(first + size, len(data))
        assert ack is not None
        return sid, ack

    async def close(self, path: str, sid: str) -> Ack:
        return await self.send(path, "Close-Session", {Header.SESSION_ID: sid})


Start = Callable[..., Awaitable[Bits]]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    """start(**vdir_settings) -> Bits against a fresh server for tmp_path/root (same dirs each call)."""
    servers: list[Bits] = []
    http = aiohttp.ClientSession()
    (tmp_path / "root").mkdir()

    async def _start(*, cleanup_interval: float = 3600, sync_bytes: int = 16 << 20, **vdir: object) -> Bits:
        settings = ServerSettings(
            vdirs=(VirtualDirectory(prefix="/", directory=tmp_path / "root", **vdir),),  # type: ignore[arg-type]
            cleanup_interval=cleanup_interval,
            sync_bytes=sync_bytes,
        )
        runner, port = await serve_app(make_upload_app(settings), runner=BitsAppRunner)
        servers.append(Bits(http, f"http://127.0.0.1:{port}", runner))
        return servers[-1]

    yield _start
    await http.close()
    for server in servers:
        if server.runner is not None:
            await server.stop()


@pytest.fixture
async def bits(start: Start) -> Bits:
    return await start()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
async def backend() -> AsyncIterator[UploadApp]:
    app = await UploadApp().start()
    yield app
    await app.stop()


async def raw(port: int, request: bytes) -> tuple[int, bytes]:
    """One request on a bare socket (no client library normalising the target); status and whole reply."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    reply = await reader.read()
    writer.close()
    return int(reply.split(b" ", 2)[1]), reply


def _port(bits: Bits) -> int:
    return int(bits.base.rsplit(":", 1)[1])


DATA = os.urandom(2500)


# ---------------------------------------------------------------- uploadprotocol


def test_content_range_parse_and_format() -> None:
    assert parse_content_range("bytes 0-99/1000") == ContentRange(0, 99, 1000)
    assert parse_content_range("Bytes 900-999/1000").completes
    assert parse_content_range("bytes */0") == ContentRange(0, -1, 0)
    assert format_content_range(128, 212, 300) == "bytes 128-212/300"
    for bogus in ("", "bytes", "bytes 5-4/10", "bytes 0-10/10", "bytes -1-5/10", "bytes 0-5", "items 0-5/10", "bytes 0-5/10 x"):
        with pytest.raises(ValueError):
            parse_content_range(bogus)


def test_notification_url_relative_and_query() -> None:
    original = URL("http://front/vdir/sub/file.asp?ACCOUNT=86433")
    assert str(notification_target("http://other/v2/bag.asp", original)) == "http://other/v2/bag.asp?ACCOUNT=86433"
    assert str(notification_target("myasp.asp", URL("http://myserver/myvdir/file.txt"))) == "http://myserver/myvdir/myasp.asp"


def test_load_settings(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text(
        'cleanup_interval = 60\n[vdir."/up/"]\ndirectory = "%s"\nmax_upload_size = 10\n'
        'notification_type = 2\nnotification_url = "app"\n' % tmp_path
    )
    settings = load_settings(config, root=tmp_path / "root")
    assert settings.cleanup_interval == 60 and [v.prefix for v in settings.vdirs] == ["/up", "/"]
    vdir, rest = settings.lookup("/up/a/b.txt") or (None, "")
    assert vdir is not None and vdir.max_upload_size == 10 and rest == "a/b.txt"
    assert vdir.notification_type is NotificationType.BY_VALUE and vdir.session_timeout == 1209600
    assert settings.lookup("/upper.txt") == (settings.vdirs[1], "upper.txt")
    config.write_text('[vdir."/"]\ndirectory = "/x"\nmax_upload_sise = 1\n')
    with pytest.raises(ValueError, match="max_upload_sise"):
        load_settings(config)


@pytest.mark.parametrize(("setting", "said"), [
    ('[vdir."/"]\ndirectory = "/x"\nfragment_limit = "big"', "vdir /: fragment_limit = 'big' must be a whole number"),
    ('[vdir."/"]\ndirectory = "/x"\nmax_upload_size = true', "vdir /: max_upload_size = True must be a whole number"),
    ('[vdir."/"]\ndirectory = "/x"\nallow_overwrites = 1', "vdir /: allow_overwrites = 1 must be true or false"),
    ('[vdir."/"]\ndirectory = 5', "vdir /: directory = 5 must be a path"),
    ('[vdir."/"]\ndirectory = "/x"\nnotification_type = "x"', "notification_type = 'x' must be 0, 1 or 2"),
    ('sync_bytes = "1"\n[vdir."/"]\ndirectory = "/x"', "sync_bytes = '1' must be a whole number"),
    ('[storage]\nbackend = "s3"\nbucket = 3\n[vdir."/"]', "[storage]: bucket = 3 must be a string"),
])
def test_a_setting_of_the_wrong_type_is_one_line_that_names_it(tmp_path: Path, setting: str, said: str) -> None:
    config = tmp_path / "server.toml"
    config.write_text(setting + "\n")
    with pytest.raises(ValueError) as refused:
        load_settings(config)
    assert said in str(refused.value)


# ---------------------------------------------------------------- packets


async def test_ping(bits: Bits) -> None:
    ack = await bits.send("/f.txt", "Ping")
    assert ack.status == 200 and ack.body == b""


async def test_ping_and_create_session_tell_the_fragment_limit(start: Start) -> None:
    """OpenBits-Fragment-Limit: 256 MiB unless the vdir says otherwise; fragment_limit = 0 tells nothing."""
    for vdir, told in (({}, str(256 << 20)), ({"fragment_limit": 1 << 20}, str(1 << 20)), ({"fragment_limit": 0}, None)):
        bits = await start(**vdir)
        ping = await bits.send("/f.txt", "Ping")
        created = await bits.send("/f.txt", "Create-Session", {Header.SUPPORTED_PROTOCOLS: PROTOCOL_BITS_1_5})
        assert ping.headers.get(Header.FRAGMENT_LIMIT) == created.headers.get(Header.FRAGMENT_LIMIT) == told
        await bits.stop()
    with pytest.raises(ValueError, match="fragment_limit must not be negative"):
        VirtualDirectory(prefix="/", directory=Path("/srv"), fragment_limit=-1)


async def test_create_session(bits: Bits) -> None:
    supported = f"{OTHER_PROTOCOL} {PROTOCOL_BITS_1_5.upper()}"
    ack = await bits.send("/f.txt", "Create-Session", {Header.SUPPORTED_PROTOCOLS: supported})
    assert ack.status == 200
    assert ack.headers[Header.PROTOCOL] == PROTOCOL_BITS_1_5
    assert ack.headers[Header.ACCEPT_ENCODING] == "Identity"
    assert Header.HOST_ID not in ack.headers
    ids = {ack.headers[Header.SESSION_ID]} | {await bits.create("/f.txt") for _ in range(5)}
    assert len(ids) == 6 and all(len(i) == 38 and i.startswith("{") for i in ids)


async def test_create_session_unsupported_protocol(bits: Bits) -> None:
    for headers in ({Header.SUPPORTED_PROTOCOLS: OTHER_PROTOCOL}, {}):
        ack = await bits.send("/f.txt", "Create-Session", headers)
        assert ack.status == 400
        assert ack.error == (0x80200022, 5)


async def test_host_id(start: Start) -> None:
    bits = await start(host_id="node1.example.com")
    ack = await bits.send("/f.txt", "Create-Session", {Header.SUPPORTED_PROTOCOLS: PROTOCOL_BITS_1_5})
    assert ack.headers[Header.HOST_ID] == "node1.example.com"
    assert ack.headers[Header.HOST_ID_FALLBACK_TIMEOUT] == "86400"


async def test_unexpected_packets_get_400(bits: Bits) -> None:
    for packet in ("Bogus", "Ack", ""):
        ack = await bits.send("/f.txt", packet)
        assert ack.status == 400 and ack.error[1] == 5
    async with bits.http.put(bits.base + "/f.txt", data=b"x") as resp:
        assert resp.status == 405


async def test_upload_file_appears_only_at_close(bits: Bits, root: Path) -> None:
    sid, last = await bits.upload("/f.txt", DATA)
    assert last.received == len(DATA) and Header.REPLY_URL not in last.headers
    assert not (root / "f.txt").exists()
    ack = await bits.close("/f.txt", sid)
    assert ack.status == 200 and ack.headers[Header.SESSION_ID] == sid
    assert (root / "f.txt").read_bytes() == DATA
    assert (await bits.close("/f.txt", sid)).status == 200  # a retried Close-Session
    leftovers = [p.name for p in (root / "BITS-Sessions").rglob("*") if p.is_file()]
    assert leftovers == ["state.json"]


async def test_empty_file(bits: Bits, root: Path) -> None:
    sid = await bits.create("/empty")
    ack = await bits.send("/empty", "Fragment", {Header.SESSION_ID: sid, Header.CONTENT_RANGE: "bytes */0"}, b"")
    assert ack.status == 200 and ack.received == 0
    assert (await bits.close("/empty", sid)).status == 200
    assert (root / "empty").read_bytes() == b""


async def test_duplicate_and_overlapping_fragments(bits: Bits, root: Path) -> None:
    sid = await bits.create("/f.txt")
    assert (await bits.fragment("/f.txt", sid, DATA[:100], 0, 300)).received == 100
    duplicate = await bits.fragment("/f.txt", sid, DATA[:100], 0, 300)
    assert duplicate.status == 200 and duplicate.received == 100
    # 50..149: BITS writes only 100..149 and never overwrites what it has.
    overlap = await bits.fragment("/f.txt", sid, b"X" * 50 + DATA[100:150], 50, 300)
    assert overlap.status == 200 and overlap.received == 150
    assert (await bits.fragment("/f.txt", sid, DATA[150:300], 150, 300)).received == 300
    assert (await bits.close("/f.txt", sid)).status == 200
    assert (root / "f.txt").read_bytes() == DATA[:300]


async def test_gap_is_416_with_received_range(bits: Bits) -> None:
    sid = await bits.create("/f.txt")
    await bits.fragment("/f.txt", sid, DATA[:100], 0, 300)
    ack = await bits.fragment("/f.txt", sid, DATA[200:300], 200, 300)
    assert ack.status == 416 and ack.received == 100
    assert ack.error == (0x801901A0, 5)


async def test_bad_fragments_are_400(bits: Bits) -> None:
    sid = await bits.create("/f.txt")
    await bits.fragment("/f.txt", sid, DATA[:100], 0, 300)
    wrong_total = await bits.fragment("/f.txt", sid, DATA[100:200], 100, 301)
    assert wrong_total.status == 400 and wrong_total.received == 100
    for content_range in ("bytes 100-199", "bytes 199-100/300", "garbage", "bytes 100-399/300", ""):
        ack = await bits.send("/f.txt", "Fragment", {Header.SESSION_ID: sid, Header.CONTENT_RANGE: content_range}, DATA[:100])
        assert ack.status == 400, content_range
    short = {Header.SESSION_ID: sid, Header.CONTENT_RANGE: "bytes 100-199/300"}
    assert (await bits.send("/f.txt", "Fragment", short, DATA[:99])).status == 400
    gzip = {**short, Header.CONTENT_ENCODING: "gzip"}
    assert (await bits.send("/f.txt", "Fragment", gzip, DATA[:100])).status == 400
    assert (await bits.fragment("/f.txt", sid, DATA[100:300], 100, 300)).received == 300


async def test_unknown_session(bits: Bits) -> None:
    for sid in ("{11111111-2222-4333-8444-555555555555}", "../../etc", ""):
        for packet in ("Fragment", "Close-Session", "Cancel-Session"):
            headers = {Header.SESSION_ID: sid, Header.CONTENT_RANGE: "bytes 0-0/1"}
            ack = await bits.send("/f.txt", packet, headers, b"x")
            assert ack.status == 400 and ack.error == (0x8020001F, 5)
    sid = await bits.create("/f.txt")
    assert (await bits.fragment("/g.txt", sid, b"x", 0, 1)).status == 400  # another URL


async def test_cancel_session(bits: Bits, root: Path) -> None:
    sid = await bits.create("/f.txt")
    await bits.fragment("/f.txt", sid, DATA[:100], 0, 300)
    ack = await bits.send("/f.txt", "Cancel-Session", {Header.SESSION_ID: sid})
    assert ack.status == 200 and ack.headers[Header.SESSION_ID] == sid
    assert (await bits.fragment("/f.txt", sid, DATA[100:200], 100, 300)).error[0] == 0x8020001F
    assert not (root / "f.txt").exists() and list((root / "BITS-Sessions").iterdir()) == []


async def test_close_before_last_fragment_deletes_upload(bits: Bits, root: Path) -> None:
    sid = await bits.create("/f.txt")
    await bits.fragment("/f.txt", sid, DATA[:100], 0, 300)
    assert (await bits.close("/f.txt", sid)).status == 400
    assert not (root / "f.txt").exists() and list((root / "BITS-Sessions").iterdir()) == []


async def test_maximum_upload_size(start: Start) -> None:
    bits = await start(max_upload_size=100)
    sid = await bits.create("/f.txt")
    ack = await bits.fragment("/f.txt", sid, DATA[:10], 0, 101)
    assert ack.status == 413 and ack.error == (0x80200020, 5)
    sid, _ = await bits.upload("/g.txt", DATA[:100])


async def test_overwrite_denied_then_allowed(start: Start, root: Path) -> None:
    (root / "f.txt").write_bytes(b"old")
    bits = await start()
    ack = await bits.send("/f.txt", "Create-Session", {Header.SUPPORTED_PROTOCOLS: PROTOCOL_BITS_1_5})
    assert ack.status == 409 and ack.error == (0x80070050, 5)
    # The name is taken between Create-Session and Close-Session: the old file stays.
    sid, _ = await bits.upload("/g.txt", DATA)
    (root / "g.txt").write_bytes(b"raced")
    assert (await bits.close("/g.txt", sid)).status == 409
    assert (root / "g.txt").read_bytes() == b"raced"
    allowing = await start(allow_overwrites=True)
    sid, _ = await allowing.upload("/f.txt", DATA)
    assert (await allowing.close("/f.txt", sid)).status == 200
    assert (root / "f.txt").read_bytes() == DATA


async def test_missing_folder_is_404(bits: Bits) -> None:
    ack = await bits.send("/no/such/f.txt", "Create-Session", {Header.SUPPORTED_PROTOCOLS: PROTOCOL_BITS_1_5})
    assert ack.status == 404 and ack.error == (0x80070003, 5)


async def test_session_timeout_cleanup(start: Start, root: Path) -> None:
    bits = await start(session_timeout=0.3, cleanup_interval=0.1)
    sid = await bits.create("/f.txt")
    await bits.fragment("/f.txt", sid, DATA[:100], 0, 300)
    await asyncio.sleep(0.8)
    assert list((root / "BITS-Sessions").iterdir()) == []
    assert (await bits.fragment("/f.txt", sid, DATA[100:200], 100, 300)).error[0] == 0x8020001F


async def test_session_survives_restart(start: Start, root: Path) -> None:
    first = await start()
    sid = await first.create("/f.txt")
    await first.fragment("/f.txt", sid, DATA[:1000], 0, len(DATA))
    # Bytes not yet fsync'ed are not recorded: after a crash here the client would be told 0.
    state_file = root / "BITS-Sessions" / sid / "state.json"
    assert json.loads(state_file.read_text())["received"] == 0
    await first.stop()  # a graceful stop makes progress durable
    assert json.loads(state_file.read_text())["received"] == 1000
    second = await start()
    duplicate = await second.fragment("/f.txt", sid, DATA[:1000], 0, len(DATA))
    assert duplicate.status == 200 and duplicate.received == 1000
    assert (await second.fragment("/f.txt", sid, DATA[1000:], 1000, len(DATA))).received == len(DATA)
    assert (await second.close("/f.txt", sid)).status == 200
    assert (root / "f.txt").read_bytes() == DATA


# ---------------------------------------------------------------- hostile input


def _bits_post(target: str, packet: str = "Create-Session", extra: str = "") -> bytes:
    return (
        f"BITS_POST {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{Header.PACKET_TYPE}: {packet}\r\n"
        f"{Header.SUPPORTED_PROTOCOLS}: {PROTOCOL_BITS_1_5}\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


async def test_path_traversal_never_leaves_root(start: Start, root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "sub").mkdir()
    (root / "link").symlink_to(outside)
    (root / "evil").symlink_to(outside / "target")
    bits = await start(allow_overwrites=True)
    port = _port(bits)
    for target in (
        "/../x", "/%2e%2e/x", "/sub/%2E%2E/%2e%2e/x", "/sub/..%2f..%2fx", "//etc/passwd", "/%2fetc%2fpasswd",
        "/a%00b", "/link/x", "/link/../x", "/BITS-Sessions/x", "/sub/", "/", "/sub/.", "/a%5c..%5cx",
        "http://127.0.0.1/../../x",  # absolute-form target
    ):
        status, reply = await raw(port, _bits_post(target))
        assert status == 403, (target, reply)
    # A symbolic link as the final name is replaced, never written through.
    sid, _ = await bits.upload("/evil", DATA[:10])
    assert (await bits.close("/evil", sid)).status == 200
    assert list(outside.iterdir()) == [] and not (root / "evil").is_symlink()
    assert (root / "evil").read_bytes() == DATA[:10]


async def test_symlink_planted_after_create_session(bits: Bits, root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "sub").mkdir()
    sid, _ = await bits.upload("/sub/f.txt", DATA[:10])
    (root / "sub").rename(root / "sub.old")
    (root / "sub").symlink_to(outside)
    ack = await bits.close("/sub/f.txt", sid)
    assert ack.status == 403 and list(outside.iterdir()) == []


async def test_huge_headers_and_garbage_do_not_hurt(bits: Bits) -> None:
    port = _port(bits)
    status, _ = await raw(port, _bits_post("/f.txt", extra=f"X-Big: {'a' * 100_000}\r\n"))
    assert 400 <= status < 500
    status, _ = await raw(port, _bits_post("/" + "a" * 100_000))
    assert 400 <= status < 500
    status, _ = await raw(port, b"\x00\xff garbage\r\n\r\n")
    assert status == 400
    many = "".join(f"X-{i}: y\r\n" for i in range(500))
    status, _ = await raw(port, _bits_post("/f.txt", extra=many))
    assert 400 <= status < 500
    assert (await bits.send("/f.txt", "Ping")).status == 200


async def test_concurrent_fragments_of_one_session(bits: Bits, root: Path) -> None:
    sid = await bits.create("/f.txt")
    size = 100
    acks = await asyncio.gather(
        *(bits.fragment("/f.txt", sid, DATA[i : i + size], i, len(DATA)) for i in range(0, len(DATA), size)),
        *(bits.fragment("/f.txt", sid, DATA[:size], 0, len(DATA)) for _ in range(5)),
    )
    assert {a.status for a in acks} <= {200, 416}
    received = max(a.received for a in acks)
    while received < len(DATA):  # whatever came out of order is resent, as a client would
        received = (await bits.fragment("/f.txt", sid, DATA[received : received + size], received, len(DATA))).received
    assert (await bits.close("/f.txt", sid)).status == 200
    assert (root / "f.txt").read_bytes() == DATA


async def test_disk_full(bits: Bits, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sid = await bits.create("/f.txt")
    await bits.fragment("/f.txt", sid, DATA[:100], 0, 300)

    def full(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwritev", full)
    ack = await bits.fragment("/f.txt", sid, DATA[100:200], 100, 300)
    assert ack.status == 507 and ack.error == (0x80070070, 5) and ack.received == 100
    monkeypatch.undo()
    assert (await bits.fragment("/f.txt", sid, DATA[100:300], 100, 300)).received == 300
    assert (await bits.close("/f.txt", sid)).status == 200
    assert (root / "f.txt").read_bytes() == DATA[:300]


# ---------------------------------------------------------------- server applications (upload-reply)


async def test_notification_by_reference(start: Start, root: Path, backend: UploadApp) -> None:
    bits = await start(notification_type=1, notification_url=backend.url("/echo"))
    sid, last = await bits.upload("/f.txt?ACCOUNT=7", DATA)
    reply_url = last.headers[Header.REPLY_URL]
    async with bits.http.get(reply_url) as resp:
        assert resp.status == 200 and await resp.read() == b"reply:" + DATA
    (call,) = backend.calls
    assert call.query == "ACCOUNT=7" and call.body == b""
    assert call.headers[Header.ORIGINAL_REQUEST_URL] == bits.base + "/f.txt?ACCOUNT=7"
    assert Path(call.headers[Header.REQUEST_DATAFILE_NAME]).parent.name == sid
    assert (await bits.close("/f.txt?ACCOUNT=7", sid)).status == 200
    assert not (root / "f.txt").exists()  # no BITS-Copy-File-To-Destination
    async with bits.http.get(reply_url) as resp:
        assert resp.status == 404  # the reply goes with the session


async def test_notification_by_value_with_copy(start: Start, root: Path, backend: UploadApp) -> None:
    bits = await start(notification_type=2, notification_url=backend.url("/echo?copy=1"))
    sid, last = await bits.upload("/f.txt", DATA)
    (call,) = backend.calls
    assert call.body == DATA and Header.REQUEST_DATAFILE_NAME not in call.headers
    async with bits.http.get(last.headers[Header.REPLY_URL]) as resp:
        assert await resp.read() == b"reply:" + DATA
    # The final fragment resent (its Ack was lost) does not notify the application again.
    again = await bits.fragment("/f.txt", sid, DATA[2000:], 2000, len(DATA))
    assert again.status == 200 and again.headers[Header.REPLY_URL] == last.headers[Header.REPLY_URL]
    assert len(backend.calls) == 1
    assert (await bits.close("/f.txt", sid)).status == 200
    assert (root / "f.txt").read_bytes() == DATA


async def test_static_reply_url(start: Start, backend: UploadApp) -> None:
    bits = await start(notification_type=2, notification_url=backend.url("/static"))
    _, last = await bits.upload("/f.txt", DATA)
    assert last.headers[Header.REPLY_URL] == STATIC_REPLY


async def test_application_error_is_remote_application(start: Start, backend: UploadApp) -> None:
    bits = await start(notification_type=1, notification_url=backend.url("/fail"))
    sid = await bits.create("/f.txt")
    ack = await bits.fragment("/f.txt", sid, DATA, 0, len(DATA))
    assert ack.status == 500 and ack.error == (0x801901F4, 7) and ack.received == len(DATA)
    closing = await bits.close("/f.txt", sid)  # still not accepted by the application
    assert closing.status == 500 and closing.error[1] == 7
    unreachable = await start(notification_type=2, notification_url="http://127.0.0.1:9/app")
    sid = await unreachable.create("/g.txt")
    ack = await unreachable.fragment("/g.txt", sid, DATA, 0, len(DATA))
    assert ack.status == 502 and ack.error[1] == 7


# ---------------------------------------------------------------- deployment


async def test_mounted_as_subapp(root: Path) -> None:
    outer = web.Application()
    outer.add_subapp("/bits", make_upload_app(ServerSettings.for_root(root)))
    runner, port = await serve_app(outer, runner=BitsAppRunner)
    try:
        async with aiohttp.ClientSession() as http:
            bits = Bits(http, f"http://127.0.0.1:{port}/bits")
            sid, _ = await bits.upload("/f.txt", DATA)
            assert (await bits.close("/f.txt", sid)).status == 200
    finally:
        await runner.cleanup()
    assert (root / "f.txt").read_bytes() == DATA


@contextlib.asynccontextmanager
async def _cli_server(root: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """openbits-server as a command on a free port: (process, port); killed afterwards if still running."""
    command = [sys.executable, "-m", "openbits.server", "--root", str(root), "--create-root", "--listen", "127.0.0.1:0"]
    proc = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        assert "listening on" in line, line
        yield proc, int(line.rsplit(":", 1)[1])
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_cli_answers_ping(root: Path) -> None:
    async with _cli_server(root) as (proc, port):
        async with aiohttp.ClientSession() as http:
            ack = await Bits(http, f"http://127.0.0.1:{port}").send("/f.txt", "Ping")
            assert ack.status == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_cli_stops_soon_with_a_fragment_still_arriving(root: Path) -> None:
    """SIGTERM with a fragment half sent: the server stops within its grace (5 s), not aiohttp's 60 s."""
    async with _cli_server(root) as (proc, port):
        async with aiohttp.ClientSession() as http:
            sid = await Bits(http, f"http://127.0.0.1:{port}").create("/f.bin")
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        head = (f"BITS_POST /f.bin HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{Header.PACKET_TYPE}: Fragment\r\n"
                f"{Header.SESSION_ID}: {sid}\r\n{Header.CONTENT_RANGE}: bytes 0-999999/1000000\r\n"
                "Content-Length: 1000000\r\n\r\n")
        writer.write(head.encode() + b"x" * 100_000)
        await writer.drain()
        await asyncio.sleep(0.5)
        started = asyncio.get_running_loop().time()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert asyncio.get_running_loop().time() - started < 15
        writer.close()


# tests/servers/nginx.py's configuration, with a reverse proxy where it has its document root.
_PROXY_LOCATION = """\
        location /uploads/ {{
            proxy_pass http://127.0.0.1:{upstream}/;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_request_buffering off;
            client_max_body_size 0;
        }}
"""


def _proxying_nginx(upstream: int) -> nginx.NginxServer:
    """nginx whose server block proxies /uploads/ to the upload server on `upstream`."""
    return nginx.NginxServer(tempfile.mkdtemp(prefix="openbits-www-"), locations=_PROXY_LOCATION.format(upstream=upstream))


@pytest.mark.skipif(not nginx.available(), reason="nginx is not installed (make test installs it)")
async def test_behind_nginx(bits: Bits, root: Path) -> None:
    with _proxying_nginx(_port(bits)) as proxy:
        proxied = Bits(bits.http, proxy.url("uploads"))
        assert (await proxied.send("/f.txt", "Ping")).status == 200
        sid, _ = await proxied.upload("/f.txt", DATA)
        assert (await proxied.close("/f.txt", sid)).status == 200
        assert (await proxied.send("/f.txt", "Bogus")).status == 400
    assert (root / "f.txt").read_bytes() == DATA
