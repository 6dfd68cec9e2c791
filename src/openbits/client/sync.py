"""The blocking client: a thin facade that runs the asyncio client on one private event-loop thread.

There is no second implementation here; every call is an `AsyncManager` or
`AsyncJob` coroutine submitted to that loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from ..schema.models import DaemonStatus, EventInfo, ExchangeInfo, HelperTokenUser, JobInfo, LogonResult
from ..enums import (AuthScheme, AuthTarget, CertStoreLocation, JobPriority, JobState, JobType, NotifyFlags, ProxyUsage,
                     TokenFlags)
from ..errors import BitsError
from ..model.job import JOB_PROPERTIES
from .aio import AsyncJob, AsyncManager, LocalPath
from .reader import open_file
from .tokens import AsyncTokenOptions
from .types import File, Progress, ProxySettings, ReplyProgress

T = TypeVar("T")


class _LoopThread:
    """An event loop running forever on a daemon thread, so blocking callers can drive coroutines."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="openbits-client", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the loop and block for its result; Ctrl-C here cancels it there."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def iterate(self, source: AsyncIterator[T]) -> Iterator[T]:
        """Step an async iterator on the loop, one blocking next() at a time; closing this closes it."""
        try:
            while True:
                try:
                    yield self.run(anext(source))
                except StopAsyncIteration:
                    return
        finally:
            if self._loop.is_running():  # not after Manager.close()
                self.run(_aclose(source))

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


async def _aclose(source: AsyncIterator[T]) -> None:
    """Close an async generator whose step a Ctrl-C cancelled: the cancellation unwinds on the loop first
    (closing it before that fails with "asynchronous generator is already running")."""
    while getattr(source, "ag_running", False):
        await asyncio.sleep(0)
    await source.aclose()  # type: ignore[attr-defined]


class _Setting:
    """A job property read from the daemon on every get and written with one PATCH on every set."""

    def __init__(self, name: str, doc: str) -> None:
        self._field = name
        self.__doc__ = doc

    def __get__(self, job: Job | None, owner: type | None = None) -> Any:
        if job is None:
            return self
        return getattr(job.info(), self._field)

    def __set__(self, job: Job, value: Any) -> None:
        job.set_properties(**{self._field: value})


class Job:
    """A blocking handle on one job; see AsyncJob for the semantics of each call.

    Every property the description marks as a client attribute (model/properties.py) is an attribute
    here: `job.priority = JobPriority.HIGH`, `job.minimum_retry_delay`, ...
    """

    def __init__(self, loop: _LoopThread, job: AsyncJob) -> None:
        self._loop = loop
        self._job = job

    def __repr__(self) -> str:
        return f"<Job {self.id} {self._job.last_info.name!r}>"

    @property
    def id(self) -> str:
        return self._job.id

    @property
    def type(self) -> JobType:
        return self._job.type

    @property
    def owner(self) -> str:
        return self.info().owner

    @property
    def state(self) -> JobState:
        return self._loop.run(self._job.state())

    @property
    def progress(self) -> Progress:
        return self._loop.run(self._job.progress())

    @property
    def error(self) -> BitsError | None:
        return self._loop.run(self._job.error())

    @property
    def files(self) -> list[File]:
        """The files now; a file's open() reads it while it downloads (client/reader.py)."""
        return [dataclasses.replace(f, opener=functools.partial(open_file, self, i))
                for i, f in enumerate(self._loop.run(self._job.files()))]

    def request_file_ranges(self, file_index: int, ranges: Iterable[tuple[int, int]]) -> JobInfo:
        return self._loop.run(self._job.request_file_ranges(file_index, ranges))

    def update_download_position(self, file_index: int, offset: int) -> JobInfo:
        return self._loop.run(self._job.update_download_position(file_index, offset))

    @property
    def last_info(self) -> JobInfo:
        return self._job.last_info

    def info(self) -> JobInfo:
        return self._loop.run(self._job.info())

    def add_file(self, remote_url: str, local_path: LocalPath, ranges: Iterable[tuple[int, int]] | None = None,
                 checksums: Iterable[str] | None = None) -> JobInfo:
        return self._loop.run(self._job.add_file(remote_url, local_path, ranges, checksums))

    def set_remote_name(self, file_index: int, remote_url: str) -> JobInfo:
        return self._loop.run(self._job.set_remote_name(file_index, remote_url))

    def set_mirrors(self, file_index: int, mirrors: Iterable[str], size: int | None = None,
                    piece_length: int | None = None, piece_hashes: Iterable[str] | None = None) -> JobInfo:
        return self._loop.run(self._job.set_mirrors(file_index, mirrors, size, piece_length, piece_hashes))

    def replace_remote_prefix(self, old_prefix: str, new_prefix: str) -> int:
        return self._loop.run(self._job.replace_remote_prefix(old_prefix, new_prefix))

    def set_validation_state(self, file_index: int, valid: bool) -> JobInfo:
        return self._loop.run(self._job.set_validation_state(file_index, valid))

    def add_files(self, files: Iterable[tuple[str, LocalPath]],
                  checksums: Iterable[Iterable[str] | None] | None = None) -> JobInfo:
        return self._loop.run(self._job.add_files(list(files), checksums))

    def set_properties(self, **changes: Any) -> JobInfo:
        return self._loop.run(self._job.set_properties(**changes))

    def resume(self) -> JobInfo:
        return self._loop.run(self._job.resume())

    def suspend(self) -> JobInfo:
        return self._loop.run(self._job.suspend())

    def cancel(self) -> JobInfo:
        return self._loop.run(self._job.cancel())

    def complete(self) -> JobInfo:
        return self._loop.run(self._job.complete())

    def take_ownership(self) -> JobInfo:
        return self._loop.run(self._job.take_ownership())

    def token_options(self) -> TokenOptions:
        return TokenOptions(self._loop, self._loop.run(self._job.token_options()))

    def token_ticket(self) -> str:
        return self._loop.run(self._job.token_ticket())

    @property
    def proxy_settings(self) -> ProxySettings:
        return self._loop.run(self._job.proxy_settings())

    def set_proxy_settings(self, usage: ProxyUsage, proxy_list: str | None = None,
                           bypass_list: str | None = None) -> JobInfo:
        return self._loop.run(self._job.set_proxy_settings(usage, proxy_list, bypass_list))

    def set_credentials(self, target: AuthTarget, scheme: AuthScheme, username: str, password: str) -> JobInfo:
        return self._loop.run(self._job.set_credentials(target, scheme, username, password))

    def remove_credentials(self, target: AuthTarget, scheme: AuthScheme) -> JobInfo:
        return self._loop.run(self._job.remove_credentials(target, scheme))

    def set_client_certificate(self, *, path: LocalPath | None = None, thumbprint: str | None = None,
                               subject: str | None = None, store: CertStoreLocation = CertStoreLocation.CURRENT_USER,
                               passphrase: str | None = None) -> JobInfo:
        return self._loop.run(self._job.set_client_certificate(path=path, thumbprint=thumbprint, subject=subject,
                                                               store=store, passphrase=passphrase))

    def remove_client_certificate(self) -> JobInfo:
        return self._loop.run(self._job.remove_client_certificate())

    @property
    def reply_file_name(self) -> str | None:
        return self._loop.run(self._job.reply_file_name())

    @reply_file_name.setter
    def reply_file_name(self, path: LocalPath | None) -> None:
        self._loop.run(self._job.set_reply_file_name(path))

    @property
    def reply_progress(self) -> ReplyProgress:
        return self._loop.run(self._job.reply_progress())

    def get_reply_data(self) -> bytes:
        return self._loop.run(self._job.reply_data())

    def wait_info(self, timeout: float | None = None) -> JobInfo:
        return self._loop.run(self._job.wait_info(timeout))

    def wait(self, timeout: float | None = None) -> JobState:
        return self._loop.run(self._job.wait(timeout))

    # -- notifications: see AsyncJob; callbacks run on a client thread and get this blocking Job --

    @property
    def notify_flags(self) -> NotifyFlags:
        return self._loop.run(self._job.notify_flags())

    @notify_flags.setter
    def notify_flags(self, flags: NotifyFlags | int) -> None:
        self._loop.run(self._job.set_notify_flags(flags))

    @property
    def notify_cmdline(self) -> list[str] | None:
        return self._loop.run(self._job.notify_cmdline())

    def set_notify_cmdline(self, program: str, parameters: Iterable[str] | str = ()) -> JobInfo:
        return self._loop.run(self._job.set_notify_cmdline(program, parameters))

    def clear_notify_cmdline(self) -> JobInfo:
        return self._loop.run(self._job.clear_notify_cmdline())

    @property
    def notify_interface(self) -> object | None:
        return self._job.notify_interface()

    def notify_interface_registered(self) -> bool:
        return self._loop.run(self._job.notify_interface_registered())

    def set_notify_interface(self, interface: object | None) -> None:
        self._loop.run(self._job.set_notify_interface(interface, callback_job=self, in_thread=True))

    def events(self, since: int = 0) -> Iterator[EventInfo]:
        return self._loop.iterate(self._job.events(since))



for _property in JOB_PROPERTIES:
    if _property.how.client_attribute:
        setattr(Job, _property.name, _Setting(_property.name, _property.how.doc))

class TokenOptions:
    """A blocking IBitsTokenOptions; see AsyncTokenOptions."""

    def __init__(self, loop: _LoopThread, options: AsyncTokenOptions) -> None:
        self._loop = loop
        self._options = options

    def set_helper_token(self, username: str | None = None, password: str | None = None) -> HelperTokenUser:
        return self._loop.run(self._options.set_helper_token(username, password))

    def clear_helper_token(self) -> None:
        self._loop.run(self._options.clear_helper_token())

    def helper_token_user(self) -> HelperTokenUser | None:
        return self._loop.run(self._options.helper_token_user())

    def helper_token_flags(self) -> TokenFlags:
        return self._loop.run(self._options.helper_token_flags())

    def set_helper_token_flags(self, flags: TokenFlags | int) -> TokenFlags:
        return self._loop.run(self._options.set_helper_token_flags(flags))


class Manager:
    """A blocking IBackgroundCopyManager. Finds (or starts) the daemon on first use; close() it, or use `with`."""

    def __init__(self, socket_path: LocalPath | None = None, autostart: bool = True) -> None:
        self._loop = _LoopThread()
        self._manager = AsyncManager(socket_path, autostart)
        self._closed = False

    def __enter__(self) -> Manager:
        try:
            self._loop.run(self._manager.connection())
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    @property
    def socket_path(self) -> Path | None:
        return self._manager.socket_path

    def close(self) -> None:
        """Close the connection and stop the private loop; closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        self._loop.run(self._manager.close())
        self._loop.stop()

    def status(self) -> DaemonStatus:
        return self._loop.run(self._manager.status())

    def create_job(
        self,
        name: str,
        type: JobType = JobType.DOWNLOAD,
        *,
        priority: JobPriority = JobPriority.NORMAL,
        description: str = "",
    ) -> Job:
        job = self._manager.create_job(name, type, priority=priority, description=description)
        return Job(self._loop, self._loop.run(job))

    def get_job(self, id_or_name: str) -> Job:
        return Job(self._loop, self._loop.run(self._manager.get_job(id_or_name)))

    def jobs(self, all_users: bool = False) -> list[Job]:
        return [Job(self._loop, job) for job in self._loop.run(self._manager.jobs(all_users))]

    def redeem_token_ticket(self, job_id: str, ticket: str) -> HelperTokenUser:
        return self._loop.run(self._manager.redeem_token_ticket(job_id, ticket))

    def logon(self, username: str, password: str) -> LogonResult:
        return self._loop.run(self._manager.logon(username, password))

    def events(self, since: int | None = None, job: str | None = None, all_users: bool = False,
               follow_live: bool = True, idle: float | None = None, *,
               on_lost: Callable[[str], None] | None = None,
               on_back: Callable[[], None] | None = None,
               on_exchange: Callable[[ExchangeInfo], None] | None = None) -> Iterator[EventInfo | None]:
        """See AsyncManager.events; the on_ callbacks run on the client's loop thread."""
        return self._loop.iterate(self._manager.events(since, job, all_users, follow_live, idle,
                                                       on_lost=on_lost, on_back=on_back, on_exchange=on_exchange))
