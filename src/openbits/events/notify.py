"""Notify command lines (SetNotifyCmdLine): run as the job owner, output to the daemon log, bounded.

The program is an absolute path, run with its parameters as argv (no search
path, no shell, no environment expansion) through identity.programs.start_as:
the owner's uid and groups, a clean environment plus OPENBITS_SOCKET (the
daemon that runs it, so `openbits complete "$1"` reaches it and starts no
other) and OPENBITS_JOB, / as working folder, a login's limits, a process
group of its own. BITS's parameters are one string whose first token is the
program ("prog {JOB}"): it is split as a shell would, without running one, and
"{JOB}" in any argument becomes the job's GUID. What it prints (stdout and
stderr together) goes to the daemon log as one quoted string under the job's
name and id (a printed fake log line stays visibly the program's), at most
OUTPUT_LIMIT bytes; the rest is read and dropped so the program never blocks.
A program still running after PROGRAM_TIMEOUT is killed with its whole process
group and counts as failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal

from ..model.job import Job
from ..enums import ErrorContext
from ..errors import BitsError, ErrorCode
from ..identity import Identity
from ..identity.programs import start_as
from ..locations import SOCKET_ENV

log = logging.getLogger("openbits.notify")

#: Bytes of a program's output that reach the daemon log.
OUTPUT_LIMIT = 8192
#: Seconds a notify program may run.
PROGRAM_TIMEOUT = 600.0
#: SetNotifyCmdLine's pParameters limit (characters).
MAX_PARAMETERS = 4000
#: Replaced by the job's GUID in the command line's arguments when it runs.
JOB_PLACEHOLDER = "{JOB}"


def check_cmdline(program: str, parameters: list[str] | str) -> list[str]:
    """The argv SetNotifyCmdLine stores, or the documented refusal. `parameters`: the arguments after
    argv[0], or BITS's one string that starts with the program's name."""
    if isinstance(parameters, str):
        if len(parameters) > MAX_PARAMETERS:
            raise BitsError(ErrorCode.BG_E_STRING_TOO_LONG, f"the parameters are longer than {MAX_PARAMETERS} "
                            "characters", ErrorContext.QUEUE_MANAGER_NOTIFICATION)
        try:
            parameters = shlex.split(parameters)[1:]  # the first token is the program (argv[0])
        except ValueError as exc:
            raise BitsError(ErrorCode.E_INVALIDARG, f"the parameters {parameters!r} do not split into words "
                            f"({exc}); quote as a shell would", ErrorContext.QUEUE_MANAGER_NOTIFICATION) from None
    if not os.path.isabs(program) or "\0" in program:
        raise BitsError(ErrorCode.E_INVALIDARG, f"program {program!r} must be an absolute path: no search path is "
                        "used and no shell runs it", ErrorContext.QUEUE_MANAGER_NOTIFICATION)
    if any("\0" in p for p in parameters):
        raise BitsError(ErrorCode.E_INVALIDARG, "a parameter contains a NUL character",
                        ErrorContext.QUEUE_MANAGER_NOTIFICATION)
    if sum(len(p) + 1 for p in parameters) > MAX_PARAMETERS:
        raise BitsError(ErrorCode.BG_E_STRING_TOO_LONG, f"the parameters total more than {MAX_PARAMETERS} characters",
                        ErrorContext.QUEUE_MANAGER_NOTIFICATION)
    return [program, *parameters]


async def run_cmdline(job: Job, socket_path: str) -> int:
    """Run the job's command line as its owner; its exit status (-1 when it could not start or ran too long)."""
    assert job.notify_cmdline, "only jobs with a command line"
    argv = [arg.replace(JOB_PLACEHOLDER, job.id) for arg in job.notify_cmdline]
    try:
        proc = await start_as(Identity.from_uid(job.owner_uid), argv, {SOCKET_ENV: socket_path, "OPENBITS_JOB": job.id},
                              capture_output=True)
    except BitsError as exc:
        log.warning("job %s: notify command line not started: %s", job.id, exc.description)
        return -1
    assert proc.stdout is not None
    output = bytearray()
    try:
        async with asyncio.timeout(PROGRAM_TIMEOUT):
            while chunk := await proc.stdout.read(65536):
                output += chunk[: OUTPUT_LIMIT + 1 - len(output)]
            code = await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        code = -1
        log.warning("job %r (%s): notify program %s ran longer than %d s and was killed", job.name, job.id, argv[0],
                    PROGRAM_TIMEOUT)
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    text = output[:OUTPUT_LIMIT].decode(errors="replace").rstrip()
    more = f" [cut at {OUTPUT_LIMIT} bytes]" if len(output) > OUTPUT_LIMIT else ""
    log.info("job %r (%s): notify program %r (uid %d) exited %d%s%s", job.name, job.id, argv[0], job.owner_uid, code,
             "; its output: " if text else "", repr(text) + more if text else "")
    return code
