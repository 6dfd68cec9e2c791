"""openbits-server as a farm of stateless nodes on object storage (issue 19), against real components.

OpenStack Swift from Debian's packages as an all-in-one with its S3 API (started once per session), three
openbits-server processes on it behind nginx round-robin, and the openbits daemon uploading through
nginx. Raw BITS packets sent to chosen nodes check what any node must do with any session.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from openbits import AsyncManager
from openbits.client import AsyncJob
from openbits.enums import JobPriority, JobState, JobType
from openbits.server import load_settings
from openbits.server.s3 import PART_MIN, plan_parts
from openbits.server.s3bucket import FragmentBody, Listed, gather_parts
from openbits.server.s3folder import piece_key, read_state, record_key
from openbits.uploadprotocol import Header, new_session_id

from .daemon import DaemonProcess
from .servers import swift as swift_aio
from .servers.farm import Farm, Node, receiving_node, wait_for, write_config
from .servers.swift import SwiftAllInOne
from .servers.uploadapp import UploadApp
from .test_upload_server import Bits

BUCKET = "uploads"
PREFIX = "farm/"
MiB = 1 << 20


class ThreadedUploadApp:
    """tests/servers/uploadapp.py's server application on a loop of its own, for session-scoped nodes."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.app = asyncio.run_coroutine_threadsafe(UploadApp().start(), self._loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.app.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="session")
def swift() -> Iterator[SwiftAllInOne]:
    try:
        swift_aio.ensure_installed()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    with SwiftAllInOne() as store:
        store.make_bucket(BUCKET)
        yield store


@pytest.fixture(scope="session")
def application() -> Iterator[UploadApp]:
    threaded = ThreadedUploadApp()
    yield threaded.app
    threaded.stop()


@pytest.fixture(scope="session")
def farm(swift: SwiftAllInOne, application: UploadApp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    work = tmp_path_factory.mktemp("farm")
    config = write_config(work, swift.endpoint, BUCKET, PREFIX, {
        "/uploads": {"host_id": "node1.example"},  # not sent: the store needs no affinity
        "/reply": {"notification_type": 2, "notification_url": application.url("/echo")},
        "/short": {"session_timeout": 3},
    })
    farm = Farm(work, config).start()
    try:
        yield farm
    finally:
        farm.stop()


@pytest.fixture
def nodes(farm: Farm) -> Iterator[list[Node]]:
    """The farm's nodes, all running again after the test (one may have been killed)."""
    yield farm.nodes
    for node in farm.nodes:
        if node.proc is None or node.proc.poll() is not None:
            node.start()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def amanager(daemon: DaemonProcess) -> AsyncIterator[AsyncManager]:
    async with AsyncManager(daemon.socket, autostart=False) as m:
        yield m


def _stored(swift: SwiftAllInOne, name: str) -> bytes | None:
    client = swift.client()
    try:
        return client.get_object(Bucket=BUCKET, Key=PREFIX + name)["Body"].read()
    except client.exceptions.NoSuchKey:
        return None


def _keys(swift: SwiftAllInOne, prefix: str) -> list[str]:
    listed = swift.client().list_objects_v2(Bucket=BUCKET, Prefix=PREFIX + prefix)
    return [o["Key"] for o in listed.get("Contents", [])]


def _file(tmp_path: Path, size: int, name: str = "up.bin") -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


async def _job(m: AsyncManager, url: str, path: Path, kind: JobType = JobType.UPLOAD, **props: Any) -> AsyncJob:
    job = await m.create_job("farm", kind, priority=JobPriority.FOREGROUND)
    await job.add_file(url, path)
    await job.set_properties(minimum_retry_delay=0, **props)
    await job.resume()
    return job


async def _transferred(job: AsyncJob, timeout: float = 60) -> None:
    assert await job.wait(timeout) == JobState.TRANSFERRED, (await job.info()).error
    await job.complete()


def _sha(data: bytes | None) -> str:
    return hashlib.sha256(data or b"").hexdigest()


# ---------------------------------------------------------------- configuration


def test_credentials_are_refused_in_a_world_readable_toml(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text('[storage]\nbackend = "s3"\nbucket = "b"\naccess_key_id = "k"\nsecret_access_key = "s"\n[vdir."/"]\n')
    config.chmod(0o644)
    with pytest.raises(ValueError, match="world-readable"):
        load_settings(config)
    config.chmod(0o600)
    assert load_settings(config).storage.access_key_id == "k"  # type: ignore[union-attr]
    secrets = tmp_path / "creds.toml"
    secrets.write_text('access_key_id = "k"\nsecret_access_key = "s"\n')
    secrets.chmod(0o640)
    config.write_text(f'[storage]\nbackend = "s3"\nbucket = "b"\ncredentials_file = "{secrets}"\n[vdir."/"]\n')
    with pytest.raises(ValueError, match="readable by it alone"):
        load_settings(config)
    secrets.chmod(0o600)
    assert load_settings(config).storage.secret_access_key == "s"  # type: ignore[union-attr]


def test_parts_are_copied_whole_or_joined_to_the_part_size() -> None:
    one, four, big = ("a", 0, MiB), ("b", 0, 4 * MiB), ("c", 0, 16 * MiB)
    plan = plan_parts([one, four, big, ("d", 0, 100)], PART_MIN)
    assert plan == [[one, ("b", 0, 4 * MiB)], [big], [("d", 0, 100)]]
    tiny = [(f"t{i}", 0, MiB) for i in range(7)]
    plan = plan_parts(tiny + [big], PART_MIN)
    assert [sum(p[2] for p in part) for part in plan] == [5 * MiB, 5 * MiB, 13 * MiB]
    assert plan[1][-1] == ("c", 0, 3 * MiB) and plan[2] == [("c", 3 * MiB, 13 * MiB)]


# ---------------------------------------------------------------- any node, any packet (raw packets)


def test_a_record_of_another_slot_size_says_nothing() -> None:
    """A record names its slot size: one a node of another layout wrote (8 MiB slots) is as if absent, so
    the client is told less and resends, and no completion takes its ETag for a part of this layout."""
    total, sixteen = 36 * MiB, lambda _: 16 * MiB
    ours = [Listed(piece_key("s/", 0, 16 * MiB, total), 0, 0.0),
            Listed(record_key("s/", 16 * MiB, 32 * MiB, total, 16 * MiB, ["b"]), 0, 0.0)]
    theirs = Listed(record_key("s/", 32 * MiB, total, total, 8 * MiB, ["c"]), 0, 0.0)  # its part 5, our part 3
    state = read_state([*ours, theirs], "s/", sixteen)
    assert (state.received, state.etags) == (32 * MiB, {16 * MiB: "b"})
    mine = Listed(record_key("s/", 32 * MiB, total, total, 16 * MiB, ["d"]), 0, 0.0)
    assert read_state([*ours, theirs, mine], "s/", sixteen).received == total


async def test_a_fragments_parts_overlap_and_a_part_cut_short_stops_it() -> None:
    """The next part's bytes stream while the part before waits for the store's answer; a part that ends
    before its body is read (failed, or answered early) stops the fragment there, so no later part gets
    bytes from the wrong offset."""
    async def body(*chunks: bytes) -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    answer = asyncio.Event()
    log: list[str] = []

    async def put(name: str, chunks: AsyncIterator[memoryview], wait: bool) -> str:
        got = b"".join([bytes(c) async for c in chunks])
        log.append(f"{name} read")
        if wait:
            await answer.wait()
        log.append(f"{name} answered")
        return got.decode()

    reader = FragmentBody(body(b"aaa", b"abb", b"bbcc"))
    first = await reader.overlapped(put("1", reader.take(4), wait=True))
    second = await reader.overlapped(put("2", reader.take(4), wait=False))
    await second
    assert log == ["1 read", "2 read", "2 answered"]  # the second went while the first waited
    answer.set()
    sent: list[asyncio.Future[str]] = [first, second]
    parts: list[tuple[int, int, str]] = []
    await gather_parts([(0, 4, sent[0]), (4, 8, sent[1])], parts)
    assert parts == [(0, 4, "aaaa"), (4, 8, "bbbb")]

    async def refused(chunks: AsyncIterator[memoryview]) -> str:
        await chunks.__anext__()  # a part of its body, then the store's error
        raise OSError("store said no")

    async def early(chunks: AsyncIterator[memoryview]) -> str:
        return "answered before its body"

    for cut, error in ((refused, OSError), (early, RuntimeError)):
        reader = FragmentBody(body(b"aaaa", b"bbbb"))
        with pytest.raises(error):
            await reader.overlapped(cut(reader.take(8)))


async def test_create_on_a_fragments_on_b_and_c_close_on_a(farm: Farm, swift: SwiftAllInOne,
                                                           http: aiohttp.ClientSession) -> None:
    a, b, c = (Bits(http, node.url) for node in farm.nodes)
    data = os.urandom(7 * MiB + 123)
    path = "/uploads/raw/abc.bin"
    sid = await a.create(path)
    assert (await b.fragment(path, sid, data[: 3 * MiB], 0, len(data))).received == 3 * MiB
    overlap = await c.fragment(path, sid, data[MiB : 5 * MiB], MiB, len(data))  # fragment.md: only 3-5 MiB is new
    assert overlap.status == 200 and overlap.received == 5 * MiB
    gap = await b.fragment(path, sid, data[6 * MiB :], 6 * MiB, len(data))
    assert gap.status == 416 and gap.received == 5 * MiB
    # b's view (3 MiB) was behind: it stored the fragment before its LIST showed the gap, then took it back
    assert not [k for k in _keys(swift, f"uploads/BITS-Sessions/{sid}/data/") if f"/{6 * MiB:016x}-" in k]
    wholly_old = await a.fragment(path, sid, data[:1000], 0, len(data))
    assert wholly_old.status == 200 and wholly_old.received == 5 * MiB
    assert (await c.fragment(path, sid, data[5 * MiB :], 5 * MiB, len(data))).received == len(data)
    assert _stored(swift, "uploads/raw/abc.bin") is None  # nothing final before Close-Session
    assert (await a.close(path, sid)).status == 200
    assert _stored(swift, "uploads/raw/abc.bin") == data
    head = swift.client().head_object(Bucket=BUCKET, Key=PREFIX + "uploads/raw/abc.bin")
    assert head["Metadata"]["bits-session-id"] == sid
    assert (await b.close(path, sid)).status == 200  # a retried Close-Session (its Ack lost)
    after = await c.fragment(path, sid, data[:10], 0, len(data))
    assert after.status == 400 and after.error[0] == 0x8020001F
    tombstone = [PREFIX + f"uploads/BITS-Sessions/{sid}/{n}" for n in ("closed", "session.json")]
    await asyncio.to_thread(wait_for, lambda: _keys(swift, f"uploads/BITS-Sessions/{sid}/") == tombstone, 10)


async def test_whole_slots_go_straight_into_the_destinations_upload(farm: Farm, swift: SwiftAllInOne,
                                                                    http: aiohttp.ClientSession) -> None:
    """A fragment covering a whole 16 MiB slot writes it as a part of the destination's multipart upload
    (only a record of it in the session); one that ends a slot begun by pieces joins them into its part
    at once; the rest are pieces."""
    a, b, c = (Bits(http, node.url) for node in farm.nodes)
    data = os.urandom(40 * MiB + 7)
    path = "/uploads/raw/slots.bin"
    sid = await a.create(path)
    assert (await b.fragment(path, sid, data[: 3 * MiB], 0, len(data))).received == 3 * MiB
    assert (await c.fragment(path, sid, data[3 * MiB : 33 * MiB], 3 * MiB, len(data))).received == 33 * MiB
    # resent from 16 MiB to a node whose view is behind (it saw only Create-Session): it writes the slots
    # from 16 MiB again, whole, the same bytes
    assert (await a.fragment(path, sid, data[16 * MiB :], 16 * MiB, len(data))).received == len(data)
    names = sorted("/".join(k.rsplit("/", 2)[-2:]) for k in _keys(swift, f"uploads/BITS-Sessions/{sid}/"))
    records = [n.rsplit("-", 1) for n in names if n.startswith("part/")]
    assert [name for name, _ in records] == [f"part/{0:016x}-{32 * MiB:016x}-{len(data):016x}-{16 * MiB:x}",
                                             f"part/{16 * MiB:016x}-{len(data):016x}-{len(data):016x}-{16 * MiB:x}"], names
    assert records[0][1].split(".")[1] == hashlib.md5(data[16 * MiB : 32 * MiB]).hexdigest()  # the part's ETag
    assert [n for n in names if n.startswith("data/")] == [f"data/{0:016x}-{3 * MiB:016x}-{len(data):016x}",
                                                           f"data/{32 * MiB:016x}-{33 * MiB:016x}-{len(data):016x}"]
    assert (await b.close(path, sid)).status == 200
    assert _stored(swift, "uploads/raw/slots.bin") == data
    uploads = swift.client().list_multipart_uploads(Bucket=BUCKET, Prefix=PREFIX + "uploads/raw/slots")
    assert uploads.get("Uploads", []) == []


async def test_a_fragment_after_its_nodes_last_is_answered_from_its_view(farm: Farm, swift: SwiftAllInOne,
                                                                        http: aiohttp.ClientSession) -> None:
    """A node that stored the fragment before answers the next one's parts from what it saw and wrote (no
    LIST): the range is right, a session another node cancelled meanwhile is still found ended (its
    upload is gone, so the part is refused), and nothing of the fragment is left behind."""
    a, b, c = (Bits(http, node.url) for node in farm.nodes)
    data = os.urandom(48 * MiB)
    path = "/uploads/raw/view.bin"
    sid = await a.create(path)
    assert (await b.fragment(path, sid, data[: 16 * MiB], 0, len(data))).received == 16 * MiB
    assert (await b.fragment(path, sid, data[16 * MiB : 32 * MiB], 16 * MiB, len(data))).received == 32 * MiB
    assert (await c.fragment(path, sid, data[16 * MiB : 17 * MiB], 16 * MiB, len(data))).received == 32 * MiB
    assert (await c.send(path, "Cancel-Session", {Header.SESSION_ID: sid})).status == 200
    gone = await b.fragment(path, sid, data[32 * MiB :], 32 * MiB, len(data))
    assert gone.status == 400 and gone.error[0] == 0x8020001F
    assert _keys(swift, f"uploads/BITS-Sessions/{sid}/") == []
    assert _stored(swift, "uploads/raw/view.bin") is None


async def test_a_part_whose_recorded_etag_the_store_rejects_is_listed(farm: Farm, swift: SwiftAllInOne,
                                                                      http: aiohttp.ClientSession) -> None:
    """Close-Session completes the upload with the ETags the part records name; a store whose ETag of a
    part changed (not an MD5, and the fragment resent) rejects one, and the node lists the parts instead."""
    a, b, _ = (Bits(http, node.url) for node in farm.nodes)
    data = os.urandom(9 * MiB)
    path = "/uploads/raw/etag.bin"
    sid = await a.create(path)
    assert (await b.fragment(path, sid, data[: 8 * MiB], 0, len(data))).received == 8 * MiB
    assert (await a.fragment(path, sid, data[8 * MiB :], 8 * MiB, len(data))).received == len(data)
    client = swift.client()
    (record,) = [k for k in _keys(swift, f"uploads/BITS-Sessions/{sid}/part/") if f"/{0:016x}-" in k]
    client.put_object(Bucket=BUCKET, Key=record.rsplit("-", 1)[0] + "-" + "0" * 32, Body=b"")
    client.delete_object(Bucket=BUCKET, Key=record)
    assert (await b.close(path, sid)).status == 200
    assert _stored(swift, "uploads/raw/etag.bin") == data


async def test_no_host_id_with_object_storage(farm: Farm, http: aiohttp.ClientSession) -> None:
    ack = await Bits(http, farm.nodes[0].url).send("/uploads/h.bin", "Create-Session",
                                                   {Header.SUPPORTED_PROTOCOLS: "{7df0354d-249b-430f-820d-3d2a9bef4931}"})
    assert ack.status == 200 and Header.HOST_ID not in ack.headers


async def test_cancel_on_another_node(farm: Farm, swift: SwiftAllInOne, http: aiohttp.ClientSession) -> None:
    a, b, _ = (Bits(http, node.url) for node in farm.nodes)
    sid = await a.create("/uploads/cancel.bin")
    await a.fragment("/uploads/cancel.bin", sid, b"x" * 1000, 0, 2000)
    assert (await b.send("/uploads/cancel.bin", "Cancel-Session", {Header.SESSION_ID: sid})).status == 200
    assert _keys(swift, f"uploads/BITS-Sessions/{sid}/") == []
    gone = await a.fragment("/uploads/cancel.bin", sid, b"x" * 1000, 1000, 2000)
    assert gone.status == 400 and gone.error[0] == 0x8020001F


async def test_reply_from_another_node_notified_once(farm: Farm, application: UploadApp, swift: SwiftAllInOne,
                                                     http: aiohttp.ClientSession) -> None:
    a, b, c = (Bits(http, node.url) for node in farm.nodes)
    data = os.urandom(300_000)
    path = "/reply/r.bin"
    calls = len(application.calls)
    sid = await a.create(path)
    last = await b.fragment(path, sid, data, 0, len(data))  # B notifies the application
    assert last.status == 200 and len(application.calls) == calls + 1
    assert application.calls[-1].body == data
    again = await c.fragment(path, sid, data[-1000:], len(data) - 1000, len(data))  # resent: its Ack was lost
    assert URL(again.headers[Header.REPLY_URL]).path_qs == URL(last.headers[Header.REPLY_URL]).path_qs
    assert len(application.calls) == calls + 1  # exactly once, whichever node the resent packet met
    reply_url = URL(last.headers[Header.REPLY_URL]).with_port(farm.nodes[2].port)
    async with http.get(reply_url) as resp:
        assert resp.status == 200 and await resp.read() == b"reply:" + data
    async with http.get(reply_url, headers={"Range": "bytes=0-5"}) as resp:
        assert resp.status == 206 and await resp.read() == b"reply:"
    assert (await a.close(path, sid)).status == 200
    assert _stored(swift, "reply/r.bin") is None  # no BITS-Copy-File-To-Destination


# ---------------------------------------------------------------- the daemon through nginx


async def test_packets_of_one_upload_land_on_different_nodes(farm: Farm, swift: SwiftAllInOne,
                                                             amanager: AsyncManager, tmp_path: Path) -> None:
    path, data = _file(tmp_path, 12 * MiB + 5)
    logged = len(farm.access_log.read_text().splitlines()) if farm.access_log.exists() else 0
    job = await _job(amanager, farm.url("uploads/spread.bin"), path)
    await _transferred(job)
    assert _sha(_stored(swift, "uploads/spread.bin")) == _sha(data)
    (sid,) = {line.split(" ")[2] for line in farm.access_log.read_text().splitlines()[logged:]
              if " Create-Session " in line}
    served = farm.served(sid)
    assert {packet for _, packet, _, _ in served} >= {"Create-Session", "Fragment", "Close-Session"}
    assert len({node for node, _, _, _ in served}) == 3


async def test_upload_reply_job_through_the_farm(farm: Farm, amanager: AsyncManager, tmp_path: Path) -> None:
    path, data = _file(tmp_path, 700_001)  # the application takes up to 1 MiB
    job = await _job(amanager, farm.url("reply/job.bin"), path, JobType.UPLOAD_REPLY)
    assert await job.wait(60) == JobState.TRANSFERRED, (await job.info()).error
    assert await job.reply_data() == b"reply:" + data
    await job.complete()


@pytest.mark.parametrize("interruption", ["kill9", "restart"])
async def test_upload_goes_on_after_a_node_dies_or_the_farm_restarts(
        interruption: str, farm: Farm, nodes: list[Node], swift: SwiftAllInOne, amanager: AsyncManager,
        tmp_path: Path) -> None:
    """kill -9 of the node receiving a fragment (the client goes on through the others), or every node
    stopped and started again mid-upload: either way the object is byte-identical."""
    path, data = _file(tmp_path, 8 * MiB)
    before = _acked(farm)
    job = await _job(amanager, farm.url(f"uploads/{interruption}.bin"), path, max_bandwidth=2 * MiB)
    await asyncio.to_thread(wait_for, lambda: _acked(farm) >= before + 2, 30)
    if interruption == "kill9":
        victim = await asyncio.to_thread(wait_for, lambda: receiving_node(nodes), 20, 0.01)
        victim.kill9()
    else:
        await asyncio.to_thread(farm.restart)
    await _transferred(job)
    assert _sha(_stored(swift, f"uploads/{interruption}.bin")) == _sha(data)


def _acked(farm: Farm) -> int:
    """How many fragments nginx has seen acknowledged so far."""
    return sum(1 for _, packet, status, _ in farm.served() if packet == "Fragment" and status == "200")


@pytest.mark.load
async def test_hundred_concurrent_uploads(farm: Farm, swift: SwiftAllInOne, amanager: AsyncManager,
                                          tmp_path: Path) -> None:
    files = [_file(tmp_path, 8 * MiB, f"c{i}.bin") for i in range(100)]
    jobs = [await _job(amanager, farm.url(f"uploads/many/c{i}.bin"), path) for i, (path, _) in enumerate(files)]
    # 800 MiB into the store and assembled there: minutes when the machine is busy with other work
    await asyncio.gather(*(_transferred(job, timeout=1200) for job in jobs))
    for i, (_, data) in enumerate(files):
        assert _sha(_stored(swift, f"uploads/many/c{i}.bin")) == _sha(data)


# ---------------------------------------------------------------- clean-up across the farm


async def test_expired_session_cleaned_by_a_node_that_never_saw_it(farm: Farm, swift: SwiftAllInOne,
                                                                   http: aiohttp.ClientSession,
                                                                   tmp_path: Path) -> None:
    a = Bits(http, farm.nodes[0].url)
    sid = await a.create("/short/old.bin")
    await a.fragment("/short/old.bin", sid, b"x" * 1000, 0, 5000)
    assert [k for k in _keys(swift, f"short/BITS-Sessions/{sid}/") if "/data/" in k or k.endswith("session.json")]
    await asyncio.sleep(4.5)  # > session_timeout = 3
    config = farm.config.read_text().replace("[storage]", "cleanup_interval = 0.5\n[storage]", 1)
    (tmp_path / "fresh.toml").write_text(config)
    fresh = Node(tmp_path / "fresh.toml", *swift_aio.free_ports(1), tmp_path / "fresh.log").start()
    try:
        await asyncio.to_thread(wait_for, lambda: not _keys(swift, f"short/BITS-Sessions/{sid}/"), 60)
    finally:
        fresh.stop()
    gone = await a.fragment("/short/old.bin", sid, b"x" * 1000, 1000, 5000)
    assert gone.status == 400 and gone.error[0] == 0x8020001F


async def test_gc_removes_orphans(farm: Farm, swift: SwiftAllInOne, http: aiohttp.ClientSession) -> None:
    a = Bits(http, farm.nodes[1].url)
    sid = await a.create("/short/orphan.bin")
    await a.fragment("/short/orphan.bin", sid, b"x" * 1000, 0, 5000)
    orphan = PREFIX + f"short/BITS-Sessions/{new_session_id()}/data/0-10-20"
    swift.client().put_object(Bucket=BUCKET, Key=orphan, Body=b"y" * 16)  # pieces of a cancelled session
    await asyncio.sleep(4.5)
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "openbits.server", "gc", "--config",
                                                    str(farm.config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "removed" in done.stdout and _keys(swift, "short/BITS-Sessions/") == []


# ---------------------------------------------------------------- the store unreachable


async def test_store_unreachable_is_503_and_retried(swift: SwiftAllInOne, amanager: AsyncManager,
                                                    tmp_path: Path) -> None:
    """A node whose only way to the store is a second Swift proxy, closed mid-upload and opened again."""
    door_port = swift_aio.free_ports(1)[0]
    door = swift.start_proxy(door_port)
    config = write_config(tmp_path / "door", f"http://127.0.0.1:{door_port}", BUCKET, PREFIX, {"/uploads": {}})
    node = Node(config, *swift_aio.free_ports(1), tmp_path / "door-node.log").start()
    try:
        path, data = _file(tmp_path, 4 * MiB)
        job = await _job(amanager, f"{node.url}/uploads/door.bin", path, max_bandwidth=MiB)
        await asyncio.sleep(1.0)
        door.kill()
        door.wait()

        async def transient() -> Any:
            while (info := await job.info()).state != JobState.TRANSIENT_ERROR:
                assert node.proc is not None and node.proc.poll() is None, (
                    f"the node exited ({None if node.proc is None else node.proc.returncode}): "
                    f"{node.log.read_text(errors='replace')[-2000:]}")
                await asyncio.sleep(0.05)
            return info

        info = await asyncio.wait_for(transient(), 30)
        assert info.error is not None and info.error.code == 0x801901F7, info.error  # BG_E_HTTP_ERROR_503
        assert _stored(swift, "uploads/door.bin") is None
        door = swift.start_proxy(door_port)
        await _transferred(job)
        assert _sha(_stored(swift, "uploads/door.bin")) == _sha(data)
    finally:
        node.stop()
        if door.poll() is None:
            door.kill()
            door.wait()
