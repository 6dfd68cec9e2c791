"""The `openbits` command group: global options, the shared Manager, and how failures become exit codes.

Exit codes: 0 success, 1 a BITS refusal (one line `openbits: NAME: description`
on stderr), 2 a usage error, 3 no daemon could be reached or started; `wait` and
`transfer` add the codes of the state a job ended in (EXIT_* below).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NoReturn

import click

from ..client import DaemonUnavailableError, Job, Manager
from ..errors import BitsError
from ..version import __version__

EXIT_BITS_ERROR = 1
EXIT_UNREACHABLE = 3
#: `wait`, `transfer`: the job is in ERROR (its error is shown; the job is left for inspection)
EXIT_JOB_ERROR = 4
#: `wait`: the job was cancelled
EXIT_CANCELLED = 5
#: `wait`: the job is SUSPENDED (nothing moves until someone resumes it)
EXIT_SUSPENDED = 6
#: `wait --timeout`, `transfer --max-time` / `--retry-timeout`: the time ran out before the job ended
EXIT_TIMEOUT = 7


@dataclass
class _Session:
    """What the global options chose; the Manager is made on first use so `--help` needs no daemon."""

    socket_path: str | None
    autostart: bool
    manager: Manager | None = field(default=None)


def fail(message: str, code: int = EXIT_BITS_ERROR) -> NoReturn:
    """End the command with `openbits: message` (on one line) on stderr and the given exit code."""
    click.echo(f"openbits: {' '.join(message.split())}", err=True)
    raise click.exceptions.Exit(code)


class _Cli(click.Group):
    """Turns the failures a user can expect into one-line messages instead of tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BitsError as error:
            fail(f"{error.name}: {error.description}")
        except DaemonUnavailableError as error:
            fail(str(error), EXIT_UNREACHABLE)
        except OSError as error:  # a local file or directory the command needs (a home it cannot write, ...)
            where = f" ({error.filename})" if error.filename else ""
            fail(f"{error.strerror or error}{where}: check that path's permissions, or set XDG_STATE_HOME / "
                 "XDG_RUNTIME_DIR to directories you can write", EXIT_UNREACHABLE)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="openbits", message="%(prog)s %(version)s")
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(dir_okay=False),
    help="Daemon socket, where a user daemon is started if none answers (default: $OPENBITS_SOCKET, the system socket, then the user socket).",
)
@click.option(
    "--no-autostart", is_flag=True, help="Fail (exit 3) instead of starting a user daemon when none answers."
)
@click.pass_context
def cli(ctx: click.Context, socket_path: str | None, no_autostart: bool) -> None:
    """openbits: background transfers (BITS for Linux). Verbs follow bitsadmin; JOB is a GUID or a unique name."""
    ctx.obj = _Session(socket_path, not no_autostart)


def manager() -> Manager:
    """The invocation's Manager, connected on first use and closed when the command ends."""
    ctx = click.get_current_context()
    session = ctx.find_object(_Session)
    assert session is not None, "commands run inside the cli group"
    if session.manager is None:
        session.manager = Manager(session.socket_path, session.autostart)
        ctx.find_root().call_on_close(session.manager.close)
    return session.manager


def open_job(ref: str) -> Job:
    """The job named by a GUID or display name."""
    return manager().get_job(ref)
