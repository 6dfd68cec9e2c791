"""SMB downloads and uploads (`\\\\server\\share\\path` and `smb://server[:port]/share/path`) with smbprotocol.

Each transfer has a connection, session and tree of its own (smbclient's process-wide session cache would
let one job's logon serve another's). smbprotocol blocks, so every call runs in the SMB pool; bytes are
written into the temporary file on the loop as for file://. The remote file's version is its size and
last-write time, BITS's file consistency: a resume continues only while both are unchanged.

An upload is a plain file copy (BITS's semantics for SMB): the bytes go into a hidden file beside the remote
name, whose size on the server is the upload's progress and where it resumes (as the Ack's received range is
for the upload protocol); the last one written, it gets the local file's last-write time (BITS propagates
time stamps) and replaces the remote name in one rename.

A job without credentials logs on with its network identity's Kerberos ticket: the security context runs in
that identity's broker (identity/gss.py) and hands the daemon only its tokens and, complete, the session key
the SMB session signs with. smbprotocol takes its context from `spnego.client`, so its module sees a
`spnego` that answers a `_BrokerLogon` given as the user name with the broker's context (installed once).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import os
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from ..enums import ErrorContext
from ..errors import BitsError, ErrorCode, TransferError
from .base import DownloadSink, RemoteValidator, Throttle
from .credentials import SecurityContext
from .durable import DurableWriter
from .file import pump

#: SMB2 reads at most this many bytes at once (and no more than the server's max_read_size)
READ_SIZE = 1024 * 1024
#: bytes one write of a throttled upload holds, so a bandwidth cap is smooth
THROTTLED_WRITE = 64 * 1024
SMB_PORT = 445
#: FILETIME (100 ns since 1601) of the Unix epoch
_FILETIME_EPOCH = 116444736000000000
T = TypeVar("T")


def is_smb(url: str) -> bool:
    return url.startswith("\\\\") or url[:6].lower() == "smb://"


@dataclass(frozen=True)
class SmbPath:
    server: str
    port: int
    share: str
    #: the path inside the share, backslash-separated
    path: str

    @classmethod
    def parse(cls, url: str) -> SmbPath:
        """Either form of remote name; ValueError with what is missing."""
        if url.startswith("\\\\"):
            server, _, rest = url[2:].partition("\\")
            share, _, path = rest.partition("\\")
            port = SMB_PORT
        else:
            parts = urlsplit(url)
            server, port = parts.hostname or "", parts.port or SMB_PORT
            share, _, path = unquote(parts.path).lstrip("/").partition("/")
            path = path.replace("/", "\\")
        if not server or not share or not path.strip("\\"):
            raise ValueError(f"{url!r} needs a server, a share and a file: \\\\server\\share\\path or "
                             "smb://server/share/path")
        return cls(server, port, share, path.strip("\\"))

    def __str__(self) -> str:
        return f"\\\\{self.server}\\{self.share}\\{self.path}"


def smb_error(exc: BaseException, where: SmbPath, *, writing: bool = False) -> TransferError:
    """smbprotocol's failures as BITS reports them for a UNC path (`writing`: of an upload)."""
    from smbprotocol import exceptions as smb

    shown = str(where)
    if isinstance(exc, (smb.LogonFailure, smb.SMBAuthenticationError, smb.PasswordExpired)):
        return TransferError(ErrorCode.ERROR_LOGON_FAILURE, f"The server {where.server} refused the logon for {shown} "
                             "(wrong user name or password): setcredentials JOB SERVER NTLM USER", ErrorContext.REMOTE_FILE,
                             transient=False)
    if isinstance(exc, smb.BadNetworkName):
        return TransferError(ErrorCode.ERROR_BAD_NET_NAME, f"The server {where.server} has no share {where.share!r} "
                             f"({shown}); check the share's name", ErrorContext.REMOTE_FILE, transient=False)
    if isinstance(exc, (smb.ObjectNameNotFound, smb.ObjectPathNotFound, smb.NoSuchFile)):
        return TransferError(ErrorCode.ERROR_FILE_NOT_FOUND, f"{shown} does not exist", ErrorContext.REMOTE_FILE,
                             transient=False)
    if isinstance(exc, (smb.AccessDenied, smb.PrivilegeNotHeld)):
        return TransferError(ErrorCode.E_ACCESSDENIED, f"The server denies {'writing' if writing else 'reading'} "
                             f"{shown} to the job's user",
                             ErrorContext.REMOTE_FILE, transient=False)
    if isinstance(exc, smb.FileIsADirectory):
        return TransferError(ErrorCode.E_INVALIDARG, f"{shown} is a folder, not a file", ErrorContext.REMOTE_FILE,
                             transient=False)
    return TransferError(ErrorCode.ERROR_BAD_NETPATH, f"{'Writing' if writing else 'Reading'} {shown} failed ({exc or type(exc).__name__}); the job "
                         "retries later", ErrorContext.GENERAL_TRANSPORT, transient=True)


def _parsed(url: str) -> SmbPath:
    try:
        return SmbPath.parse(url)
    except ValueError as exc:
        raise TransferError(ErrorCode.ERROR_INTERNET_INVALID_URL, str(exc), transient=False) from None


def _in_pool(pool: ThreadPoolExecutor, where: SmbPath, *, writing: bool = False) -> Callable[..., Awaitable[Any]]:
    """Runs a blocking smbprotocol call in the SMB pool; its failure comes out as the job's error."""
    loop = asyncio.get_running_loop()

    async def call(function: Callable[..., T], *args: Any) -> T:
        try:
            return await loop.run_in_executor(pool, function, *args)
        except TransferError:
            raise
        except BitsError as exc:  # the network identity's logon (no ticket, say): as the broker tells it
            raise TransferError(exc.code, exc.description, ErrorContext.REMOTE_FILE, transient=False) from None
        except Exception as exc:  # noqa: BLE001 - smbprotocol's errors, and the socket's
            raise smb_error(exc, where, writing=writing) from None

    return call


#: the job's (user, password, "ntlm" or "negotiate"), or a context of its network identity for a server's host
SmbLogon = tuple[str, str, str] | Callable[[str], SecurityContext]


class _BrokerLogon:
    """A security context on the event loop, stepped from the SMB pool's thread as smbprotocol steps spnego's."""

    def __init__(self, context: SecurityContext, loop: asyncio.AbstractEventLoop) -> None:
        self._context, self._loop = context, loop

    def _run(self, work: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()  # type: ignore[arg-type]

    @property
    def complete(self) -> bool:
        return self._context.complete

    def step(self, token: bytes | None = None) -> bytes | None:
        # Kerberos: the server's only token is its answer to ours, its proof of who it is (mutual authentication)
        return self._run(self._context.step(token, token is not None))

    @property
    def session_key(self) -> bytes:
        return self._run(self._context.session_key())  # type: ignore[attr-defined]

    def close(self) -> None:
        self._run(self._context.close())


class _Spnego:
    """The `spnego` smbprotocol.session sees: pyspnego's, but a _BrokerLogon user name is that context."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def client(self, username: Any = None, *args: Any, **kwargs: Any) -> Any:
        if isinstance(username, _BrokerLogon):
            return username
        return self._real.client(username, *args, **kwargs)


def _session(connection: Any, logon: SmbLogon, host: str, loop: asyncio.AbstractEventLoop) -> Any:
    """An authenticated SMB session on `connection`."""
    from smbprotocol import session

    if callable(logon):
        if not isinstance(session.spnego, _Spnego):
            session.spnego = _Spnego(session.spnego)
        context = _BrokerLogon(logon(host), loop)
        try:
            made = session.Session(connection, context, None, auth_protocol="kerberos")
            made.connect()
        finally:
            context.close()
        return made
    username, password, protocol = logon
    made = session.Session(connection, username, password, auth_protocol=protocol)
    made.connect()
    return made


class _Remote:
    """One open file on a share, with the connection, session and tree that are its own; `write`: opened (made
    when missing) to be written, else to be read."""

    def __init__(self, where: SmbPath, logon: SmbLogon, loop: asyncio.AbstractEventLoop, timeout: float,
                 write: bool = False) -> None:
        from smbprotocol.connection import Connection
        from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes, FilePipePrinterAccessMask,
                                      ImpersonationLevel, Open, ShareAccess)
        from smbprotocol.tree import TreeConnect

        self._connection = Connection(uuid.uuid4(), where.server, where.port)
        self._connection.connect(timeout=timeout)
        try:
            self._session = _session(self._connection, logon, where.server, loop)
            self._tree = TreeConnect(self._session, f"\\\\{where.server}\\{where.share}")
            self._tree.connect()
            self._file = Open(self._tree, where.path)
            access = FilePipePrinterAccessMask
            self._file.create(ImpersonationLevel.Impersonation,
                              access.GENERIC_READ | access.GENERIC_WRITE | access.DELETE if write
                              else access.GENERIC_READ, FileAttributes.FILE_ATTRIBUTE_NORMAL,
                              ShareAccess.FILE_SHARE_READ,
                              CreateDisposition.FILE_OPEN_IF if write else CreateDisposition.FILE_OPEN,
                              CreateOptions.FILE_NON_DIRECTORY_FILE)
        except BaseException:
            self._connection.disconnect()
            raise
        self.read_size = min(READ_SIZE, self._connection.max_read_size)

    def validator(self) -> RemoteValidator:
        """Size and last-write time, as the server answered the open."""
        size, written = self._file.end_of_file, self._file.last_write_time
        return RemoteValidator(size, f'"{int(written.timestamp() * 1e6):x}-{size:x}"',
                               email.utils.format_datetime(written, usegmt=True))

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self._file.read(offset, length))

    def write(self, offset: int, data: bytes) -> None:
        self._file.write(data, offset)

    def discard(self) -> None:
        """The file is deleted when closed."""
        from smbprotocol.file_info import FileDispositionInformation

        info = FileDispositionInformation()
        info["delete_pending"] = True
        self._set_info(info)

    def truncate(self) -> None:
        from smbprotocol.file_info import FileEndOfFileInformation

        info = FileEndOfFileInformation()
        info["end_of_file"] = 0
        self._set_info(info)

    def finish(self, mtime_ns: int, name: str) -> None:
        """Flushed, stamped with the local last-write time, and renamed to `name` (inside the share), replacing it."""
        from smbprotocol.file_info import FileBasicInformation, FileRenameInformation

        self._file.flush()
        basic = FileBasicInformation()
        basic["creation_time"] = basic["last_access_time"] = basic["change_time"] = 0  # 0: unchanged
        basic["last_write_time"] = _FILETIME_EPOCH + mtime_ns // 100
        basic["file_attributes"] = 0
        self._set_info(basic)
        rename = FileRenameInformation()
        rename["replace_if_exists"] = True
        rename["file_name"] = name
        self._set_info(rename)

    def _set_info(self, info: Any) -> None:
        from smbprotocol.open import SMB2SetInfoRequest

        request = SMB2SetInfoRequest()
        request["info_type"], request["file_info_class"] = info.INFO_TYPE, info.INFO_CLASS
        request["file_id"], request["buffer"] = self._file.file_id, info
        sent = self._connection.send(request, sid=self._session.session_id, tid=self._tree.tree_connect_id)
        self._connection.receive(sent)

    @property
    def size(self) -> int:
        return int(self._file.end_of_file)

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self._connection.disconnect()


async def copy_smb(url: str, fd: int, offset: int, sink: DownloadSink, throttle: Throttle | None, *,
                   validator: RemoteValidator | None, credential: SmbLogon, pool: ThreadPoolExecutor,
                   sync_pool: ThreadPoolExecutor, timeout: float = 30.0) -> RemoteValidator:
    """Copy the SMB file into `fd` from `offset` on (from zero if it changed), logged on with `credential`."""
    where = _parsed(url)
    loop = asyncio.get_running_loop()
    call = _in_pool(pool, where)
    remote = await call(_Remote, where, credential, loop, timeout)
    writer = DurableWriter(fd, offset, sink.durable, label=str(where), pool=sync_pool)
    try:
        current = remote.validator()
        start = offset if validator is not None and validator == current else 0
        sink.started(current, start)
        if start < offset:
            writer.restart()

        async def read(at: int) -> bytes:
            return await call(remote.read, at, min(remote.read_size, current.size - at))

        await pump(read, writer, current.size, sink, throttle)
        if writer.offset != current.size:
            raise TransferError(ErrorCode.ERROR_BAD_NETPATH, f"{where} ended after {writer.offset} of {current.size} "
                                "bytes; the job resumes from there", ErrorContext.GENERAL_TRANSPORT, transient=True)
        sink.received(writer.offset)
        await writer.flush()
        return current
    finally:
        await writer.close()
        with contextlib.suppress(Exception):  # a broken connection has nothing left to close
            await loop.run_in_executor(pool, remote.close)


def upload_name(where: SmbPath, tag: str) -> SmbPath:
    """The hidden file beside the remote name that an upload writes before it takes the name."""
    folder, _, name = where.path.rpartition("\\")
    return SmbPath(where.server, where.port, where.share, (folder + "\\" if folder else "") + f".{name}.{tag}.bits")


async def upload_smb(url: str, fd: int, size: int, mtime_ns: int, tag: str, acknowledged: Callable[[int], None],
                     throttle: Throttle | None, *, credential: SmbLogon, pool: ThreadPoolExecutor,
                     reads: ThreadPoolExecutor, timeout: float = 30.0) -> None:
    """Copy the local file (`fd`, `size` bytes, last written `mtime_ns`) to the SMB name `url`, resuming after
    what the hidden file `tag` names already holds; `acknowledged(offset)`: the share has bytes [0, offset)."""
    where = _parsed(url)
    loop = asyncio.get_running_loop()
    hidden, call = upload_name(where, tag), _in_pool(pool, where, writing=True)
    remote = await call(_Remote, hidden, credential, loop, timeout, True)
    try:
        offset = remote.size
        if offset > size:  # not this file's bytes
            await call(remote.truncate)
            offset = 0
        acknowledged(offset)
        while offset < size:
            length = min(remote.read_size, size - offset)
            if throttle is not None:
                length = min(length, THROTTLED_WRITE)
                await throttle.consume(length)
            data = await loop.run_in_executor(reads, os.pread, fd, length, offset)
            if len(data) != length:
                raise TransferError(ErrorCode.BG_E_LOCAL_FILE_CHANGED, f"the local file shrank during the upload to "
                                    f"{where}; cancel the job and upload the new version in a new one",
                                    ErrorContext.LOCAL_FILE, transient=False)
            await call(remote.write, offset, data)
            offset += length
            acknowledged(offset)
        await call(remote.finish, mtime_ns, where.path)
    finally:
        with contextlib.suppress(Exception):  # a broken connection has nothing left to close
            await loop.run_in_executor(pool, remote.close)


async def discard_smb_upload(url: str, tag: str, *, credential: SmbLogon, pool: ThreadPoolExecutor,
                             timeout: float = 30.0) -> None:
    """Remove what an upload to `url` left in its hidden file `tag` (TransferError when the share refuses)."""
    where = upload_name(_parsed(url), tag)
    loop = asyncio.get_running_loop()

    def discard() -> None:
        remote = _Remote(where, credential, loop, timeout, True)
        try:
            remote.discard()
        finally:
            remote.close()

    await _in_pool(pool, where, writing=True)(discard)
