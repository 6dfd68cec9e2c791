"""The daemon's state folder is its own: 0700, every file in it 0600, owned by the daemon's uid.

jobs.db holds every user's job names, URLs and events: a folder that already existed 0755 (or a
database made with the usual umask) would let every local user read them. SQLite gives its -wal
and -shm files the database's own mode, so making jobs.db 0600 before SQLite opens it covers them.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("openbitsd")


def own_state_dir(path: Path, database: str = "jobs.db") -> None:
    """Make path (and the files in it) the daemon's alone, or SystemExit saying what to fix."""
    path.mkdir(parents=True, mode=0o700, exist_ok=True)
    uid = os.geteuid()
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise SystemExit(f"openbitsd: the state directory {path} is not a folder (a symlink?); name a folder")
    if info.st_uid != uid:
        raise SystemExit(f"openbitsd: the state directory {path} is owned by uid {info.st_uid}, not by this daemon's "
                         f"uid {uid}; chown it or choose another --state-dir")
    if stat.S_IMODE(info.st_mode) != 0o700:
        log.warning("state directory %s was mode %04o; now 0700", path, stat.S_IMODE(info.st_mode))
        path.chmod(0o700)
    fd = os.open(path / database, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.close(fd)
    for entry in os.scandir(path):
        found = entry.stat(follow_symlinks=False)
        if found.st_uid != uid:
            raise SystemExit(f"openbitsd: {entry.path} is owned by uid {found.st_uid}, not by this daemon's uid "
                             f"{uid}; remove it")
        if stat.S_ISREG(found.st_mode) and stat.S_IMODE(found.st_mode) & 0o077:
            log.warning("%s was mode %04o; now 0600", entry.path, stat.S_IMODE(found.st_mode))
            os.chmod(entry.path, 0o600, follow_symlinks=False)
