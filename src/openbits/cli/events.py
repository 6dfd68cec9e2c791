"""bitsadmin's notification verbs (SetNotifyFlags, SetNotifyCmdLine and their getters) and `events`."""

from __future__ import annotations

import shlex

import click

from ..enums import NotifyFlags
from .app import cli, manager, open_job
from .live import daemon_back, daemon_lost


class _Flags(click.ParamType):
    """NotifyFlags as a number (3, 0x3) or names (JOB_TRANSFERRED|JOB_ERROR)."""

    name = "FLAGS"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        text = str(value).strip()
        try:
            flags = int(text, 0)
        except ValueError:
            names = [n.strip().upper() for n in text.replace(",", "|").split("|") if n.strip()]
            unknown = [n for n in names if n not in NotifyFlags.__members__]
            if unknown or not names:
                self.fail(f"{text!r}: give a number or names from {', '.join(NotifyFlags.__members__)}", param, ctx)
            flags = 0
            for n in names:
                flags |= NotifyFlags[n]
        if not 0 <= flags <= 0x3F:
            self.fail(f"{text!r} is not a combination of the BG_NOTIFY_* flags (0 to 0x3F)", param, ctx)
        return flags


@cli.command()
@click.argument("job")
@click.argument("flags", type=_Flags())
def setnotifyflags(job: str, flags: int) -> None:
    """Choose the events that notify: JOB_TRANSFERRED 1, JOB_ERROR 2, DISABLE 4, JOB_MODIFICATION 8,
    FILE_TRANSFERRED 16, FILE_RANGES_TRANSFERRED 32 (a number, or names joined with |)."""
    open_job(job).notify_flags = flags


@cli.command()
@click.argument("job")
def getnotifyflags(job: str) -> None:
    """Print the notify flags as a number and by name."""
    flags = NotifyFlags(open_job(job).last_info.notify_flags)
    click.echo(f"{int(flags)} {flags.name or 'NONE'}")


@cli.command()
@click.argument("job")
@click.argument("program", required=False)
@click.argument("parameters", required=False)
@click.option("--clear", is_flag=True, help="Remove the command line (as PROGRAM NULL).")
def setnotifycmdline(job: str, program: str | None, parameters: str | None, clear: bool) -> None:
    """Run PROGRAM (an absolute path; no shell, no search path) as the job owner when the job is TRANSFERRED
    or in ERROR and no callback took the notification. PARAMETERS is one string, as bitsadmin takes it: its
    first word is the program's name, the rest its arguments, split as a shell would ("prog {JOB}": {JOB}
    becomes the job's GUID; NULL: none). The program's environment has OPENBITS_SOCKET and OPENBITS_JOB."""
    if clear or program == "NULL":
        if program not in (None, "NULL") or parameters not in (None, "NULL"):
            raise click.UsageError("--clear (or PROGRAM NULL) takes no PARAMETERS")
        open_job(job).clear_notify_cmdline()
    elif program is None:
        raise click.UsageError("give PROGRAM [PARAMETERS], or --clear")
    else:
        open_job(job).set_notify_cmdline(program, "" if parameters in (None, "NULL") else parameters)


@cli.command()
@click.argument("job")
def getnotifycmdline(job: str) -> None:
    """Print the command line, quoted for a shell (nothing when none is set)."""
    argv = open_job(job).last_info.notify_cmdline
    if argv:
        click.echo(shlex.join(argv))


@cli.command()
@click.argument("job")
def getnotifyinterface(job: str) -> None:
    """Print REGISTERED when a program has a callback interface registered for the job, else UNREGISTERED."""
    click.echo("REGISTERED" if open_job(job).notify_interface_registered() else "UNREGISTERED")


@cli.command()
@click.option("--since", type=click.IntRange(0), help="Replay the stored events after this seq first.")
@click.option("--job", help="One job's events (GUID or name).")
@click.option("--all-users", is_flag=True, help="Every user's events (administrators).")
@click.option("--follow/--no-follow", default=True, show_default=True,
              help="Keep printing new events (until Ctrl-C), or stop after the stored ones.")
def events(since: int | None, job: str | None, all_users: bool, follow: bool) -> None:
    """Print events as JSON lines; `seq` orders them and survives daemon restarts (use it for --since)."""
    try:
        for event in manager().events(since if since is not None or follow else 0, job, all_users, follow,
                                      on_lost=daemon_lost, on_back=daemon_back):
            if event is not None:
                click.echo(event.model_dump_json())
    except KeyboardInterrupt:
        pass
