"""Identity, peer credentials and the file broker, against real users, real processes, real files."""

from __future__ import annotations

import asyncio
import fcntl
import grp
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from openbits.enums import ErrorContext
from openbits.errors import BitsError, ErrorCode
from openbits.identity import (
    FileBroker,
    FileStat,
    Identity,
    LocalFiles,
    peer_credentials,
)
from openbits.identity.localfiles import DiskFiles

from .users import RealUser, RealUsers, owned_folder, require_root
from .waiting import wait_until

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def users() -> Iterator[dict[str, RealUser]]:
    require_root()
    with RealUsers() as made:
        yield {
            "alice": made.create("alice"),
            "bob": made.create("bob"),
            "admin": made.create("admin", groups=["sudo"]),
        }


@pytest.fixture(scope="module")
def alice(users: dict[str, RealUser]) -> RealUser:
    return users["alice"]


@pytest.fixture(scope="module")
def bob(users: dict[str, RealUser]) -> RealUser:
    return users["bob"]


@pytest.fixture(scope="module")
def broker(users: dict[str, RealUser]) -> Iterator[FileBroker]:
    """Started outside any event loop, like the daemon does; closed before the users go."""
    started = FileBroker.start()
    yield started
    asyncio.run(started.aclose())


@pytest.fixture(scope="module")
def scratch(users: dict[str, RealUser]) -> Iterator[Path]:
    """/var/tmp/obt_*/ with alice/ and bob/ (0700 each) and rootdir/ (root 0755): one filesystem."""
    base = Path(tempfile.mkdtemp(prefix="obt_", dir="/var/tmp"))
    base.chmod(0o755)
    for name in ("alice", "bob"):
        owned_folder(base / name, users[name], 0o700)
    (base / "rootdir").mkdir(mode=0o755)
    yield base
    shutil.rmtree(base)


@pytest.fixture
def adir(scratch: Path, alice: RealUser) -> Path:
    """A fresh folder of alice's for one test."""
    return owned_folder(scratch / "alice" / secrets.token_hex(4), alice)


async def refused(call: Any, code: ErrorCode, mentions: str) -> BitsError:
    with pytest.raises(BitsError) as info:
        await call
    assert info.value.code == code, info.value
    assert info.value.context == ErrorContext.LOCAL_FILE
    assert mentions in info.value.description
    return info.value


def gone(pid: int) -> bool:
    """No such process, or a zombie nobody reaps yet (this machine's init may not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def in_child(body: Callable[[], Any]) -> Any:
    """Run body in a forked child (it may drop privileges); return its JSON result or raise its error."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            try:
                result: Any = {"ok": body()}
            except BaseException as exc:  # noqa: BLE001 - the parent reports it
                result = {"error": repr(exc)}
            os.write(write_end, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    result = json.loads(data)
    assert "error" not in result, result["error"]
    return result["ok"]


def become(user: RealUser) -> None:
    os.setgroups([])
    os.setresgid(user.identity.gid, user.identity.gid, user.identity.gid)
    os.setresuid(user.uid, user.uid, user.uid)


# --- Identity and peers --------------------------------------------------------------------


def test_identity_comes_from_the_user_database(users: dict[str, RealUser]) -> None:
    alice, admin = users["alice"], users["admin"]
    entry = pwd.getpwnam(alice.name)
    assert alice.identity == Identity(
        uid=entry.pw_uid, gid=entry.pw_gid, groups=(entry.pw_gid,), name=alice.name
    )
    assert grp.getgrnam("sudo").gr_gid in admin.identity.groups
    assert set(admin.identity.groups) == set(os.getgrouplist(admin.name, admin.identity.gid))
    with pytest.raises(BitsError) as info:
        Identity.from_uid(3_999_999)
    assert info.value.code == ErrorCode.E_ACCESSDENIED


def test_is_admin(users: dict[str, RealUser]) -> None:
    alice, admin = users["alice"], users["admin"]
    assert Identity.from_uid(0).is_admin(None)
    assert admin.identity.is_admin(None)  # sudo is the default group on Debian
    assert not alice.identity.is_admin(None)
    assert alice.identity.is_admin(alice.name)  # a configured group (her own user group)
    assert not admin.identity.is_admin(alice.name)
    assert not admin.identity.is_admin("obt_no_such_group")


def test_peer_identity_of_a_process_that_switched_uid(alice: RealUser) -> None:
    address = f"\0obt-peer-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(address)
        server.listen(1)
        pid = os.fork()
        if pid == 0:
            try:
                become(alice)
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                    client.connect(address)
                    client.recv(1)
            finally:
                os._exit(0)
        conn, _ = server.accept()
        with conn:
            # the daemon's caller(): groups from the user database, not the peer's current ones
            assert Identity.from_uid(peer_credentials(conn).uid) == alice.identity
            assert peer_credentials(conn) == (pid, alice.uid, alice.identity.gid)
            conn.send(b"x")
        os.waitpid(pid, 0)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp, pytest.raises(ValueError):
        peer_credentials(tcp)


# --- the broker: what alice can and cannot do ----------------------------------------------


async def test_temp_file_is_alices_and_commit_publishes_it(broker: FileBroker, alice: RealUser, adir: Path) -> None:
    files = broker.files_for(alice.identity)
    temp, final = adir / ".report.pdf.obt", adir / "report.pdf"
    fd = await files.open_temp(str(temp), create=True)
    try:
        info = os.fstat(fd)
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (alice.uid, alice.identity.gid, 0o600)
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        os.write(fd, b"first ")
    finally:
        os.close(fd)
    fd = await files.open_temp(str(temp), create=False)  # resume keeps the bytes
    try:
        os.lseek(fd, 0, os.SEEK_END)
        os.write(fd, b"second")
    finally:
        os.close(fd)
    assert await files.commit([(str(temp), str(final))]) == [None]
    assert not temp.exists()
    assert final.read_bytes() == b"first second"
    info = final.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (alice.uid, 0o644)
    assert await files.stat(str(final)) == FileStat(12, info.st_mtime_ns, alice.uid, info.st_mode)
    assert await files.stat(str(adir / "missing")) is None


async def test_commit_reports_each_pair(broker: FileBroker, alice: RealUser, adir: Path) -> None:
    files = broker.files_for(alice.identity)
    (adir / "taken").mkdir()
    temps = [adir / f".t{i}" for i in range(3)]
    for temp in temps:
        os.close(await files.open_temp(str(temp), create=True))
    results = await files.commit(
        [
            (str(temps[0]), str(adir / "ok")),
            (str(temps[1]), str(adir / "taken")),  # a folder: refused, temp left alone
            (str(adir / ".never-created"), str(adir / "x")),
            (str(temps[2]), "/etc/obt-elsewhere"),  # not the temp's folder
        ]
    )
    assert results[0] is None and (adir / "ok").is_file()
    assert [r.code if r else None for r in results[1:]] == [
        ErrorCode.E_INVALIDARG,
        ErrorCode.ERROR_FILE_NOT_FOUND,
        ErrorCode.E_INVALIDARG,
    ]
    assert all(r is None or r.context == ErrorContext.LOCAL_FILE for r in results)
    assert "taken" in results[1].description and temps[1].is_file()  # type: ignore[union-attr]


@pytest.mark.parametrize("where", ["/etc", "/root", "bob-home"])
async def test_alice_cannot_create_where_she_cannot_write(
    broker: FileBroker, alice: RealUser, bob: RealUser, where: str
) -> None:
    folder_path = str(bob.home) if where == "bob-home" else where
    target = f"{folder_path}/obt-{secrets.token_hex(4)}.tmp"
    files = broker.files_for(alice.identity)
    await refused(files.open_temp(target, create=True), ErrorCode.E_ACCESSDENIED, target)
    await refused(files.check_destination(target), ErrorCode.E_ACCESSDENIED, folder_path)
    assert not os.path.lexists(target)


async def test_symlink_planted_at_the_temp_name(broker: FileBroker, alice: RealUser, scratch: Path, adir: Path) -> None:
    victim = scratch / "rootdir" / f"victim-{secrets.token_hex(4)}"
    victim.write_bytes(b"root's")
    temp = adir / ".download.obt"
    temp.symlink_to(victim)
    os.lchown(temp, alice.uid, alice.identity.gid)
    files = broker.files_for(alice.identity)
    await refused(files.open_temp(str(temp), create=False), ErrorCode.E_ACCESSDENIED, "symbolic link")
    [result] = await files.commit([(str(temp), str(adir / "final"))])
    assert result is not None and result.code == ErrorCode.E_ACCESSDENIED and "symbolic link" in result.description
    fd = await files.open_temp(str(temp), create=True)  # the stale link is removed, not followed
    os.write(fd, b"alice's")
    os.close(fd)
    assert not temp.is_symlink() and temp.stat().st_uid == alice.uid
    assert victim.read_bytes() == b"root's" and victim.stat().st_uid == 0


@pytest.mark.parametrize("into", ["bob", "root-home", "rootdir", "sticky"])
async def test_parent_swapped_for_a_symlink_between_open_and_commit(
    broker: FileBroker, alice: RealUser, bob: RealUser, scratch: Path, adir: Path, into: str
) -> None:
    """Whatever the folder turns into, the broker acts as alice: at most what alice herself could do."""
    files = broker.files_for(alice.identity)
    work = owned_folder(adir / "work", alice)
    fd = await files.open_temp(str(work / ".f.obt"), create=True)
    os.write(fd, b"payload")
    os.close(fd)
    target = {
        "bob": scratch / "bob",
        "root-home": Path("/root"),
        "rootdir": scratch / "rootdir",
        "sticky": scratch / f"sticky-{secrets.token_hex(4)}",
    }[into]
    if into == "sticky":
        target.mkdir(mode=0o1777)
        target.chmod(0o1777)
    planted = target / ".f.obt"
    if into == "rootdir":
        planted.write_bytes(b"root's")  # a root-owned file under the temp name, alice can read it
    work.rename(adir / "work.old")
    work.symlink_to(target)
    try:
        [result] = await files.commit([(str(work / ".f.obt"), str(work / "f"))])
        retry = None
        try:
            os.close(await files.open_temp(str(work / ".g.obt"), create=True))
        except BitsError as exc:
            retry = exc
        if into == "sticky":  # alice may write there: the file is hers, nothing else changes
            assert result is not None and result.code == ErrorCode.ERROR_FILE_NOT_FOUND
            assert retry is None and (target / ".g.obt").stat().st_uid == alice.uid
        else:
            assert result is not None and result.code == ErrorCode.E_ACCESSDENIED, result
            assert retry is not None and retry.code == ErrorCode.E_ACCESSDENIED
            assert not (target / "f").exists() and not (target / ".g.obt").exists()
        if into == "rootdir":
            assert planted.read_bytes() == b"root's"
            assert stat.S_IMODE(planted.stat().st_mode) == 0o644 and planted.stat().st_uid == 0
    finally:
        work.unlink()
        if into == "sticky":
            shutil.rmtree(target)
        elif into == "rootdir":
            planted.unlink()


async def test_hard_link_as_final_name_is_replaced_not_written(
    broker: FileBroker, alice: RealUser, scratch: Path, adir: Path
) -> None:
    victim = scratch / "rootdir" / f"linked-{secrets.token_hex(4)}"
    victim.write_bytes(b"root's data")
    final = adir / "final"
    os.link(victim, final)
    files = broker.files_for(alice.identity)
    fd = await files.open_temp(str(adir / ".final.obt"), create=True)
    os.write(fd, b"alice's data")
    os.close(fd)
    assert await files.commit([(str(adir / ".final.obt"), str(final))]) == [None]
    assert final.read_bytes() == b"alice's data" and final.stat().st_uid == alice.uid
    assert victim.read_bytes() == b"root's data" and victim.stat().st_nlink == 1


async def test_open_read_of_bobs_private_file_is_denied(
    broker: FileBroker, alice: RealUser, bob: RealUser, scratch: Path
) -> None:
    shelf = scratch / f"bob-shelf-{secrets.token_hex(4)}"
    owned_folder(shelf, bob, 0o755)
    secret = shelf / "secret"
    secret.write_bytes(b"bob only")
    os.chown(secret, bob.uid, bob.identity.gid)
    secret.chmod(0o600)
    as_alice, as_bob = broker.files_for(alice.identity), broker.files_for(bob.identity)
    await refused(as_alice.open_read(str(secret)), ErrorCode.E_ACCESSDENIED, str(secret))
    await refused(as_alice.stat(str(bob.home / ".profile")), ErrorCode.E_ACCESSDENIED, str(bob.home))
    fd = await as_bob.open_read(str(secret))
    with os.fdopen(fd, "rb") as readable:
        assert readable.read() == b"bob only"
    await refused(as_bob.open_read(str(shelf / "missing")), ErrorCode.ERROR_FILE_NOT_FOUND, "missing")
    await refused(as_bob.open_read(str(shelf / "no" / "x")), ErrorCode.ERROR_PATH_NOT_FOUND, "no/x")
    os.mkfifo(shelf / "fifo")
    await refused(as_bob.open_read(str(shelf / "fifo")), ErrorCode.E_INVALIDARG, "regular file")


async def test_remove_batch(broker: FileBroker, alice: RealUser, bob: RealUser, adir: Path, scratch: Path) -> None:
    files = broker.files_for(alice.identity)
    temps = [str(adir / f".r{i}") for i in range(20)]
    for fd in await asyncio.gather(*(files.open_temp(t, create=True) for t in temps)):
        os.close(fd)
    await files.remove([*temps, str(adir / "never-existed")])
    assert os.listdir(adir) == []
    bobs = scratch / "bob" / "keep"
    bobs.write_bytes(b"")
    os.close(await files.open_temp(temps[0], create=True))
    await refused(files.remove([str(bobs), temps[0]]), ErrorCode.E_ACCESSDENIED, str(bobs))
    assert bobs.exists() and not os.path.exists(temps[0])  # the rest of the batch still went


async def test_open_temps_batch(broker: FileBroker, alice: RealUser, bob: RealUser, adir: Path) -> None:
    """A batch of small files opens its temporaries in one round trip: alice's descriptors, and an error
    for each path she may not create, in order; more than one message's worth of descriptors is split."""
    files = broker.files_for(alice.identity)
    temps = [str(adir / f".b{i}") for i in range(300)]
    forbidden = f"{bob.home}/obt-{secrets.token_hex(4)}.tmp"
    results = await files.open_temps([*temps[:2], forbidden, *temps[2:]])
    assert isinstance(results[2], BitsError) and results[2].code == ErrorCode.E_ACCESSDENIED
    fds = [r for r in results if not isinstance(r, BitsError)]
    assert len(fds) == 300
    for fd in fds:
        info = os.fstat(fd)
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (alice.uid, 0o600)
        os.close(fd)
    assert sorted(os.listdir(adir)) == sorted(os.path.basename(t) for t in temps)
    assert not os.path.lexists(forbidden)


async def test_check_destination(broker: FileBroker, alice: RealUser, adir: Path) -> None:
    files = broker.files_for(alice.identity)
    await files.check_destination(str(adir / "new.iso"))
    (adir / "afile").write_bytes(b"")
    (adir / "afolder").mkdir()
    await refused(files.check_destination("relative/x"), ErrorCode.E_INVALIDARG, "relative/x")
    await refused(files.check_destination(f"{adir}/../x"), ErrorCode.E_INVALIDARG, "normalised")
    await refused(files.check_destination(f"{adir}/nope/x"), ErrorCode.ERROR_PATH_NOT_FOUND, f"{adir}/nope")
    await refused(files.check_destination(f"{adir}/afile/x"), ErrorCode.ERROR_PATH_NOT_FOUND, "afile")
    await refused(files.check_destination(f"{adir}/afolder"), ErrorCode.E_INVALIDARG, "afolder")
    await refused(files.check_destination("/etc/obt.conf"), ErrorCode.E_ACCESSDENIED, "/etc")


# --- the broker processes ------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


async def test_broker_holds_only_the_identity_and_respawns(broker: FileBroker, alice: RealUser, adir: Path) -> None:
    files = broker.files_for(alice.identity)
    assert broker.files_for(alice.identity) is files
    await files.stat(str(adir))
    pid = files.pid  # type: ignore[attr-defined]
    status = proc_status(pid)
    assert status["Uid"].split() == [str(alice.uid)] * 4
    assert status["Gid"].split() == [str(alice.identity.gid)] * 4
    assert status["Groups"].split() == [str(g) for g in alice.identity.groups]
    assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == 0
    assert status["NoNewPrivs"] == "1"
    assert os.stat(f"/proc/{pid}/mem").st_uid == 0  # not dumpable: alice cannot ptrace it
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: gone(pid), 3, f"process {pid} to exit", interval=0.01)
    assert await files.stat(str(adir)) is not None  # transparently respawned
    assert files.pid not in (None, pid)  # type: ignore[attr-defined]


async def test_cancelled_calls_leak_no_descriptors(broker: FileBroker, alice: RealUser, adir: Path) -> None:
    files = broker.files_for(alice.identity)
    await files.stat(str(adir))
    before = len(os.listdir("/proc/self/fd"))
    tasks = [asyncio.create_task(files.open_temp(str(adir / f".c{i}"), create=True)) for i in range(300)]
    await asyncio.sleep(0)
    await asyncio.sleep(0.002)
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for fd in results:
        if isinstance(fd, int):
            os.close(fd)
    await files.stat(str(adir))  # replies come in order: every earlier one has been handled
    assert len(os.listdir("/proc/self/fd")) == before


def test_user_mode_daemon_acts_only_as_itself(alice: RealUser, bob: RealUser, scratch: Path) -> None:
    def as_alice_daemon() -> list[Any]:
        become(alice)

        async def check(started: FileBroker) -> list[Any]:
            fd = await started.files_for(alice.identity).open_temp(str(scratch / "alice" / ".um"), create=True)
            owner = os.fstat(fd).st_uid
            os.close(fd)
            try:
                started.files_for(bob.identity)
                refusal = None
            except BitsError as exc:
                refusal = exc.code
            await started.aclose()
            return [owner, refusal]

        return asyncio.run(check(FileBroker.start()))

    assert in_child(as_alice_daemon) == [alice.uid, ErrorCode.E_ACCESSDENIED]


def test_brokers_die_with_the_daemon(alice: RealUser, scratch: Path) -> None:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            started = FileBroker.start()
            files = started.files_for(alice.identity)
            asyncio.run(files.stat(str(scratch)))
            os.write(write_end, json.dumps([started._zygote_pid, files.pid]).encode())  # type: ignore[attr-defined]
            time.sleep(30)
        finally:
            os._exit(0)
    os.close(write_end)
    zygote, broker_pid = json.loads(os.read(read_end, 100))
    os.close(read_end)
    assert not gone(zygote) and not gone(broker_pid)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    for process in (zygote, broker_pid):
        wait_until(lambda process=process: gone(process), 3, f"process {process} to exit", interval=0.01)


# --- throughput ----------------------------------------------------------------------------


@pytest.mark.slow  # some 40 s on 2 cores: make test runs it, make test-fast does not
async def test_throughput(
    broker: FileBroker, alice: RealUser, adir: Path, scratch: Path, record_property: Any
) -> None:
    """10,000 open_temp calls through the broker, next to the same syscalls made directly (the filesystem's share)."""
    files: LocalFiles = broker.files_for(alice.identity)
    timings = {}
    direct = DiskFiles("root")
    bench = scratch / "rootdir" / f"bench-{secrets.token_hex(4)}"
    bench.mkdir()
    start = time.perf_counter()
    for i in range(10_000):
        os.close(direct.open_temp(f"{bench}/.t{i}.obt", True))
    timings["direct_fresh"] = time.perf_counter() - start
    shutil.rmtree(bench)
    names = [str(adir / f".t{i}.obt") for i in range(10_000)]
    for run in ("fresh", "replace"):  # replace: each name's stale temp is removed first
        start = time.perf_counter()
        fds = await asyncio.gather(*(files.open_temp(name, create=True) for name in names))
        timings[run] = time.perf_counter() - start
        for fd in fds:
            os.close(fd)
    start = time.perf_counter()
    for name in names[:1000]:
        await files.stat(name)
    timings["sequential_stat_us"] = (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    await files.remove(names)
    timings["remove_10k"] = time.perf_counter() - start
    record_property("broker_timings", timings)
    print(f"\nbroker timings (s): { {key: round(value, 3) for key, value in timings.items()} }")
    # Speed is measured, not asserted (make bench): the broker's work is checked here.
    assert not any(os.path.exists(name) for name in names)


async def test_a_stopped_broker_stalls_only_until_the_timeout(alice: RealUser, adir: Path) -> None:
    """alice may SIGSTOP her own broker; the daemon drops it and carries on with a new one."""
    started = FileBroker.start(call_timeout=0.3)
    try:
        files = started.files_for(alice.identity)
        await files.stat(str(adir))
        stopped = files.pid  # type: ignore[attr-defined]
        os.kill(stopped, signal.SIGSTOP)
        begin = time.monotonic()
        assert await files.stat(str(adir)) is not None
        assert 0.3 <= time.monotonic() - begin < 5.0  # the timeout, then a new broker (fork, setuid) on a busy machine
        assert files.pid != stopped  # type: ignore[attr-defined]
        os.kill(stopped, signal.SIGCONT)
        wait_until(lambda: gone(stopped), 3, "the stopped broker to exit", interval=0.01)  # it sees EOF and exits
    finally:
        await started.aclose()


def test_complete_never_replaces_what_is_no_regular_file(tmp_path: Path) -> None:
    """A FIFO (or device, socket, folder) that took the destination's name after AddFile survives Complete."""
    files = DiskFiles("root")
    temp, final = tmp_path / ".f.obt", tmp_path / "f"
    os.close(files.open_temp(str(temp), True))
    os.mkfifo(final)
    [error] = files.commit([(str(temp), str(final))])
    assert error is not None and error.code == ErrorCode.E_INVALIDARG
    assert error.description.startswith(f"{final} is an existing FIFO, which openbits never replaces")
    assert stat.S_ISFIFO(os.lstat(final).st_mode) and temp.exists()
