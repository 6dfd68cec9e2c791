"""Programs the daemon starts for a job (notify command lines): always as the job owner, never as root.

The child gets the owner's uid, primary group and supplementary groups from the user database,
a clean environment (nothing of the daemon's leaks into it), / as working folder (the chdir would
run before the uid change, as root), and no descriptor of the daemon's but /dev/null on stdin, stdout and stderr
(or, with capture_output, one pipe for stdout and stderr that the daemon reads). It runs in a session and
process group of its own (the daemon kills the whole group at its timeout) with the resource limits a
login would have, not the daemon's raised ones.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import resource
from collections.abc import Sequence

from ..enums import ErrorContext
from ..errors import BitsError, ErrorCode
from ..model.identity import Identity

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
#: The limits this process started with, read when the daemon imports this module and before it raises
#: its own descriptor limit (api/connections.raise_descriptor_limit): what its children get back.
LOGIN_LIMITS = {limit: resource.getrlimit(limit) for limit in (resource.RLIMIT_NOFILE, resource.RLIMIT_NPROC)}


def _login_limits() -> None:
    """In the child before exec: setrlimit only (no lock, no allocation), so safe after fork."""
    for limit, value in LOGIN_LIMITS.items():
        resource.setrlimit(limit, value)


def clean_environment(identity: Identity, extra: dict[str, str] | None = None) -> dict[str, str]:
    """What a fresh login would set, nothing more."""
    entry = pwd.getpwuid(identity.uid)
    return {"HOME": entry.pw_dir, "USER": entry.pw_name, "LOGNAME": entry.pw_name, "SHELL": entry.pw_shell,
            "PATH": SAFE_PATH, "LANG": "C.UTF-8", **(extra or {})}


async def start_as(identity: Identity, argv: Sequence[str], extra_env: dict[str, str] | None = None, *,
                   capture_output: bool = False) -> asyncio.subprocess.Process:
    """Start argv as identity; a daemon that is not root can start programs only as itself."""
    if not argv:
        raise BitsError(ErrorCode.E_INVALIDARG, "an empty command line", ErrorContext.QUEUE_MANAGER_NOTIFICATION)
    privileged = os.geteuid() == 0
    if not privileged and identity.uid != os.geteuid():
        raise BitsError(ErrorCode.E_ACCESSDENIED, f"a user-mode daemon cannot run programs as {identity.name}",
                        ErrorContext.QUEUE_MANAGER_NOTIFICATION)
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if capture_output else asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.STDOUT if capture_output else asyncio.subprocess.DEVNULL,
            env=clean_environment(identity, extra_env),
            cwd="/",
            close_fds=True,
            start_new_session=True,
            preexec_fn=_login_limits,
            **({"user": identity.uid, "group": identity.gid, "extra_groups": list(identity.groups)}
               if privileged else {}),
        )
    except OSError as exc:
        raise BitsError(ErrorCode.E_FAIL, f"cannot start {argv[0]} as {identity.name}: {exc.strerror or exc}",
                        ErrorContext.QUEUE_MANAGER_NOTIFICATION) from None
