"""Jobs follow their owner's logon (issue 21): systemd-logind's sessions and lingering users, watched over D-Bus.

This machine cannot boot a real logind (no systemd as PID 1, so no `systemd-nspawn --boot`):
tests/logindlab.py's stand-in owns org.freedesktop.login1 on a private system bus and tells of
logins, logouts and `loginctl enable-linger` as logind does; the daemon under test is the real
one, as root, with real users whose clients really switch uid (runuser, SO_PEERCRED).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from openbits import JobState
from openbits.core.logons import LogonMonitor, uid_range
from openbits.enums import NOT_LOGGED_ON
from openbits.identity import Identity
from openbits.model.config import Config

from .daemon import DaemonProcess
from .logindlab import FakeLogind
from .nmlab import PrivateBus
from .servers.nginx import NginxServer
from .test_security import run_as
from .users import RealUser, RealUsers, owned_folder, require_root

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root: real users, a system "
                                                                                 "daemon")]

#: how long a logon may take to reach a job: "within seconds", with room for a loaded CI machine
SECONDS = 10.0


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def bus() -> Iterator[PrivateBus]:
    root = Path(tempfile.mkdtemp(prefix="obt_logind_"))
    private = PrivateBus(root)
    yield private
    private.close()


@pytest.fixture(scope="module")
def logind(bus: PrivateBus) -> Iterator[FakeLogind]:
    fake = FakeLogind(bus.address)
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def service_group() -> Iterator[str]:
    require_root()
    name = f"obt_svc_{os.getpid()}"
    subprocess.run(["groupadd", name], check=True)
    yield name
    subprocess.run(["groupdel", name], check=False)


@pytest.fixture(scope="module")
def users(service_group: str) -> Iterator[dict[str, RealUser]]:
    with RealUsers() as made:
        yield {"alice": made.create("alice"), "bob": made.create("bob"),
               "svc": made.create("svc", groups=[service_group])}


@pytest.fixture(scope="module")
def world(users: dict[str, RealUser]) -> Iterator[Path]:
    """A 0755 folder every test user reaches, with a source file anyone may read."""
    base = Path(tempfile.mkdtemp(prefix="obt_logon_", dir="/var/tmp"))
    base.chmod(0o755)
    (base / "src.bin").write_bytes(os.urandom(100_000))
    (base / "src.bin").chmod(0o644)
    yield base
    subprocess.run(["rm", "-rf", str(base)], check=False)


@pytest.fixture(scope="module")
def daemon(world: Path, bus: PrivateBus, logind: FakeLogind, service_group: str) -> Iterator[DaemonProcess]:
    """A system daemon whose system bus is the lab's."""
    process = DaemonProcess(world / "daemon", {"users": {"service_group": service_group}}, system=True)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
        process.start()
    yield process
    process.stop()


def start_job(user: RealUser, daemon: DaemonProcess, world: Path, code: str = "") -> str:
    """A resumed download of world/src.bin into the user's own folder, made as the user; its id."""
    dest = owned_folder(world / user.name, user) / f"out-{os.urandom(3).hex()}.bin"
    return run_as(user, daemon, f"""
    job = m.create_job("logon")
    job.add_file({(world / "src.bin").as_uri()!r}, {str(dest)!r})
    {code}
    job.resume()
    out(id=job.id)
    """)["id"]


def info(daemon: DaemonProcess, job_id: str):  # noqa: ANN201 - a JobInfo
    with daemon.manager() as manager:  # root: an administrator sees every job
        return manager.get_job(job_id).info()


def waits_for_logon(daemon: DaemonProcess, job_id: str) -> None:
    """QUEUED, nothing moved, and `info` says why."""
    now = info(daemon, job_id)
    assert now.state == JobState.QUEUED and now.bytes_transferred == 0, now
    assert now.rate_reason.startswith(NOT_LOGGED_ON), now.rate_reason


def transferred(daemon: DaemonProcess, job_id: str) -> bool:
    return info(daemon, job_id).state == JobState.TRANSFERRED


async def test_the_monitor_follows_logind_at_once(bus: PrivateBus, logind: FakeLogind) -> None:
    """Sessions and lingering count, a "closing" or background session does not, and without logind the
    configuration decides."""
    config = Config.from_dict({"users": {"require_logon": True}})
    monitor = LogonMonitor(lambda: config, bus_address=bus.address)
    told: asyncio.Queue[frozenset[int] | None] = asyncio.Queue()
    watching = asyncio.create_task(monitor.watch(lambda: told.put_nowait(monitor.answer)))
    uid = uid_range()[0] + 54321

    async def after(change: Callable[[], object]) -> frozenset[int] | None:
        await asyncio.to_thread(change)
        async with asyncio.timeout(SECONDS):
            return await told.get()

    try:
        async with asyncio.timeout(SECONDS):
            assert await told.get() == frozenset()
        assert not monitor.logged_on(uid) and monitor.logged_on(0) and monitor.logged_on(uid_range()[0] - 1)
        sessions: list[str] = []
        assert await after(lambda: sessions.append(logind.login(uid, "someone"))) == {uid}
        assert monitor.logged_on(uid) and monitor.source == "systemd-logind"
        assert await after(lambda: logind.logout(sessions[0])) == frozenset()
        assert not monitor.logged_on(uid)
        assert await after(lambda: logind.linger(uid, "someone", True)) == {uid}
        assert await after(lambda: logind.linger(uid, "someone", False)) == frozenset()
        background = await asyncio.to_thread(logind.login, uid, "someone", "background")  # cron, say
        await asyncio.sleep(0.5)
        assert not monitor.logged_on(uid)
        await asyncio.to_thread(logind.logout, background)
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)


def test_a_job_waits_while_its_owner_is_logged_off_and_goes_on_at_logon(
        users: dict[str, RealUser], world: Path, daemon: DaemonProcess, logind: FakeLogind) -> None:
    alice = users["alice"]
    job_id = start_job(alice, daemon, world)
    waits_for_logon(daemon, job_id)
    time.sleep(1.0)  # a scheduler pass or two: still nothing
    waits_for_logon(daemon, job_id)
    sid = logind.login(alice.uid, alice.name)
    try:
        wait_for(lambda: transferred(daemon, job_id), "the job to transfer after its owner's logon")
    finally:
        logind.logout(sid)
    later = start_job(alice, daemon, world)  # logged off again
    wait_for(lambda: info(daemon, later).rate_reason.startswith(NOT_LOGGED_ON), "the logoff to be seen")
    waits_for_logon(daemon, later)


def test_a_lingering_user_counts_as_logged_on(
        users: dict[str, RealUser], world: Path, daemon: DaemonProcess, logind: FakeLogind) -> None:
    bob = users["bob"]
    logind.linger(bob.uid, bob.name, True)
    try:
        job_id = start_job(bob, daemon, world)
        wait_for(lambda: transferred(daemon, job_id), "a lingering user's job to transfer")
    finally:
        logind.linger(bob.uid, bob.name, False)
    later = start_job(bob, daemon, world)
    wait_for(lambda: info(daemon, later).rate_reason.startswith(NOT_LOGGED_ON), "linger's end to be seen")


def test_root_system_accounts_and_the_service_group_always_run(
        users: dict[str, RealUser], world: Path, daemon: DaemonProcess) -> None:
    """Nobody has a session: root's job, the `nobody` account's (uid above UID_MAX) and a member of
    [users] service_group run all the same, as BITS's service accounts do."""
    with daemon.manager() as manager:
        job = manager.create_job("root")
        job.add_file((world / "src.bin").as_uri(), str(world / "root-out.bin"))
        job.resume()
        assert job.wait(30) == JobState.TRANSFERRED
    nobody = RealUser("nobody", "", Path("/"), Identity.from_uid(65534))
    for user in (nobody, users["svc"]):
        job_id = start_job(user, daemon, world)
        wait_for(lambda: transferred(daemon, job_id), f"{user.name}'s job to transfer")


def test_the_last_logoff_drops_the_helper_tokens_set_from_its_sessions(
        users: dict[str, RealUser], world: Path, daemon: DaemonProcess, logind: FakeLogind) -> None:
    alice = users["alice"]
    first, second = logind.login(alice.uid, alice.name), logind.login(alice.uid, alice.name)
    # one job waits for its next turn (a refused connection), with the helper it needs for the network
    waiting = run_as(alice, daemon, """
    job = m.create_job("helper")
    job.token_options().set_helper_token()
    job.token_options().set_helper_token_flags(TokenFlags.NETWORK)
    job.add_file("http://127.0.0.1:9/none", "/var/tmp/never.bin")
    job.resume()
    job.wait(30)
    out(id=job.id, state=job.state.name)
    """)
    assert waiting["state"] == "TRANSIENT_ERROR"

    def helper() -> object:
        with daemon.manager() as manager:
            return manager.get_job(waiting["id"]).token_options().helper_token_user()

    assert helper() is not None
    logind.logout(first)
    time.sleep(0.5)
    assert helper() is not None  # a session is still open
    logind.logout(second)
    wait_for(lambda: helper() is None, "the helper token to be dropped at the last logoff")
    now = info(daemon, waiting["id"])
    assert now.state == JobState.ERROR and now.error is not None and now.error.name == "BG_E_TOKEN_REQUIRED", now
    assert "logged off" in now.error.description


def test_without_logind_the_configuration_decides(users: dict[str, RealUser], world: Path) -> None:
    """No system bus: `[users] require_logon = true` holds a user's job (said once in the log); a SIGHUP with
    false lets it go."""
    process = DaemonProcess(world / "nobus", {"users": {"require_logon": True}}, system=True)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={world / 'no-such-bus'}")
        process.start()
    try:
        job_id = start_job(users["alice"], process, world)
        waits_for_logon(process, job_id)
        assert "require_logon = true" in info(process, job_id).rate_reason
        process.reload({"users": {"require_logon": False}})
        wait_for(lambda: transferred(process, job_id), "the job to run once require_logon is false")
        assert process.log().count("[users] require_logon = true: only service accounts' jobs transfer") == 1
    finally:
        process.stop()


def test_a_logoff_puts_a_transferring_job_back_in_the_queue(
        users: dict[str, RealUser], world: Path, daemon: DaemonProcess, logind: FakeLogind,
        nginx: NginxServer) -> None:
    """BITS: "if a user logs off while their job is transferring, the job transitions to the queued state"."""
    alice = users["alice"]
    (nginx.root / "slow.bin").write_bytes(os.urandom(2_000_000))
    sid = logind.login(alice.uid, alice.name)
    job_id = run_as(alice, daemon, f"""
    job = m.create_job("slow")
    job.add_file({nginx.url("slow.bin")!r}, {str(owned_folder(world / alice.name, alice) / "slow.bin")!r})
    job.max_bandwidth = 200_000
    job.resume()
    out(id=job.id)
    """)["id"]
    try:
        wait_for(lambda: info(daemon, job_id).bytes_transferred > 0, "the job to move bytes")
    finally:
        logind.logout(sid)
    wait_for(lambda: info(daemon, job_id).state == JobState.QUEUED, "the job to go back to the queue")
    moved = info(daemon, job_id).bytes_transferred
    time.sleep(1.0)
    assert info(daemon, job_id).bytes_transferred == moved
    assert info(daemon, job_id).rate_reason.startswith(NOT_LOGGED_ON)
    with daemon.manager() as manager:
        manager.get_job(job_id).cancel()
