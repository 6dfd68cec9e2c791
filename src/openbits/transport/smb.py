"""SMB downloads (`\\\\server\\share\\path` and `smb://server[:port]/share/path`) with smbprotocol.

Each transfer has a connection, session and tree of its own (smbclient's process-wide session cache would
let one job's logon serve another's). smbprotocol blocks, so every call runs in the SMB pool; bytes are
written into the temporary file on the loop as for file://. The remote file's version is its size and
last-write time, BITS's file consistency: a resume continues only while both are unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from ..enums import ErrorContext
from ..errors import ErrorCode, TransferError
from .base import DownloadSink, RemoteValidator, Throttle
from .durable import DurableWriter
from .file import pump

#: SMB2 reads at most this many bytes at once (and no more than the server's max_read_size)
READ_SIZE = 1024 * 1024
SMB_PORT = 445
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


def smb_error(exc: BaseException, where: SmbPath) -> TransferError:
    """smbprotocol's failures as BITS reports them for a UNC path."""
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
        return TransferError(ErrorCode.E_ACCESSDENIED, f"The server denies reading {shown} to the job's user",
                             ErrorContext.REMOTE_FILE, transient=False)
    if isinstance(exc, smb.FileIsADirectory):
        return TransferError(ErrorCode.E_INVALIDARG, f"{shown} is a folder, not a file", ErrorContext.REMOTE_FILE,
                             transient=False)
    return TransferError(ErrorCode.ERROR_BAD_NETPATH, f"Reading {shown} failed ({exc or type(exc).__name__}); the job "
                         "retries later", ErrorContext.GENERAL_TRANSPORT, transient=True)


class _Remote:
    """One open file on a share, with the connection, session and tree that are its own."""

    def __init__(self, where: SmbPath, username: str, password: str, protocol: str, timeout: float) -> None:
        from smbprotocol.connection import Connection
        from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes, FilePipePrinterAccessMask,
                                      ImpersonationLevel, Open, ShareAccess)
        from smbprotocol.session import Session
        from smbprotocol.tree import TreeConnect

        self._connection = Connection(uuid.uuid4(), where.server, where.port)
        self._connection.connect(timeout=timeout)
        try:
            self._session = Session(self._connection, username, password, auth_protocol=protocol)
            self._session.connect()
            self._tree = TreeConnect(self._session, f"\\\\{where.server}\\{where.share}")
            self._tree.connect()
            self._file = Open(self._tree, where.path)
            self._file.create(ImpersonationLevel.Impersonation, FilePipePrinterAccessMask.GENERIC_READ,
                              FileAttributes.FILE_ATTRIBUTE_NORMAL, ShareAccess.FILE_SHARE_READ,
                              CreateDisposition.FILE_OPEN, CreateOptions.FILE_NON_DIRECTORY_FILE)
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

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self._connection.disconnect()


async def copy_smb(url: str, fd: int, offset: int, sink: DownloadSink, throttle: Throttle | None, *,
                   validator: RemoteValidator | None, credential: tuple[str, str, str], pool: ThreadPoolExecutor,
                   sync_pool: ThreadPoolExecutor, timeout: float = 30.0) -> RemoteValidator:
    """Copy the SMB file into `fd` from `offset` on (from zero if it changed); `credential` is (user, password,
    "ntlm" or "negotiate")."""
    try:
        where = SmbPath.parse(url)
    except ValueError as exc:
        raise TransferError(ErrorCode.ERROR_INTERNET_INVALID_URL, str(exc), transient=False) from None
    loop = asyncio.get_running_loop()

    async def call(function: Callable[..., T], *args: Any) -> T:
        try:
            return await loop.run_in_executor(pool, function, *args)
        except TransferError:
            raise
        except Exception as exc:  # noqa: BLE001 - smbprotocol's errors, and the socket's
            raise smb_error(exc, where) from None

    remote = await call(_Remote, where, *credential, timeout)
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
