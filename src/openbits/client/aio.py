"""The asyncio client, mirroring BITS's IBackgroundCopyManager and IBackgroundCopyJob.

This is the one implementation; `openbits.client.sync` runs it on a private
event-loop thread for callers without an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import base64
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..schema.models import (
    AddFilesRequest,
    CreateJobRequest,
    ClientCertificateRequest,
    CredentialsRequest,
    DaemonStatus,
    DownloadPosition,
    EventInfo,
    ExchangeInfo,
    HelperTokenUser,
    JobInfo,
    JobList,
    JobProperties,
    LogonRequest,
    LogonResult,
    Mirrors,
    NotifyCmdLine,
    NotifyInterface,
    RangesRequest,
    RemoteName,
    RemotePrefix,
    ReplyData,
    ReplyFileName,
    TokenTicket,
    ValidationState,
)
from ..enums import AuthScheme, AuthTarget, CertStoreLocation, JobPriority, JobState, JobType, NotifyFlags, ProxyUsage
from ..errors import BitsError, ErrorCode
from . import discovery
from .connection import Connection
from .notify import Notifiers, follow, with_idle
from .tokens import AsyncTokenOptions, job_path, redeem_ticket
from .types import File, Progress, ProxySettings, ReplyProgress, error_of

#: States in which waiting ends: nothing will change until someone acts.
WAIT_STATES = frozenset(
    {JobState.TRANSFERRED, JobState.ERROR, JobState.ACKNOWLEDGED, JobState.CANCELLED, JobState.SUSPENDED}
)
#: The daemon holds one wait request at most this long; longer waits are a loop of requests.
MAX_WAIT_PER_REQUEST = 30.0
#: Extra time a wait request may take beyond the server-side timeout before the client gives up on it.
_WAIT_SLACK = 15.0

#: What add_file(s) accepts as a local name.
LocalPath = str | os.PathLike[str]

M = TypeVar("M", bound=BaseModel)


def _request(model: type[M], **fields: Any) -> M:
    """Build a request body; a value the API would refuse raises E_INVALIDARG here, as the daemon would."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())
        raise BitsError(ErrorCode.E_INVALIDARG, problems) from exc


def current_umask() -> int:
    """This process's umask, sent at AddFile: the daemon gives a file it creates 0666 & ~umask, as we would."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)  # no /proc: the classic read-by-setting (not thread-safe, hence the fallback only)
    os.umask(mask)
    return mask


class AsyncJob:
    """A handle on one job. Every getter asks the daemon afresh, as BITS's Get* methods do."""

    def __init__(self, connection: Connection, info: JobInfo, notifiers: Notifiers) -> None:
        self._connection = connection
        self._info = info
        self._notifiers = notifiers
        self._path = job_path(info.id)

    def __repr__(self) -> str:
        return f"<AsyncJob {self.id} {self._info.name!r}>"

    @property
    def id(self) -> str:
        return self._info.id

    @property
    def type(self) -> JobType:
        return self._info.type

    @property
    def last_info(self) -> JobInfo:
        """The snapshot from the daemon's latest answer about this job, without asking again."""
        return self._info

    async def _call(
        self, method: str, action: str = "", body: Any = None, params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> JobInfo:
        self._info = await self._connection.request(
            method, self._path + action, JobInfo, body=body, params=params, timeout=timeout
        )
        return self._info

    async def info(self) -> JobInfo:
        """Everything about the job in one snapshot."""
        return await self._call("GET")

    async def state(self) -> JobState:
        return (await self.info()).state

    async def progress(self) -> Progress:
        return Progress.of(await self.info())

    async def error(self) -> BitsError | None:
        """The error that put the job in ERROR or TRANSIENT_ERROR, or None."""
        return error_of(await self.info())

    async def files(self) -> list[File]:
        return [File.of(file) for file in (await self.info()).files]

    async def add_file(self, remote_url: str, local_path: LocalPath, ranges: Iterable[tuple[int, int]] | None = None,
                       checksums: Iterable[str] | None = None) -> JobInfo:
        """AddFile. `ranges`: AddFileWithRanges' (offset, length) pairs of the remote file, a length of
        LENGTH_TO_EOF running to its end, written to the local file one after another in this order.
        `checksums`: 'sha256:HEX', 'sha512:HEX' or 'blake2b:HEX' digests the file must have."""
        file: dict[str, object] = {"remote_url": remote_url, "local_path": os.path.abspath(local_path)}
        if ranges is not None:
            file["ranges"] = [{"offset": offset, "length": length} for offset, length in ranges]
        if checksums is not None:
            file["checksums"] = list(checksums)
        return await self._call("POST", "/files", _request(AddFilesRequest, files=[file], umask=current_umask()))

    async def request_file_ranges(self, file_index: int, ranges: Iterable[tuple[int, int]]) -> JobInfo:
        """RequestFileRanges (on-demand jobs): (offset, length) pairs that go first; Resume to fetch them."""
        return await self._call("POST", f"/files/{file_index}/ranges", _request(
            RangesRequest, ranges=[{"offset": offset, "length": length} for offset, length in ranges]))

    async def update_download_position(self, file_index: int, offset: int) -> JobInfo:
        """UpdateDownloadPosition (on-demand jobs): a Resume with nothing requested fills in from `offset` on."""
        return await self._call("PUT", f"/files/{file_index}/download-position",
                                _request(DownloadPosition, offset=offset))

    async def set_remote_name(self, file_index: int, remote_url: str) -> JobInfo:
        """SetRemoteName: the bytes already here stay when the new source has the same size and validators."""
        return await self._call("PUT", f"/files/{file_index}/remote-name", _request(RemoteName, remote_url=remote_url))

    async def set_mirrors(self, file_index: int, mirrors: Iterable[str], size: int | None = None,
                          piece_length: int | None = None, piece_hashes: Iterable[str] | None = None) -> JobInfo:
        """Metalink: file `file_index` comes from the first of `mirrors` and fails over to the next one on
        errors, keeping its bytes; `size` (when known) is the size it must have; `piece_hashes` ('sha1:HEX',
        ... of each `piece_length` bytes) let a file that fails its digest keep the pieces that match and fetch
        only the bad ones again."""
        return await self._call("PUT", f"/files/{file_index}/mirrors", _request(
            Mirrors, mirrors=list(mirrors), size=size, piece_length=piece_length,
            piece_hashes=None if piece_hashes is None else list(piece_hashes)))

    async def replace_remote_prefix(self, old_prefix: str, new_prefix: str) -> int:
        """ReplaceRemotePrefix; how many remote names changed (0: BITS's S_FALSE, none matched)."""
        before = [f.remote_url for f in (await self.info()).files]
        info = await self._call("POST", "/replace-remote-prefix",
                                _request(RemotePrefix, old_prefix=old_prefix, new_prefix=new_prefix))
        return sum(1 for old, f in zip(before, info.files) if old != f.remote_url)

    async def set_validation_state(self, file_index: int, valid: bool) -> JobInfo:
        """SetValidationState: False makes the job ERROR (BG_E_VALIDATION_FAILED) and Resume downloads it again."""
        return await self._call("PUT", f"/files/{file_index}/validation-state", _request(ValidationState, valid=valid))

    async def add_files(self, files: Iterable[tuple[str, LocalPath]],
                        checksums: Iterable[Iterable[str] | None] | None = None) -> JobInfo:
        """AddFileSet: all or none. Local paths are made absolute against this process's cwd. `checksums`:
        each file's digests (or None), as add_file takes them."""
        specs: list[dict[str, object]] = [{"remote_url": url, "local_path": os.path.abspath(path)}
                                          for url, path in files]
        for spec, digests in zip(specs, checksums or ()):
            if digests is not None:
                spec["checksums"] = list(digests)
        request = _request(AddFilesRequest, files=specs, umask=current_umask())
        return await self._call("POST", "/files", request)

    async def set_properties(self, **changes: Any) -> JobInfo:
        """Change the given properties (the fields of JobProperties, e.g. priority=JobPriority.HIGH) at once."""
        return await self._call("PATCH", body=_request(JobProperties, **changes))

    async def resume(self) -> JobInfo:
        return await self._call("POST", "/resume")

    async def suspend(self) -> JobInfo:
        return await self._call("POST", "/suspend")

    async def cancel(self) -> JobInfo:
        """Cancel the job; the daemon removes its temporary files."""
        return await self._call("POST", "/cancel")

    async def complete(self) -> JobInfo:
        """Make the transferred files visible under their local names and end the job."""
        return await self._call("POST", "/complete")

    async def take_ownership(self) -> JobInfo:
        return await self._call("POST", "/takeownership")

    async def token_options(self) -> AsyncTokenOptions:
        """IBitsTokenOptions; checks your access now and holds a one-time ticket for set_helper_token()."""
        return AsyncTokenOptions(self._connection, self.id, await self.token_ticket())

    async def token_ticket(self) -> str:
        """A one-time ticket (a minute) that lets a process running as another user become the helper."""
        return (await self._connection.request("POST", self._path + "/token-ticket", TokenTicket)).ticket

    async def set_credentials(self, target: AuthTarget, scheme: AuthScheme, username: str, password: str) -> JobInfo:
        """SetCredentials: answer target's scheme challenges with these; they can never be read back."""
        body = _request(CredentialsRequest, target=target, scheme=scheme, username=username, password=password)
        return await self._call("PUT", "/credentials", body)

    async def remove_credentials(self, target: AuthTarget, scheme: AuthScheme) -> JobInfo:
        return await self._call("DELETE", "/credentials", params={"target": target.name, "scheme": scheme.name})

    async def set_client_certificate(self, *, path: LocalPath | None = None, thumbprint: str | None = None,
                                     subject: str | None = None, store: CertStoreLocation = CertStoreLocation.CURRENT_USER,
                                     passphrase: str | None = None) -> JobInfo:
        """SetClientCertificateByID (thumbprint) / ByName (subject) from a store folder, or a PEM / PKCS#12 file by
        path; the daemon reads it now as the job's network identity and tells what is wrong. The passphrase of an
        encrypted key lives in the daemon's memory only: set it again after the daemon restarts."""
        body = _request(ClientCertificateRequest, path=os.path.abspath(path) if path else None, thumbprint=thumbprint,
                        subject=subject, store=store, passphrase=passphrase)
        return await self._call("PUT", "/client-certificate", body)

    async def remove_client_certificate(self) -> JobInfo:
        return await self._call("DELETE", "/client-certificate")

    async def proxy_settings(self) -> ProxySettings:
        """GetProxySettings."""
        return ProxySettings.of(await self.info())

    async def set_proxy_settings(self, usage: ProxyUsage, proxy_list: str | None = None,
                                 bypass_list: str | None = None) -> JobInfo:
        """SetProxySettings: the lists only with OVERRIDE ('[http=|https=][http://]server[:port]' entries;
        hosts, '*.suffix' or <local> to bypass), at most 4,000 characters each."""
        return await self.set_properties(proxy_usage=usage, proxy_list=proxy_list, proxy_bypass_list=bypass_list)

    async def reply_file_name(self) -> str | None:
        """GetReplyFileName (upload-reply jobs): the chosen name or the generated one; None before a file is added."""
        return (await self.info()).reply_file_name

    async def set_reply_file_name(self, path: LocalPath | None) -> JobInfo:
        """SetReplyFileName; None or "" lets openbits choose. Relative paths are taken from this process's cwd."""
        body = _request(ReplyFileName, reply_file_name=os.path.abspath(path) if path else None)
        return await self._call("PUT", "/reply-file-name", body)

    async def reply_progress(self) -> ReplyProgress:
        """GetReplyProgress: bytes_total is -1 until the reply begins."""
        return ReplyProgress.of(await self.info())

    async def reply_data(self) -> bytes:
        """GetReplyData: the reply in memory once TRANSFERRED (BG_E_TOO_LARGE above 1 MiB: read the reply file)."""
        answer = await self._connection.request("GET", self._path + "/reply", ReplyData)
        return base64.b64decode(answer.data)

    async def wait_info(self, timeout: float | None = None) -> JobInfo:
        """Wait until the job reaches one of WAIT_STATES or `timeout` seconds pass (None: forever); return the snapshot."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = MAX_WAIT_PER_REQUEST if deadline is None else deadline - time.monotonic()
            step = max(0.0, min(remaining, MAX_WAIT_PER_REQUEST))
            info = await self._call("GET", "/wait", params={"timeout": f"{step:.3f}"}, timeout=step + _WAIT_SLACK)
            if info.state in WAIT_STATES or (deadline is not None and time.monotonic() >= deadline):
                return info

    async def wait(self, timeout: float | None = None) -> JobState:
        """Like wait_info, returning only the state the wait ended in."""
        return (await self.wait_info(timeout)).state

    # -- notifications (IBackgroundCopyCallback, SetNotifyFlags, SetNotifyCmdLine; see client.notify) --

    async def notify_flags(self) -> NotifyFlags:
        return NotifyFlags((await self.info()).notify_flags)

    async def set_notify_flags(self, flags: NotifyFlags | int) -> JobInfo:
        return await self.set_properties(notify_flags=int(flags))

    async def notify_cmdline(self) -> list[str] | None:
        """GetNotifyCmdLine as [program, *parameters], or None."""
        return (await self.info()).notify_cmdline

    async def set_notify_cmdline(self, program: str, parameters: Iterable[str] | str = ()) -> JobInfo:
        """SetNotifyCmdLine: an absolute program path run as the owner, no shell; `parameters` are its
        arguments after argv[0], or BITS's one string that starts with the program ("prog {JOB}")."""
        return await self._call("PUT", "/notify-cmdline", _request(
            NotifyCmdLine, program=program, parameters=parameters if isinstance(parameters, str) else list(parameters)))

    async def clear_notify_cmdline(self) -> JobInfo:
        return await self._call("DELETE", "/notify-cmdline")

    def notify_interface(self) -> object | None:
        """GetNotifyInterface: the object this client registered for the job, or None."""
        return self._notifiers.interface(self.id)

    async def notify_interface_registered(self) -> bool:
        """bitsadmin /getnotifyinterface: whether any client has a callback interface registered for the job."""
        return (await self._connection.request("GET", self._path + "/notify-interface", NotifyInterface)).registered

    async def set_notify_interface(self, interface: object | None, *, callback_job: object | None = None,
                                   in_thread: bool = False) -> None:
        """SetNotifyInterface: call interface's job_transferred(job), job_error(job, error), ... (plain or async)
        for the events the notify flags ask for, until replaced, set to None, or the manager closes.

        Returns once the daemon has registered it. callback_job is what the methods get as `job` (default: this
        AsyncJob); in_thread runs plain methods in a worker thread (the blocking Job does, so they may block).
        """
        await self._notifiers.set(self._connection, self.id, interface, callback_job or self, in_thread)

    async def events(self, since: int = 0) -> AsyncIterator[EventInfo]:
        """The job's events after `since` (0: its whole stored history), live, ending after a final state."""
        async for event in follow(self._connection, since=since, job=self.id):
            yield event
            if event.state.is_final:
                return


class AsyncManager:
    """IBackgroundCopyManager over asyncio. Finds (or starts) the daemon on first use."""

    def __init__(self, socket_path: LocalPath | None = None, autostart: bool = True) -> None:
        self._socket_path = socket_path
        self._autostart = autostart
        self._connection: Connection | None = None
        self._connecting = asyncio.Lock()
        self._notifiers = Notifiers()

    async def __aenter__(self) -> AsyncManager:
        await self.connection()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def socket_path(self) -> Path | None:
        """The socket in use, once connected."""
        return None if self._connection is None else self._connection.socket_path

    async def connection(self) -> Connection:
        """The daemon connection, found (or the daemon started) the first time it is needed."""
        async with self._connecting:
            if self._connection is None:
                path = await asyncio.to_thread(discovery.locate, self._socket_path, self._autostart)
                self._connection = Connection(path)
            return self._connection

    async def close(self) -> None:
        await self._notifiers.aclose()
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def status(self) -> DaemonStatus:
        return await (await self.connection()).request("GET", "/v1/status", DaemonStatus)

    async def create_job(
        self,
        name: str,
        type: JobType = JobType.DOWNLOAD,
        *,
        priority: JobPriority = JobPriority.NORMAL,
        description: str = "",
    ) -> AsyncJob:
        """A new job, SUSPENDED until resumed, as with CreateJob."""
        connection = await self.connection()
        request = _request(CreateJobRequest, name=name, type=type, priority=priority, description=description)
        return AsyncJob(connection, await connection.request("POST", "/v1/jobs", JobInfo, body=request),
                        self._notifiers)

    async def get_job(self, id_or_name: str) -> AsyncJob:
        """A job by GUID (braces and case optional) or by display name when that name is unique."""
        connection = await self.connection()
        info = await connection.request("GET", job_path(id_or_name), JobInfo)
        return AsyncJob(connection, info, self._notifiers)

    async def jobs(self, all_users: bool = False) -> list[AsyncJob]:
        """EnumJobs: the caller's jobs, or everybody's (administrators only) with all_users."""
        connection = await self.connection()
        params = {"all_users": "true" if all_users else "false"}
        listing = await connection.request("GET", "/v1/jobs", JobList, params=params)
        return [AsyncJob(connection, info, self._notifiers) for info in listing.jobs]

    async def redeem_token_ticket(self, job_id: str, ticket: str) -> HelperTokenUser:
        """Become the helper of another user's job (by GUID) with the ticket its owner gave you."""
        return await redeem_ticket((await self.connection()).socket_path, job_id, ticket)

    async def logon(self, username: str, password: str) -> LogonResult:
        """LogonUser: the daemon checks the password with PAM (failures are rate-limited); nothing is kept."""
        body = _request(LogonRequest, username=username, password=password)
        return await (await self.connection()).request("POST", "/v1/logon", LogonResult, body=body)

    async def events(self, since: int | None = None, job: str | None = None, all_users: bool = False,
                     follow_live: bool = True, idle: float | None = None, *,
                     on_lost: Callable[[str], None] | None = None,
                     on_back: Callable[[], None] | None = None,
                     on_exchange: Callable[[ExchangeInfo], None] | None = None) -> AsyncIterator[EventInfo | None]:
        """Your events (one job's with job=, everybody's with all_users for an administrator) after `since`
        (None: from now on), reconnecting across daemon restarts. follow_live=False: the stored ones, then stop.
        With idle, None comes whenever that many seconds pass without an event. on_lost(reason) is called
        when the daemon goes away, on_back() when it answers again, on_exchange(info) with each HTTP request
        of the transfers and its answer."""
        events = follow(await self.connection(), since=since, job=job, all_users=all_users,
                        keep_following=follow_live, on_lost=on_lost, on_back=on_back,
                        on_exchange=on_exchange)
        async for event in (events if idle is None else with_idle(events, idle)):
            yield event
