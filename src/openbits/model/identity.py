"""Who a caller is, taken from the system user database and never from a claim."""

from __future__ import annotations

import grp
import os
import pwd
import re
import time
from dataclasses import dataclass

from ..errors import BitsError, ErrorCode


def _group_gid(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


#: /etc/login.defs's defaults (shadow's): regular users are UID_MIN..UID_MAX
UID_MIN, UID_MAX = 1000, 60000


def uid_range(login_defs: str = "/etc/login.defs") -> tuple[int, int]:
    """UID_MIN and UID_MAX of login.defs: the uids of regular users; the others are system accounts."""
    found = {"UID_MIN": UID_MIN, "UID_MAX": UID_MAX}
    try:
        with open(login_defs, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                match = re.match(r"\s*(UID_MIN|UID_MAX)\s+(\d+)\s*(?:#.*)?$", line)
                if match:
                    found[match[1]] = int(match[2])
    except OSError:
        pass
    return found["UID_MIN"], found["UID_MAX"]


def is_service_account(uid: int, service_group: str | None, regular: tuple[int, int]) -> bool:
    """BITS's service accounts (LocalSystem, LocalService, NetworkService) on Linux: root and system accounts
    (a uid outside `regular`, login.defs' UID_MIN..UID_MAX) and members of [users] service_group."""
    if uid < regular[0] or uid > regular[1]:
        return True
    if service_group is None:
        return False
    try:
        return Identity.from_uid(uid).in_group(service_group)
    except BitsError:  # no such user any more
        return False


_CACHE: dict[int, tuple[tuple[int, ...], "Identity"]] = {}
#: How long a look at the user database is trusted: a change made by useradd, usermod or gpasswd
#: shows within this time. Two stat() calls per lookup were 7 % of the daemon's time at 800 requests/s.
RECHECK_SECONDS = 0.1
_checked: tuple[float, tuple[int, ...]] = (float("-inf"), ())


def _database_version() -> tuple[int, ...]:
    """Changes whenever useradd, usermod, groupadd and friends rewrite the user database."""
    global _checked
    now = time.monotonic()
    if now - _checked[0] < RECHECK_SECONDS:
        return _checked[1]
    version: list[int] = []
    for path in ("/etc/passwd", "/etc/group"):
        try:
            st = os.stat(path)
            version += [st.st_mtime_ns, st.st_ino, st.st_size]
        except OSError:
            version.append(-1)
    _checked = (now, tuple(version))
    return _checked[1]


@dataclass(frozen=True)
class Identity:
    """A local user as the kernel and the user database see it; hashable, so it keys broker caches."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str

    @classmethod
    def from_uid(cls, uid: int) -> Identity:
        """Primary and supplementary groups come from passwd/group (os.getgrouplist), as a login would get them.

        Answers are reused until /etc/passwd or /etc/group changes (looked at every RECHECK_SECONDS):
        every API request and every file of a job asks, and reading the group database each time
        was a tenth of the daemon's time under load.
        """
        version = _database_version()
        cached = _CACHE.get(uid)
        if cached is not None and cached[0] == version:
            return cached[1]
        identity = cls._lookup(uid)
        _CACHE[uid] = (version, identity)
        return identity

    @classmethod
    def _lookup(cls, uid: int) -> Identity:
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            raise BitsError(ErrorCode.E_ACCESSDENIED, f"uid {uid} has no entry in the user database") from None
        groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid))))
        return cls(uid=uid, gid=entry.pw_gid, groups=groups, name=entry.pw_name)

    def is_admin(self, admin_group: str | None) -> bool:
        """uid 0, or a member of admin_group (None: "sudo", else "wheel" where only that exists)."""
        if self.uid == 0:
            return True
        if admin_group is None:
            gid = _group_gid("sudo")
            if gid is None:
                gid = _group_gid("wheel")
            return gid is not None and gid in self.groups
        return self.in_group(admin_group)

    def in_group(self, name: str) -> bool:
        """A member of the group `name` (primary or supplementary); False when there is no such group."""
        gid = _group_gid(name)
        return gid is not None and gid in self.groups
