"""Runs upload and upload-reply jobs: one file, sent with the BITS upload protocol.

The order of one attempt: check the local file against the size and time
stamp its upload began with, send it (continuing the recorded session), for
upload-reply fetch the reply into a temporary file beside the reply file,
then Close-Session. `session_closing` is made durable before Close-Session
goes out, so after a crash the job closes again (the server answers a
retried close) instead of mistaking a closed session for a lost one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Awaitable, Callable
import time

from ..enums import ErrorContext, JobState, JobType
from ..errors import BitsError, ErrorCode, TransferError
from ..transport.base import DownloadSpec, RemoteValidator, Throttle
from ..transport.router import Transport
from ..transport.smb import is_smb
from ..transport.upload import HostId, SessionLost, UploadClient, UploadSpec, local_file_changed
from ..model.job import Job
from ..model.jobfile import JobFile
from .access import JobAccess
from .proxy import PreconfiguredProxy, proxy_route
from .attempt import run_attempt
from .progress import SavedProgress
from .service import JobService
from .tokens import http_auth, smb_credential
from .certificates import tls_settings
from ..transport.tls import TlsSettings

#: Cancel waits this long for the server's Ack for Cancel-Session; the server expires the session otherwise.
CANCEL_TIMEOUT = 5.0


class _UploadSink(SavedProgress):
    """UploadSink: the session id is durable before the first fragment; acknowledged offsets are saved queued."""

    async def set_session(self, session_id: str | None, host: HostId | None = None) -> None:
        f = self._file
        f.forget_session()
        f.session_id = session_id
        if host is not None:
            f.session_host, f.session_host_fallback = host.host, host.fallback_timeout
        self._job.state = JobState.TRANSFERRING
        await self.flush()
        await self._service.commit(self._job, (self._index,))

    def acknowledged(self, offset: int) -> None:
        f = self._file
        self.moved(offset, f.bytes_transferred)
        f.bytes_transferred = f.durable_offset = offset
        self._save()


class _HostWatch:
    """HostWatch: the fallback timer of the session's BITS-Host-Id host, kept with the file (durable)."""

    def __init__(self, service: JobService, job: Job) -> None:
        self._service, self._job, self._file = service, job, job.files[0]

    async def unreachable(self) -> None:
        """BITS-Host-Id-Fallback-Timeout after the first failed connection, the packets go to the URL's own
        host again (which has the session, or answers that it does not: then a new session starts)."""
        f, now = self._file, time.time()
        if f.session_host_unreachable_since is None:
            f.session_host_unreachable_since = now
        elif f.session_host_fallback is not None and now - f.session_host_unreachable_since >= f.session_host_fallback:
            f.session_host = f.session_host_fallback = f.session_host_unreachable_since = None
        await self._service.commit(self._job, (0,))

    def reached(self) -> None:
        self._file.session_host_unreachable_since = None  # saved with the next progress


class _ReplySink(SavedProgress):
    """DownloadSink of the reply: BG_JOB_REPLY_PROGRESS in the job record."""

    def started(self, validator: RemoteValidator, offset: int) -> None:
        self._job.reply_bytes_total = max(0, validator.size)
        self._job.reply_bytes_transferred = offset
        self._save()

    def received(self, offset: int) -> None:
        self.moved(offset, self._job.reply_bytes_transferred)
        self._job.reply_bytes_transferred = offset

    def durable(self, offset: int) -> None:
        self._save()

    def redirected(self, url: str) -> None:
        """The reply's URL is no remote name of the job: nothing to report."""


class UploadRunner:
    """An attempt (core/attempt.py) whose bytes move with the BITS upload protocol."""

    def __init__(self, service: JobService, transport: Transport, job: Job, throttle: Throttle | None) -> None:
        self._service, self._transport, self._job, self._throttle = service, transport, job, throttle
        self._access = JobAccess(service, job)
        #: security flags, CA file and client certificate, read as the network identity when the attempt starts
        self._tls = TlsSettings()

    async def run(self) -> None:
        await run_attempt(self._service, self._job, self._transfer_file)

    async def _transfer_file(self) -> None:
        f = self._job.files[0]
        try:
            await self._transfer_files()
        except BitsError as exc:
            raise exc.of_file(0, f.remote_url, f.local_path)

    async def _transfer_files(self) -> None:
        job = self._job
        f = job.files[0]
        if f.completed:
            return
        if job.state == JobState.QUEUED:
            job.state = JobState.CONNECTING
        await self._check_local_file(f)
        if is_smb(f.remote_url):
            await self._copy_to_share(f)
            return
        headers = job.request_headers()
        self._tls = await tls_settings(self._service, job)
        client = upload_client(self._service, self._transport, job, self._access.preconfigured, self._tls)
        for _ in range(2):
            if not f.session_closing:
                reply_url = await self._send(client, f, headers)
                if job.type == JobType.UPLOAD_REPLY:
                    await self._fetch_reply(reply_url)
                f.session_closing = True
                await self._service.commit(job, (0,))
            assert f.session_id is not None, "a sent file has a session"
            try:
                await client.close_session(f.remote_url, f.session_id, f.session_host, headers)
            except SessionLost:
                # Expired or lost before the close took: the server has nothing, so the file goes again.
                f.forget_session()
                await self._service.commit(job, (0,))
                continue
            f.completed = True
            f.bytes_transferred = f.durable_offset = f.bytes_total
            await self._service.commit(job, (0,))
            return
        raise SessionLost(f"the server for {f.remote_url} lost the upload session twice; the job retries later")

    async def _check_local_file(self, f: JobFile) -> None:
        """Record the size and time stamp at the first attempt; after that, any change is an error."""
        info = await self._service.files_of(self._job).stat(f.local_path)
        if info is None:
            raise BitsError(ErrorCode.ERROR_FILE_NOT_FOUND, f"{f.local_path} no longer exists; an upload needs its "
                            "file until the job is transferred", ErrorContext.LOCAL_FILE)
        if f.local_mtime_ns is None:
            f.bytes_total, f.local_mtime_ns = info.size, info.mtime_ns
            await self._service.commit(self._job, (0,))
        elif (info.size, info.mtime_ns) != (f.bytes_total, f.local_mtime_ns):
            raise local_file_changed(f.local_path)

    async def _copy_to_share(self, f: JobFile) -> None:
        """An SMB remote name: a plain copy onto the share (transport/smb.py), resumed from what it holds."""
        assert f.local_mtime_ns is not None, "checked before sending"
        fd = await self._service.files_of(self._job).open_read(f.local_path)
        sink = _UploadSink(self._service, self._job, 0)
        self._job.state = JobState.TRANSFERRING
        try:
            await self._transport.upload_smb(f.remote_url, fd, f.bytes_total, f.local_mtime_ns, self._job.id[:8],
                                             sink.acknowledged, self._throttle, self._access.smb_credential())
        finally:
            os.close(fd)
            await sink.flush()
        f.completed = True
        await self._service.commit(self._job, (0,))

    async def _send(self, client: UploadClient, f: JobFile, headers: dict[str, str]) -> str | None:
        assert f.local_mtime_ns is not None, "checked before sending"
        fd = await self._service.files_of(self._job).open_read(f.local_path)
        sink = _UploadSink(self._service, self._job, 0)
        try:
            spec = UploadSpec(f.remote_url, fd, f.bytes_total, f.local_mtime_ns, f.local_path, f.session_id, headers,
                              f.session_host)
            return await client.upload(spec, sink, self._throttle)
        finally:
            os.close(fd)
            await sink.flush()

    async def _fetch_reply(self, url: str | None) -> None:
        """Download the reply into its temporary file; no reply URL means an empty reply (IBackgroundCopyJob2)."""
        job = self._job
        temp = job.reply_temp_path
        assert temp is not None, "an upload-reply job with a file has a reply name"
        fd = await self._service.files_of(job).open_temp(temp, create=True)
        sink = _ReplySink(self._service, job, 0)
        try:
            if url is None:
                job.reply_bytes_total = job.reply_bytes_transferred = 0
            else:
                spec = DownloadSpec(url, 0, None, job.request_headers(), tls=self._tls)
                validator = await self._transport.download(spec, fd, sink, self._throttle, self._access)
                job.reply_bytes_total = job.reply_bytes_transferred = validator.size
        except TransferError as exc:
            if exc.context == ErrorContext.REMOTE_FILE:
                exc.context = ErrorContext.REMOTE_APPLICATION  # the reply is the server application's
            raise
        finally:
            os.close(fd)
            await sink.flush()


def upload_client(service: JobService, transport: Transport, job: Job, preconfigured: PreconfiguredProxy | None,
                  tls: TlsSettings, *, watch_host: bool = True) -> UploadClient:
    """The job's file goes through the job's proxy (SetProxySettings, else PRECONFIG: BG_E_INVALID_PROXY_INFO
    for a bad list), with the job's credentials for the server and the proxy and its TLS settings; `watch_host` keeps the
    BITS-Host-Id fallback timer (not for Cancel: a job being cancelled is saved no more)."""
    url = job.files[0].remote_url
    proxy = proxy_route(job, preconfigured, url)
    return transport.upload_client(None if proxy is None else str(proxy.url), http_auth(service, job, url, proxy),
                                   _HostWatch(service, job) if watch_host else None, tls)


async def cancel_upload_session(transport: Transport, service: JobService, job: Job) -> Callable[[], Awaitable[None]]:
    """What Cancel tells the server of an upload, bound while the job still has its credentials: Cancel-Session
    for a session still open there, or the removal of an SMB upload's hidden file. Best effort, as a server
    expires a session anyway."""
    if job.type == JobType.DOWNLOAD or not job.files or job.files[0].completed:
        return _nothing
    f = job.files[0]
    try:
        if is_smb(f.remote_url):
            credential = smb_credential(service, job)
            return functools.partial(_best_effort, functools.partial(transport.discard_smb_upload, f.remote_url,
                                                                     job.id[:8], credential))
        if f.session_id is None:
            return _nothing
        client = upload_client(service, transport, job, service.config.proxy, await tls_settings(service, job),
                               watch_host=False)
    except BitsError:
        return _nothing
    return functools.partial(_best_effort, functools.partial(client.cancel_session, f.remote_url, f.session_id,
                                                             f.session_host, job.request_headers()))


async def _nothing() -> None:
    pass


async def _best_effort(tell: Callable[[], Awaitable[None]]) -> None:
    with contextlib.suppress(BitsError, TimeoutError):
        async with asyncio.timeout(CANCEL_TIMEOUT):
            await tell()
