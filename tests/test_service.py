"""JobService in-process (tests/inprocess.py): who may see and change which job, the per-user limits,
what is durable when a call returns, Wait, and the file work of Complete and Cancel through the real
file broker. No daemon process, no API: the same rules the API tests reach, in milliseconds.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from openbits.enums import ErrorContext, JobPriority, JobState, JobType
from openbits.errors import BitsError, ErrorCode
from openbits.identity import Identity
from openbits.model.job import Job
from openbits.store import SqliteStore

from .inprocess import Core
from .users import RealUser, make_user  # noqa: F401 (a fixture)

MakeUser = Callable[..., RealUser]

URL = "https://example.test/f.bin"


async def create(core: Core, caller: Identity, name: str = "job", job_type: JobType = JobType.DOWNLOAD) -> Job:
    return await core.service.create(caller, name, job_type, JobPriority.NORMAL, "")


async def refused(call: object, code: ErrorCode) -> BitsError:
    with pytest.raises(BitsError) as info:
        await call  # type: ignore[misc]
    assert info.value.code == code, info.value
    return info.value


async def queued(core: Core, tmp_path: Path) -> Job:
    """A job of mine with one file, resumed: QUEUED (no scheduler runs here)."""
    job = await create(core, core.me)
    await core.service.add_files(core.me, job.id, [(URL, str(tmp_path / "f.bin"))])
    return await core.service.resume(core.me, job.id)


# ---------------------------------------------------------------- access


async def test_another_users_job_is_not_found(core: Core) -> None:
    job = await create(core, core.me, "mine")
    service = core.service
    for ref in (job.id, "{" + job.id.lower() + "}", "mine"):
        assert service.find(core.me, ref) is job
        with pytest.raises(BitsError) as info:
            service.find(core.other, ref)
        assert info.value.code == ErrorCode.BG_E_NOT_FOUND
        assert "mine" not in info.value.description.replace(repr(ref), "")  # says nothing of the job
    for call in (service.resume(core.other, job.id), service.suspend(core.other, job.id),
                 service.cancel(core.other, job.id), service.complete(core.other, job.id),
                 service.update(core.other, job.id, {"description": "theirs now"}),
                 service.wait(core.other, job.id, 0)):
        await refused(call, ErrorCode.BG_E_NOT_FOUND)
    assert job.state == JobState.SUSPENDED and job.description == "" and job.owner_uid == core.me.uid


async def test_only_an_administrator_lists_every_users_jobs(core: Core) -> None:
    mine, theirs = await create(core, core.me), await create(core, core.other)
    assert core.service.list(core.other, all_users=False) == [theirs]
    with pytest.raises(BitsError) as info:
        core.service.list(core.other, all_users=True)
    assert info.value.code == ErrorCode.E_ACCESSDENIED
    assert core.service.list(core.root, all_users=True) == [mine, theirs]  # in the order they were made


async def test_final_jobs_are_not_listed(core: Core) -> None:
    job = await create(core, core.other)
    await core.service.cancel(core.other, job.id)
    assert core.service.list(core.other, all_users=False) == []
    assert core.service.find(core.other, job.id).state == JobState.CANCELLED  # still found by its id


async def test_take_ownership_needs_an_administrator(core: Core) -> None:
    job = await create(core, core.other)
    await core.service.update(core.other, job.id, {"notify_cmdline": ["/bin/true"]})
    await refused(core.service.take_ownership(core.other, job.id), ErrorCode.E_ACCESSDENIED)
    assert job.owner_uid == core.other.uid and job.notify_cmdline == ["/bin/true"]
    await core.service.take_ownership(core.root, job.id)
    assert job.owner_uid == 0
    assert job.notify_cmdline is None  # BITS: TakeOwnership removes the command line
    assert core.service.list(core.other, all_users=False) == []  # no longer theirs


# ---------------------------------------------------------------- limits


async def test_a_user_has_at_most_max_jobs_per_user_live_jobs(core: Core, make_user: MakeUser) -> None:
    core.configure(max_jobs_per_user=2)
    alice, bob = make_user("alice").identity, make_user("bob").identity  # regular users: the limits bind them
    first, _ = await create(core, alice), await create(core, alice)
    error = await refused(create(core, alice), ErrorCode.BG_E_TOO_MANY_JOBS_PER_USER)
    assert "limit is 2" in error.description
    await create(core, bob)  # the limit is each user's own
    await core.service.cancel(alice, first.id)  # a final job no longer counts
    await create(core, alice)
    await refused(create(core, alice), ErrorCode.BG_E_TOO_MANY_JOBS_PER_USER)


async def test_max_jobs_per_machine_counts_every_users_jobs(core: Core, make_user: MakeUser) -> None:
    """MaxJobsPerMachine: all live jobs count (an administrator's too); it binds regular users only."""
    core.configure(max_jobs_per_machine=3, users_service_group="obt_svc_group")
    alice, bob = make_user("alice").identity, make_user("bob").identity
    await create(core, core.root)
    await create(core, alice)
    await create(core, bob)
    error = await refused(create(core, alice), ErrorCode.BG_E_TOO_MANY_JOBS_PER_MACHINE)
    assert "3 jobs of all its users" in error.description and "max_jobs_per_machine" in error.description
    await create(core, core.root)  # "does not apply to a user with administrator privileges or service accounts"
    await create(core, core.other)  # nobody: a system account (uid above UID_MAX)


async def test_administrators_and_service_accounts_are_free_of_the_limits(core: Core, make_user: MakeUser) -> None:
    subprocess.run(["groupadd", "-f", "obt_svc_group"], check=True)
    try:
        core.configure(max_jobs_per_user=1, max_jobs_per_machine=9, users_service_group="obt_svc_group")
        service_account = make_user("svc", groups=["obt_svc_group"]).identity
        admin = make_user("admin", groups=["sudo"]).identity
        for caller in (core.root, core.other, service_account, admin):
            await create(core, caller)
            await create(core, caller)
        alice = make_user("alice").identity
        await create(core, alice)
        await refused(create(core, alice), ErrorCode.BG_E_TOO_MANY_JOBS_PER_USER)
        core.configure(max_jobs_per_user=1, max_jobs_per_machine=1, users_service_group="obt_svc_group")
        await refused(create(core, make_user("bob").identity), ErrorCode.BG_E_TOO_MANY_JOBS_PER_MACHINE)
        await create(core, service_account)
    finally:
        subprocess.run(["groupdel", "obt_svc_group"], check=False, capture_output=True)


async def test_add_files_keeps_max_files_per_job(core: Core, make_user: MakeUser) -> None:
    core.configure(max_files_per_job=2)
    alice = make_user("alice")
    home = str(alice.home)
    job = await create(core, alice.identity)
    await core.service.add_files(alice.identity, job.id, [(URL, f"{home}/1"), (URL, f"{home}/2")])
    error = await refused(core.service.add_files(alice.identity, job.id, [(URL, f"{home}/3")]),
                          ErrorCode.BG_E_TOO_MANY_FILES_IN_JOB)
    assert "at most 2 files" in error.description
    assert len(job.files) == 2
    mine = await create(core, core.root)  # an administrator: MaxFilesPerJob does not apply
    await core.service.add_files(core.root, mine.id, [(URL, f"/tmp/obt-limits-{i}") for i in range(3)])
    assert len(mine.files) == 3


async def test_resume_of_an_empty_job_is_bg_e_empty(core: Core) -> None:
    job = await create(core, core.me)
    await refused(core.service.resume(core.me, job.id), ErrorCode.BG_E_EMPTY)
    assert job.state == JobState.SUSPENDED


# ---------------------------------------------------------------- durability and Wait


async def test_a_call_returns_once_its_change_is_stored(core: Core, tmp_path: Path) -> None:
    job = await queued(core, tmp_path)
    stored = {j.id: j for j in await asyncio.to_thread(SqliteStore(str(core.state / "jobs.db")).load_jobs)}
    assert stored[job.id].state == JobState.QUEUED
    assert [f.local_path for f in stored[job.id].files] == [str(tmp_path / "f.bin")]


async def test_wait_returns_when_the_job_needs_its_owner(core: Core, tmp_path: Path) -> None:
    new = await create(core, core.me)
    assert (await core.service.wait(core.me, new.id, 30)).state == JobState.SUSPENDED  # at once
    job = await queued(core, tmp_path)
    assert (await core.service.wait(core.me, job.id, 0.05)).state == JobState.QUEUED  # the timeout passed
    waiting = asyncio.create_task(core.service.wait(core.me, job.id, 30))
    await asyncio.sleep(0)
    assert not waiting.done()
    await core.service.update(core.me, job.id, {"description": "a change that settles nothing"})
    await asyncio.sleep(0)
    assert not waiting.done()
    await core.service.suspend(core.me, job.id)
    assert (await waiting).state == JobState.SUSPENDED


# ---------------------------------------------------------------- file work (the real broker)


async def test_complete_puts_the_finished_files_in_place(core: Core, tmp_path: Path) -> None:
    job = await queued(core, tmp_path)
    f = job.files[0]
    Path(f.temp_path).write_bytes(b"the bytes")
    f.completed, job.state = True, JobState.TRANSFERRED  # what a runner leaves
    await core.service.complete(core.me, job.id)
    assert job.state == JobState.ACKNOWLEDGED
    assert (tmp_path / "f.bin").read_bytes() == b"the bytes" and not Path(f.temp_path).exists()


async def test_complete_before_transferred_deletes_the_partial_file(core: Core, tmp_path: Path) -> None:
    """Complete early (issue 18, BG_S_PARTIAL_COMPLETE): a file that is not whole is deleted, never put in place."""
    job = await queued(core, tmp_path)
    Path(job.files[0].temp_path).write_bytes(b"half")
    await core.service.complete(core.me, job.id)
    assert job.state == JobState.ACKNOWLEDGED and not Path(job.files[0].temp_path).exists()
    assert not (tmp_path / "f.bin").exists()


async def test_cancel_removes_the_temporary_files(core: Core, tmp_path: Path) -> None:
    job = await queued(core, tmp_path)
    Path(job.files[0].temp_path).write_bytes(b"half")
    await core.service.cancel(core.me, job.id)
    assert job.state == JobState.CANCELLED
    assert not Path(job.files[0].temp_path).exists() and not (tmp_path / "f.bin").exists()


async def test_add_files_checks_the_destination_folder(core: Core, tmp_path: Path) -> None:
    job = await create(core, core.me)
    with pytest.raises(BitsError) as info:
        await core.service.add_files(core.me, job.id, [(URL, str(tmp_path / "missing" / "f.bin"))])
    assert info.value.context == ErrorContext.LOCAL_FILE
    assert job.files == []
