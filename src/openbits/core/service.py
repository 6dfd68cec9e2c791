"""JobService: every API operation, with its access rule and its durability.

The order inside each operation is the same: find the job as the caller may
see it, change it in memory through the state machine, make it durable, then
let the scheduler and waiters know. The API answers only after the save.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import Executor

from ..model.config import Config
from ..model.identity import is_service_account, uid_range
from .retention import RetainedJobs
from ..enums import AuthScheme, AuthTarget, ErrorContext, JobPriority, JobState, JobType, TokenFlags
from ..errors import BitsError, ErrorCode
from ..identity import FileBroker, Identity, LocalFiles
from ..identity.tokens import Credential, TokenStore, split_userinfo
from ..events.bus import EventBus
from ..store import Store
from ..waiting import wait_set
from ..model.job import Job
from ..model.jobfile import NEW_FILE_MODE
from ..model.checks import check_local_path
from .changes import JobChanges
from .transfers import Transfers

#: GetReplyData hands out replies up to 1 MB; larger ones are read from the reply file.
MAX_REPLY_DATA = 1024 * 1024


#: Cancel's word to the server (Cancel-Session of an upload), best effort; given the service and the job before
#: it ends (the end forgets its credentials), it answers how to tell the server once the transfer stopped.
CancelRemote = Callable[["JobService", Job], Awaitable[Callable[[], Awaitable[None]]]]


class JobService:
    def __init__(self, store: Store, broker: FileBroker, config_source: Callable[[], Config], jobs: dict[str, Job],
                 events: EventBus, changes: JobChanges, transfers: Transfers, cancel_remote: CancelRemote,
                 reads: Executor) -> None:
        self.store = store
        self.broker = broker
        self._config = config_source
        #: every job the daemon knows, by id (the event bus reads the same dict)
        self.jobs = jobs
        #: owner uid of every live (not final) job, and how many each owner has: Create checks the
        #: per-user limit in O(1) (counting by a scan of 46,806 jobs made creation 4x slower)
        self._live_owner: dict[str, int] = {}
        self._live_count: dict[int, int] = {}
        #: login.defs' UID_MIN..UID_MAX: a uid outside is a system account, free of the job limits
        self._regular_uids = uid_range()
        #: final jobs kept per owner, within a budget; the ones over it are forgotten at the next commit
        self._retained = RetainedJobs(config_source)
        self._evicted: list[str] = []
        for job in sorted(self.jobs.values(), key=lambda j: j.modification_time):
            if job.state.is_final:
                self._evicted += self._retained.add(job)
            else:
                self._count_live(job)
        self._locks: dict[str, asyncio.Lock] = {}
        self._change = asyncio.Event()
        #: every change becomes events, saved with it (openbits.events)
        self.events = events
        #: told of every durable change (the scheduler and the deliveries listen)
        self._changes = changes
        #: the running transfers, which Suspend and Cancel stop before touching files
        self._transfers = transfers
        self._cancel_remote = cancel_remote
        #: where reply data is read (Pools.reads)
        self._reads = reads
        #: helper tokens, tickets and per-job credentials: memory only, forgotten when a job ends
        self.tokens = TokenStore()

    @property
    def config(self) -> Config:
        return self._config()

    def files_of(self, job: Job) -> LocalFiles:
        """The file broker for the job's local files: the helper's with TokenFlags.LOCAL_FILE, else the owner's."""
        return self.broker.files_for(self.acting_identity(job, TokenFlags.LOCAL_FILE, ErrorContext.LOCAL_FILE),
                                     job.owner_changed)

    def remote_files_of(self, job: Job) -> LocalFiles:
        """The file broker that opens file:// remote names: the helper's with TokenFlags.NETWORK, else the owner's."""
        return self.broker.files_for(self.acting_identity(job, TokenFlags.NETWORK, ErrorContext.REMOTE_FILE),
                                     job.owner_changed)

    def acting_identity(self, job: Job, use: TokenFlags, context: ErrorContext) -> Identity:
        """Who does `use` (LOCAL_FILE or NETWORK) work for the job; BG_E_TOKEN_REQUIRED if the helper is gone."""
        if not job.helper_token_flags & use:
            return Identity.from_uid(job.owner_uid)
        helper = self.tokens.helper(job.id)
        if helper is None:
            raise BitsError(
                ErrorCode.BG_E_TOKEN_REQUIRED,
                f"job {job.id} uses a helper token for {use.name} access but has none (the daemon restarted or "
                "it was cleared); set it again with settoken, or clear the flags with settokenflags JOB 0",
                context,
            )
        return helper

    @contextlib.asynccontextmanager
    async def _locked(self, caller: Identity, ref: str) -> AsyncIterator[Job]:
        """One state-changing call per job at a time, so no call sees another's half-done file work."""
        job = self.find(caller, ref)
        lock = self._locks.setdefault(job.id, asyncio.Lock())
        async with lock:
            yield job

    # -- access -------------------------------------------------------------

    def is_admin(self, caller: Identity) -> bool:
        return caller.is_admin(self.config.admin_group)

    def within_limits(self, caller: Identity) -> bool:
        """Whether MaxJobsPerUser, MaxJobsPerMachine, MaxFilesPerJob and MaxRangesPerFile bind the caller:
        "this policy does not apply to a user with administrator privileges or service accounts"."""
        return not (self.is_admin(caller)
                    or is_service_account(caller.uid, self.config.users_service_group, self._regular_uids))

    def visible(self, caller: Identity, job: Job) -> bool:
        return job.owner_uid == caller.uid or self.is_admin(caller)

    def find(self, caller: Identity, ref: str) -> Job:
        """A job by GUID (braces and case ignored) or display name, among the jobs the caller may see.

        Another user's job is simply not found, so its existence and name never leak.
        """
        key = ref.strip().strip("{}").upper()
        job = self.jobs.get(key)
        if job is not None and self.visible(caller, job):
            return job
        named = [j for j in self.jobs.values() if j.name == ref and self.visible(caller, j)]
        live = [j for j in named if not j.state.is_final] or named
        if len(live) == 1:
            return live[0]
        if len(live) > 1:
            raise BitsError(
                ErrorCode.E_INVALIDARG,
                f"{len(live)} jobs are named {ref!r}; use the job's GUID ({', '.join(j.id for j in live[:3])}, ...)",
                ErrorContext.GENERAL_QUEUE_MANAGER,
            )
        raise BitsError(ErrorCode.BG_E_NOT_FOUND, f"no job {ref!r}; `openbits list` shows your jobs",
                        ErrorContext.GENERAL_QUEUE_MANAGER)

    def list(self, caller: Identity, all_users: bool) -> list[Job]:
        """EnumJobs: live jobs only; all users' only for an administrator."""
        if all_users and not self.is_admin(caller):
            raise BitsError(ErrorCode.E_ACCESSDENIED, "only an administrator may list all users' jobs",
                            ErrorContext.GENERAL_QUEUE_MANAGER)
        return sorted(
            (j for j in self.jobs.values()
             if not j.state.is_final and (j.owner_uid == caller.uid or all_users)),
            key=lambda j: j.creation_time,
        )

    # -- operations ---------------------------------------------------------

    async def create(self, caller: Identity, name: str, job_type: JobType, priority: JobPriority,
                     description: str) -> Job:
        if self.within_limits(caller):
            self._check_job_limits(caller)
        job = Job.new(name, job_type, caller.uid, priority, description)
        self.jobs[job.id] = job
        self._count_live(job)
        await self.commit(job)
        return job

    def _check_job_limits(self, caller: Identity) -> None:
        """MaxJobsPerUser, then MaxJobsPerMachine (every user's live jobs, administrators' too)."""
        config = self.config
        owned, everyone = self._live_count.get(caller.uid, 0), len(self._live_owner)
        if owned >= config.max_jobs_per_user:
            raise BitsError(
                ErrorCode.BG_E_TOO_MANY_JOBS_PER_USER,
                f"you have {owned} jobs, the limit is {config.max_jobs_per_user}; complete or cancel some first",
                ErrorContext.GENERAL_QUEUE_MANAGER,
            )
        if everyone >= config.max_jobs_per_machine:
            raise BitsError(
                ErrorCode.BG_E_TOO_MANY_JOBS_PER_MACHINE,
                f"this machine has {everyone} jobs of all its users, the limit (max_jobs_per_machine) is "
                f"{config.max_jobs_per_machine}; complete or cancel some of yours, or ask the administrator",
                ErrorContext.GENERAL_QUEUE_MANAGER,
            )

    async def add_files(self, caller: Identity, ref: str, pairs: list[tuple[str, str]],
                        mode: int = NEW_FILE_MODE,
                        ranges: list[list[list[int]] | None] | None = None,
                        checksums: list[list[str] | None] | None = None) -> Job:
        """AddFileSet; per file `ranges`: AddFileWithRanges' (or None), within MaxFilesPerJob and MaxRangesPerFile
        but for administrators and service accounts, and `checksums` (or None)."""
        async with self._locked(caller, ref) as job:
            job.check_modifiable()
            files = self.files_of(job)
            if job.type == JobType.DOWNLOAD:
                await asyncio.gather(*(files.check_destination(path) for path in {path for _, path in pairs}))
            else:
                await asyncio.gather(*(_check_upload_source(files, path) for _, path in pairs))
            first = len(job.files)
            split = [(split_userinfo(url), path) for url, path in pairs]
            bound = self.within_limits(caller)
            job.add_files([(clean, path) for (clean, _), path in split],
                          self.config.max_files_per_job if bound else None, ranges,
                          self.config.max_ranges_per_file if bound else None, checksums, mode)
            for (_, credential), _ in split:
                self._url_credential(job, credential)
            await self.commit(job, range(first, len(job.files)))
            return job

    def _url_credential(self, job: Job, credential: Credential | None) -> None:
        """user:password@ of a remote name: the job's SERVER credentials for both schemes (the name lost it)."""
        if credential is not None:
            for scheme in (AuthScheme.BASIC, AuthScheme.DIGEST):
                self.tokens.set_credential(job.id, AuthTarget.SERVER, scheme, credential)

    async def change_file(self, caller: Identity, ref: str, index: int, change: Callable[[Job], None]) -> Job:
        """One call that changes file `index` of the job (SetRemoteName, RequestFileRanges, ...; `change` makes
        it, raising BITS's refusal), saved with that file."""
        async with self._locked(caller, ref) as job:
            change(job)
            await self.commit(job, (index,))
            return job

    async def replace_remote_prefix(self, caller: Identity, ref: str, old: str, new: str) -> Job:
        async with self._locked(caller, ref) as job:
            before = [f.remote_url for f in job.files]
            job.replace_remote_prefix(old, new)
            await self.commit(job, [i for i, f in enumerate(job.files) if f.remote_url != before[i]])
            return job

    async def resume(self, caller: Identity, ref: str) -> Job:
        async with self._locked(caller, ref) as job:
            job.resume()
            await self.commit(job)
            return job

    async def suspend(self, caller: Identity, ref: str) -> Job:
        async with self._locked(caller, ref) as job:
            job.suspend()
            await self.commit(job)
            await self._transfers.stop(job.id)
            return job

    async def cancel(self, caller: Identity, ref: str) -> Job:
        async with self._locked(caller, ref) as job:
            writer, remote = self._writer(job), await self._cancel_remote(self, job)
            job.cancel()
            await self.commit(job)
            await self._discard(job, writer, remote)
            return job

    def _writer(self, job: Job) -> LocalFiles:
        """Whoever wrote the job's temporary files, asked before the job ends (its end forgets the helper token)."""
        try:
            return self.files_of(job)
        except BitsError:  # the helper token is already gone: the owner removes what the owner can
            return self.broker.files_for(Identity.from_uid(job.owner_uid), job.owner_changed)

    async def _discard(self, job: Job, writer: LocalFiles, remote: Callable[[], Awaitable[None]]) -> None:
        """Cancel's file work: stop the transfer, tell the server, then remove every temporary file as its writer."""
        await self._transfers.stop(job.id)
        await remote()
        await writer.remove(job.temp_paths())

    async def complete(self, caller: Identity, ref: str) -> Job:
        async with self._locked(caller, ref) as job:
            job.check_completable()  # raises the documented BG_E_INVALID_STATE
            if job.state != JobState.TRANSFERRED:  # a download completed early keeps only its whole files
                job.suspend()  # first, or the scheduler starts the stopped transfer again
                await self._transfers.stop(job.id)
            files = self.files_of(job)
            renames = job.completion_renames()
            results = await files.commit(renames)
            failed = [err for err in results if err is not None]
            if failed:
                job.set_error(failed[0], transient=False)
                await self.commit(job)
                raise BitsError(failed[0].code, f"{len(failed)} file(s) could not be put in place: "
                                f"{failed[0].description}", ErrorContext.LOCAL_FILE)
            committed = {temp for temp, _, _ in renames}
            await files.remove([path for path in job.temp_paths() if path not in committed])
            job.complete()
            await self.commit(job)
            return job

    async def set_reply_file_name(self, caller: Identity, ref: str, path: str | None) -> Job:
        """SetReplyFileName: the folder must exist and be writable for whoever writes the reply."""
        async with self._locked(caller, ref) as job:
            job.check_reply_file_name()
            if path:
                check_local_path(path)
                await self.files_of(job).check_destination(path)
            job.reply_file_name = path or None
            job.touch()
            await self.commit(job)
            return job

    async def reply_data(self, caller: Identity, ref: str) -> bytes:
        """GetReplyData: the reply in memory, TRANSFERRED (from the temporary file) or after Complete."""
        job = self.find(caller, ref)
        if job.type != JobType.UPLOAD_REPLY:
            raise BitsError(ErrorCode.E_NOTIMPL, f"job {job.id} is {job.type.phrase}; only UPLOAD_REPLY jobs "
                            "have reply data", ErrorContext.GENERAL_QUEUE_MANAGER)
        if job.state not in (JobState.TRANSFERRED, JobState.ACKNOWLEDGED):
            raise BitsError(ErrorCode.BG_E_INVALID_STATE, f"job {job.id} is {job.state.name}; the reply is there "
                            "once the job is TRANSFERRED", ErrorContext.GENERAL_QUEUE_MANAGER)
        path = job.reply_temp_path if job.state == JobState.TRANSFERRED else job.reply_path
        assert path is not None, "an upload-reply job in TRANSFERRED has a file"
        fd = await self.files_of(job).open_read(path)
        try:
            size = os.fstat(fd).st_size
            if size > MAX_REPLY_DATA:
                raise BitsError(ErrorCode.BG_E_TOO_LARGE, f"the reply has {size} bytes, more than GetReplyData's "
                                f"{MAX_REPLY_DATA}; Complete the job and read {job.reply_path}",
                                ErrorContext.GENERAL_QUEUE_MANAGER)
            return await asyncio.get_running_loop().run_in_executor(self._reads, os.pread, fd, size, 0)
        finally:
            os.close(fd)

    async def take_ownership(self, caller: Identity, ref: str) -> Job:
        """TakeOwnership: an administrator makes a job theirs."""
        if not self.is_admin(caller):
            raise BitsError(ErrorCode.E_ACCESSDENIED, "only an administrator may take ownership of a job",
                            ErrorContext.GENERAL_QUEUE_MANAGER)
        async with self._locked(caller, ref) as job:
            job.check_modifiable()
            job.owner_changed = job.owner_changed or job.owner_uid != caller.uid
            job.owner_uid = caller.uid
            job.notify_cmdline = None  # BITS: TakeOwnership removes command line notification
            job.touch()
            await self.commit(job)
            return job

    async def update(self, caller: Identity, ref: str, changes: dict[str, object]) -> Job:
        async with self._locked(caller, ref) as job:
            job.set_properties(changes)
            job.touch()
            await self.commit(job)
            return job

    async def wait(self, caller: Identity, ref: str, timeout: float) -> Job:
        """Until the job needs its owner (TRANSFERRED, ERROR, SUSPENDED, final) or the timeout passes."""
        job = self.find(caller, ref)
        settled = (JobState.TRANSFERRED, JobState.ERROR, JobState.SUSPENDED, JobState.ACKNOWLEDGED,
                   JobState.CANCELLED)
        deadline = time.monotonic() + timeout
        while job.state not in settled and (remaining := deadline - time.monotonic()) > 0:
            await wait_set(self._change, remaining)
        return job

    # -- durability and change notification ---------------------------------

    async def commit(self, job: Job, files: Iterable[int] = (),
                     ranges: tuple[int, list[list[int]]] | None = None) -> None:
        """Make a change and the events it makes durable together, then tell the streams, listeners and waiters;
        `ranges`: a file's requested ranges now in (FILE_RANGES_TRANSFERRED)."""
        files = list(files)
        self._count_live(job)
        events = self.events.record(job, files, ranges)
        await self.store.save_job(job, files, events)
        self.events.publish(events)
        self.announce(job)
        while self._evicted:
            old = self.jobs.get(self._evicted.pop())
            if old is not None and old.state.is_final:
                await self._forget(old, with_events=True)

    def live_jobs(self) -> int:
        """Jobs not in a final state, of every owner."""
        return sum(self._live_count.values())

    def _count_live(self, job: Job) -> None:
        """Keep the per-owner live count in step with the job's state and owner."""
        counted = self._live_owner.get(job.id)
        owner = None if job.state.is_final else job.owner_uid
        if counted == owner:
            return
        if counted is not None:
            del self._live_owner[job.id]
            self._live_count[counted] -= 1
        if owner is not None:
            self._live_owner[job.id] = owner
            self._live_count[owner] = self._live_count.get(owner, 0) + 1
        else:
            self._evicted += self._retained.add(job)

    def announce(self, job: Job) -> None:
        """Wake listeners and every `wait` (each re-checks its own job)."""
        if job.state.is_final:
            self.tokens.forget(job.id)
        self._changes.announce(job)
        change, self._change = self._change, asyncio.Event()
        change.set()

    async def expire(self) -> float:
        """Cancel jobs untouched for the inactivity timeout and forget old final jobs; returns seconds to next check."""
        now = time.time()
        config = self.config
        for job in list(self.jobs.values()):
            if job.state.is_final:
                if now - job.modification_time > config.final_job_retention:
                    await self._forget(job)
            elif now - job.modification_time > config.job_inactivity_timeout:
                writer, remote = self._writer(job), await self._cancel_remote(self, job)
                job.cancel()
                await self.commit(job)
                await self._discard(job, writer, remote)
        return max(1.0, min(3600.0, config.job_inactivity_timeout / 4, config.final_job_retention / 4))

    async def _forget(self, job: Job, with_events: bool = False) -> None:
        """A final job past its retention, or over its owner's budget (then its events go too)."""
        del self.jobs[job.id]
        self._locks.pop(job.id, None)
        self._retained.remove(job)
        self.events.forget(job.id)
        await self.store.delete_job(job.id, with_events=with_events)


async def _check_upload_source(files: LocalFiles, path: str) -> None:
    """AddFile of an upload: the file must exist and be readable now, as whoever will read it."""
    info = await files.stat(path)
    if info is None:
        raise BitsError(ErrorCode.ERROR_FILE_NOT_FOUND, f"{path} does not exist; an upload needs an existing file",
                        ErrorContext.LOCAL_FILE)
    os.close(await files.open_read(path))
