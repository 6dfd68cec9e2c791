"""Local file operations of a job: the async interface the daemon uses, and the code the broker runs.

`LocalFiles` is what the daemon holds; `DiskFiles` does the same operations synchronously with
the credentials of the process it runs in, which is always a broker holding exactly one identity.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import stat as st
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from ..enums import ErrorContext
from ..errors import BitsError, ErrorCode
from ..model.identity import Identity

#: Mode of a completed new file when the job says none: readable by all, as with the usual umask 022.
FINAL_MODE = 0o644
TEMP_MODE = 0o600
#: names list_folder returns at most
MAX_FOLDER_NAMES = 1000


class Rename(NamedTuple):
    """One file Complete puts in place: a file replaced keeps its permission bits, a new one gets `mode`."""

    temp: str
    final: str
    mode: int = FINAL_MODE

_OPEN = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK  # NONBLOCK: a planted FIFO cannot hang the broker
_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW

_ACCESS = {errno.EACCES, errno.EPERM, errno.EROFS}
_FULL = {errno.ENOSPC, errno.EDQUOT}


@dataclass(frozen=True)
class FileStat:
    size: int
    mtime_ns: int
    uid: int
    mode: int


class LocalFiles(Protocol):
    """Every local path operation of a job goes through one of these, acting as exactly one identity."""

    identity: Identity

    async def check_destination(self, local_path: str) -> None: ...
    async def open_temp(self, temp_path: str, *, create: bool) -> int: ...
    async def open_temps(self, temp_paths: Sequence[str]) -> list[int | BitsError]: ...
    async def commit(self, renames: Sequence[tuple[str, str] | tuple[str, str, int]]) -> list[BitsError | None]: ...
    async def remove(self, paths: Sequence[str]) -> None: ...
    async def open_read(self, path: str) -> int: ...
    async def stat(self, path: str) -> FileStat | None: ...
    async def list_folder(self, path: str) -> list[str]: ...
    # the broker's other work as its identity: Negotiate/NTLM client contexts (identity/gss.py)
    async def negotiate_start(self, context_id: str, protocol: str, service: str, host: str,
                              username: str | None, password: str | None,
                              binding: str | None = None) -> tuple[str | None, str | None]: ...
    async def negotiate_step(self, context_id: str, token: str, final: bool) -> tuple[str | None, bool]: ...
    async def negotiate_key(self, context_id: str) -> str: ...
    async def negotiate_end(self, context_id: str) -> None: ...


def local_error(code: int, description: str) -> BitsError:
    return BitsError(code, description, ErrorContext.LOCAL_FILE)


#: What an existing destination is, for the refusal, by its S_IS* test.
_NOT_A_FILE = ((st.S_ISDIR, "folder"), (st.S_ISCHR, "character device"), (st.S_ISBLK, "block device"),
               (st.S_ISFIFO, "FIFO"), (st.S_ISSOCK, "socket"))


def _replaceable(path: str, mode: int) -> None:
    """Only a regular file (or a symbolic link, which Complete replaces, never follows) may be replaced.

    Complete renames over the destination, so `/dev/null` given as one would become a regular file, also
    for root: openbits refuses it rather than treating it as "discard the bytes".
    """
    for test, kind in _NOT_A_FILE:
        if test(mode):
            raise local_error(ErrorCode.E_INVALIDARG, f"{path} is an existing {kind}, which openbits never "
                              "replaces; name a regular file (to discard a download, save it and delete it)")


def _folder(path: str) -> str:
    """os.path.dirname of a _checked path (absolute, normalised), without its generality: Complete asks per file."""
    return path[: path.rindex("/")] or "/"


class DiskFiles:
    """The operations themselves, run inside a broker: the kernel checks every path as its user."""

    def __init__(self, user: str, strict: bool = False) -> None:
        self._user = user
        #: a job whose owner changed (TakeOwnership): no symlink in any component of its paths is followed,
        #: so the old owner cannot point the new owner's writes elsewhere by swapping a folder for a link
        self._strict = strict

    @contextlib.contextmanager
    def _at(self, path: str) -> Iterator[tuple[int | None, str]]:
        """(dir_fd, name) to reach path with: (None, path) normally; when strict, the folder's descriptor
        reached one component at a time with O_NOFOLLOW, and the last name."""
        if not self._strict:
            yield None, path
            return
        folder, name = os.path.split(path)
        fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in folder.strip("/").split("/") if folder != "/" else ():
                try:
                    step = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                        raise local_error(ErrorCode.E_ACCESSDENIED, f"{path}: {part} is a symbolic link or not a "
                                          "folder; after TakeOwnership openbits follows no symbolic link") from None
                    raise self._error(exc, "use the folder", folder, folder=True) from None
                os.close(fd)
                fd = step
            yield fd, name
        finally:
            os.close(fd)

    def check_destination(self, local_path: str) -> None:
        """Refuse at add_file time what would fail at Complete, with a reason the user can act on."""
        path = self._checked(local_path)
        parent = os.path.dirname(path)
        with self._at(path) as (folder, name):
            try:
                parent_st = os.stat(parent) if folder is None else os.fstat(folder)
            except OSError as exc:
                raise self._error(exc, "use the folder", parent, folder=True) from None
            if not st.S_ISDIR(parent_st.st_mode):
                raise local_error(ErrorCode.ERROR_PATH_NOT_FOUND,
                                  f"{parent} is not a folder, so {path} cannot be created")
            if not os.access(parent if folder is None else ".", os.W_OK | os.X_OK, dir_fd=folder):
                raise local_error(
                    ErrorCode.E_ACCESSDENIED, f"user {self._user} may not create files in {parent} (needed for {path})"
                )
            try:
                existing = os.stat(name, dir_fd=folder, follow_symlinks=False)
            except FileNotFoundError:
                return
            except OSError as exc:
                raise self._error(exc, "inspect", path) from None
        _replaceable(path, existing.st_mode)
        sticky = parent_st.st_mode & st.S_ISVTX
        if sticky and os.getuid() not in (existing.st_uid, parent_st.st_uid):
            raise local_error(
                ErrorCode.E_ACCESSDENIED,
                f"{path} belongs to another user in the sticky folder {parent}; user {self._user} cannot replace it",
            )

    def open_temp(self, temp_path: str, create: bool) -> int:
        """create: a fresh 0600 file (a stale one of that name is removed first); else reopen it to resume."""
        path = self._checked(temp_path)
        with self._at(path) as (folder, name):
            try:
                if not create:
                    return self._regular(os.open(name, os.O_RDWR | _OPEN, dir_fd=folder), path)
                # O_EXCL makes a new regular file or fails: no FIFO to fear, so no O_NONBLOCK and no fstat
                # (4 syscalls a file fewer in a batch of small files); a stale temp is removed, then retried.
                try:
                    return os.open(name, _CREATE, TEMP_MODE, dir_fd=folder)
                except FileExistsError:
                    os.unlink(name, dir_fd=folder)
                return os.open(name, _CREATE, TEMP_MODE, dir_fd=folder)
            except OSError as exc:
                raise self._error(exc, "create" if create else "reopen", path) from None

    def open_temps(self, temp_paths: list[str]) -> list[int | BitsError]:
        """open_temp(create=True) of each path, for a batch of small files: a descriptor or the error each."""
        results: list[int | BitsError] = []
        for path in temp_paths:
            try:
                results.append(self.open_temp(path, True))
            except BitsError as exc:
                results.append(exc)
        return results

    def commit(self, renames: Sequence[Sequence[str | int]]) -> list[BitsError | None]:
        """Rename each temp over its final name, then fsync each touched folder once."""
        results: list[BitsError | None] = []
        touched: dict[str, list[int]] = {}
        for temp, final, mode in (Rename(*rename) for rename in renames):  # type: ignore[arg-type]
            try:
                folder = self._rename(self._checked(temp), self._checked(final), mode)
            except BitsError as exc:
                results.append(exc)
                continue
            results.append(None)
            touched.setdefault(folder, []).append(len(results) - 1)
        for folder, indexes in touched.items():
            try:
                with self._at(os.path.join(folder, ".")) as (parent, name):
                    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=parent)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except BitsError as exc:
                for index in indexes:
                    results[index] = exc
            except OSError as exc:
                error = self._error(exc, "flush the folder", folder, folder=True)
                for index in indexes:
                    results[index] = error
        return results

    def remove(self, paths: Sequence[str]) -> None:
        """Unlink every path (missing ones are fine); report the first failure after trying them all."""
        first: BitsError | None = None
        for path in paths:
            try:
                with self._at(self._checked(path)) as (folder, name):
                    os.unlink(name, dir_fd=folder)
            except FileNotFoundError:
                pass
            except OSError as exc:
                first = first or self._error(exc, "delete", path)
            except BitsError as exc:
                first = first or exc
        if first is not None:
            raise first

    def open_read(self, path: str) -> int:
        path = self._checked(path)
        with self._at(path) as (folder, name):
            try:
                return self._regular(os.open(name, os.O_RDONLY | _OPEN, dir_fd=folder), path)
            except OSError as exc:
                raise self._error(exc, "read", path) from None

    def stat(self, path: str) -> FileStat | None:
        """lstat: the name itself, as open_temp/open_read (which never follow a final symlink) see it."""
        path = self._checked(path)
        try:
            with self._at(path) as (folder, name):
                info = os.stat(name, dir_fd=folder, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise self._error(exc, "inspect", path) from None
        return FileStat(size=info.st_size, mtime_ns=info.st_mtime_ns, uid=info.st_uid, mode=info.st_mode)

    def list_folder(self, path: str) -> list[str]:
        """The names in a folder (a certificate store), sorted; a missing folder is empty."""
        path = self._checked(path)
        try:
            with os.scandir(path) as entries:
                return sorted(entry.name for entry in itertools.islice(entries, MAX_FOLDER_NAMES))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise self._error(exc, "list", path, folder=True) from None

    def _rename(self, temp: str, final: str, mode: int) -> str:
        """Put temp in final's place; returns their folder (paths are _checked: the part before the last /)."""
        parent = _folder(final)
        if _folder(temp) != parent:
            raise local_error(ErrorCode.E_INVALIDARG, f"{temp} and {final} are not in the same folder")
        with self._at(final) as (folder, final_name):
            temp_name = temp if folder is None else os.path.basename(temp)
            try:
                replaced: os.stat_result | None = os.stat(final_name, dir_fd=folder, follow_symlinks=False)
            except OSError:
                replaced = None
            if replaced is not None:
                _replaceable(final, replaced.st_mode)
            # A file replaced keeps its permission bits (never set-id ones); a new one never gets more than 0666.
            mode = st.S_IMODE(replaced.st_mode) & 0o777 if replaced is not None and st.S_ISREG(replaced.st_mode) \
                else mode & 0o666
            try:
                fd = self._regular(os.open(temp_name, os.O_RDONLY | _OPEN, dir_fd=folder), temp, blocking=False)
                try:
                    os.fchmod(fd, mode)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise self._error(exc, "complete", temp) from None
            try:
                os.rename(temp_name, final_name, src_dir_fd=folder, dst_dir_fd=folder)
            except OSError as exc:
                raise self._error(exc, "rename to", final) from None
        return parent

    def _regular(self, fd: int, path: str, blocking: bool = True) -> int:
        """Keep fd only if it is a regular file; make it blocking again for the daemon (`blocking`; a
        descriptor the broker closes at once need not be)."""
        try:
            if not st.S_ISREG(os.fstat(fd).st_mode):
                raise local_error(ErrorCode.E_INVALIDARG, f"{path} is not a regular file")
            if blocking:
                os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _checked(path: object) -> str:
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path or os.path.normpath(path) != path:
            raise local_error(ErrorCode.E_INVALIDARG, f"{path!r} is not an absolute, normalised file path")
        if path == "/":
            raise local_error(ErrorCode.E_INVALIDARG, "/ is a folder, not a file path")
        return path

    def _error(self, exc: OSError, action: str, path: str, folder: bool = False) -> BitsError:
        """errno -> BITS code, with the path and the user in words a person can act on.

        A missing file is ERROR_FILE_NOT_FOUND when its folder exists, else ERROR_PATH_NOT_FOUND;
        folder=True says path is itself the folder.
        """
        number = exc.errno
        reason = exc.strerror or "unknown error"
        if number == errno.ELOOP:
            code, reason = ErrorCode.E_ACCESSDENIED, "it is a symbolic link, which openbits does not follow"
        elif number in _ACCESS:
            code = ErrorCode.E_ACCESSDENIED
        elif number == errno.ENOENT:
            file_missing = not folder and os.path.isdir(os.path.dirname(path))
            code = ErrorCode.ERROR_FILE_NOT_FOUND if file_missing else ErrorCode.ERROR_PATH_NOT_FOUND
        elif number == errno.ENOTDIR:
            code = ErrorCode.ERROR_PATH_NOT_FOUND
        elif number in _FULL:
            code = ErrorCode.ERROR_DISK_FULL
        elif number == errno.EEXIST:
            code = ErrorCode.ERROR_FILE_EXISTS
        elif number == errno.EISDIR:
            code = ErrorCode.E_INVALIDARG
        else:
            code = ErrorCode.E_FAIL
        return local_error(code, f"cannot {action} {path} as user {self._user}: {reason}")
