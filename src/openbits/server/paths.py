"""From a URL path to a file strictly inside a virtual directory, and the atomic commit there.

Every directory below the virtual directory is opened component by component
with O_NOFOLLOW, and the final rename happens relative to that descriptor, so
neither `..`, an encoded separator, nor a symbolic link planted in the tree
(even one swapped in between the check and the rename) can make the server
write outside its root. Symbolic links inside the tree are refused, not
followed: that is the only rule that needs no race-prone realpath check.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import ErrorCode
from .acks import AckError

#: A name longer than this is refused before it reaches the file system (NAME_MAX).
MAX_NAME_BYTES = 255
MAX_DEPTH = 64


def split_remote_name(rest: str, reserved: str | None) -> tuple[str, ...]:
    """The path components of a (decoded) remote name below the virtual directory.

    Refuses empty, `.` and `..` components, NUL and backslash, over-long names,
    and the session directory's name (uploads must not reach session state).
    """
    parts = tuple(rest.split("/"))
    if not rest or len(parts) > MAX_DEPTH:
        raise AckError(403, ErrorCode.E_ACCESSDENIED, "the URL does not name a file in the virtual directory")
    for part in parts:
        if part in ("", ".", "..") or "\x00" in part or "\\" in part:
            raise AckError(403, ErrorCode.E_ACCESSDENIED, f"refused path component {part!r}")
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise AckError(403, ErrorCode.E_ACCESSDENIED, "a path component is too long")
    if reserved is not None and parts[0] == reserved:
        raise AckError(403, ErrorCode.E_ACCESSDENIED, "the session directory is not a destination")
    return parts


@contextmanager
def open_parent(root: Path, parts: tuple[str, ...]) -> Iterator[int]:
    """A descriptor of the directory that holds `parts[-1]`, reached without following links."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(root, flags)
    try:
        for part in parts[:-1]:
            try:
                child = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                raise AckError(404, ErrorCode.ERROR_PATH_NOT_FOUND, f"folder {part!r} does not exist") from None
            except OSError as exc:  # ELOOP / ENOTDIR: a link or a file where a folder should be
                raise AckError(403, ErrorCode.E_ACCESSDENIED, f"{part!r} is not a folder ({exc.strerror})") from None
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def destination_exists(parent_fd: int, name: str) -> bool:
    """Whether the final name is taken; a directory there can never be replaced."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        raise AckError(403, ErrorCode.E_ACCESSDENIED, f"{name!r} is a folder")
    return True


def check_destination(root: Path, parts: tuple[str, ...], allow_overwrites: bool) -> None:
    """At Create-Session: the folders exist and the file may be (over)written."""
    with open_parent(root, parts) as parent_fd:
        if destination_exists(parent_fd, parts[-1]) and not allow_overwrites:
            raise AckError(409, ErrorCode.ERROR_FILE_EXISTS, "the file exists and overwrites are not allowed")


def commit(root: Path, parts: tuple[str, ...], source: Path, allow_overwrites: bool) -> None:
    """Make the fsync'ed upload the destination file in one atomic step.

    os.replace when overwriting is allowed; otherwise a hard link, which fails
    if the name appeared meanwhile. If the session directory is on another file
    system, the data is first copied to a hidden file beside the destination.
    """
    name = parts[-1]
    with open_parent(root, parts) as parent_fd:
        if destination_exists(parent_fd, name) and not allow_overwrites:
            raise AckError(409, ErrorCode.ERROR_FILE_EXISTS, "the file exists and overwrites are not allowed")
        staged, staged_fd = str(source), None
        if os.stat(source).st_dev != os.fstat(parent_fd).st_dev:
            staged, staged_fd = _copy_beside(source, parent_fd, name), parent_fd
        try:
            if allow_overwrites:
                os.replace(staged, name, src_dir_fd=staged_fd, dst_dir_fd=parent_fd)
            else:
                os.link(staged, name, src_dir_fd=staged_fd, dst_dir_fd=parent_fd, follow_symlinks=False)
                os.unlink(staged, dir_fd=staged_fd)
        except FileExistsError:
            raise AckError(409, ErrorCode.ERROR_FILE_EXISTS, "the file exists and overwrites are not allowed") from None
        finally:
            if staged_fd is not None:
                _unlink_quietly(staged, staged_fd)
        os.fsync(parent_fd)


def _copy_beside(source: Path, parent_fd: int, name: str) -> str:
    staged = f".{name[:200]}.bits-{os.getpid()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    out = os.open(staged, flags, 0o644, dir_fd=parent_fd)
    try:
        with open(source, "rb") as src, os.fdopen(out, "wb", closefd=False) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.fsync(out)
    finally:
        os.close(out)
    return staged


def _unlink_quietly(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
