"""bitsadmin's verbs: create a job, add files, change its state, set and get its properties."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO

import click

from ..schema.models import JobInfo, JobList
from ..client import DaemonUnavailableError
from ..client.types import error_of
from ..errors import BitsError
from ..model.config import parse_rate
from ..enums import JobPriority, JobState, JobType, TransferPolicy, cost_flags_name
from .app import EXIT_CANCELLED, EXIT_JOB_ERROR, EXIT_SUSPENDED, EXIT_TIMEOUT, cli, manager, open_job
from .render import console, error_line, job_panel, job_table, print_json

PRIORITY = click.Choice([p.name for p in JobPriority], case_sensitive=False)
SECONDS = click.IntRange(0, 0xFFFFFFFF)


class CostFlagsParam(click.ParamType):
    """BITS_JOB_PROPERTY_ID_COST_FLAGS: a TransferPolicy name or a number (0x80000067); the daemon checks the bits."""

    name = "POLICY"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        text = str(value).strip()
        if text.upper() in TransferPolicy.__members__:
            return text.upper()
        try:
            return int(text, 0)
        except ValueError:
            self.fail(f"{text!r}: give one of {', '.join(TransferPolicy.__members__)} or a number like 0x80000067")


class _Rate(click.ParamType):
    """A rate as the configuration writes it (model.config.parse_rate): 1048576, 20M, 800kbit/s."""

    name = "RATE"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return parse_rate(str(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)


def job_type_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """bitsadmin's /Download, /Upload and /Upload-Reply, as one option."""
    for flag, kind in (("--upload-reply", JobType.UPLOAD_REPLY), ("--upload", JobType.UPLOAD)):
        command = click.option(flag, "job_type", flag_value=kind.name, help=f"Create {kind.phrase}.")(command)
    return click.option("--download", "job_type", flag_value=JobType.DOWNLOAD.name, default=True,
                        help=f"Create {JobType.DOWNLOAD.phrase} (the default).")(command)


@cli.command()
@job_type_options
@click.argument("name")
def create(job_type: str, name: str) -> None:
    """Create a suspended job named NAME and print its GUID."""
    click.echo(manager().create_job(name, JobType[job_type]).id)


@cli.command()
@click.argument("job")
@click.argument("url")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--checksum", "checksums", multiple=True, metavar="ALGORITHM:HEX",
              help="A digest the file must have (sha256:, sha512: or blake2b:); may be given several times.")
def addfile(job: str, url: str, path: str, checksums: tuple[str, ...]) -> None:
    """Add one file: download URL to PATH (relative paths are taken from the current directory)."""
    open_job(job).add_file(url, path, checksums=checksums or None)


@cli.command()
@click.argument("job")
@click.argument("listfile", type=click.File("r"))
def addfileset(job: str, listfile: TextIO) -> None:
    """Add all files listed in LISTFILE ('-' for stdin), one 'URL PATH' pair a line, at once.

    Blank lines and lines starting with '#' are skipped; quote a path that contains spaces.
    """
    pairs: list[tuple[str, str]] = []
    for number, line in enumerate(listfile, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            words = shlex.split(line)
        except ValueError as error:
            raise click.BadParameter(f"line {number}: {error}", param_hint="LISTFILE") from error
        if len(words) != 2:
            raise click.BadParameter(f"line {number}: expected 'URL PATH', got {line.strip()!r}", param_hint="LISTFILE")
        pairs.append((words[0], words[1]))
    if not pairs:
        raise click.BadParameter("no files listed", param_hint="LISTFILE")
    open_job(job).add_files(pairs)


def _action(name: str, method: str, doc: str) -> None:
    @cli.command(name, help=doc)
    @click.argument("job")
    def command(job: str) -> None:
        getattr(open_job(job), method)()


_action("resume", "resume", "Queue the job for transfer (new jobs start suspended).")
_action("suspend", "suspend", "Pause the job; resume continues where it stopped.")
#: How long `cancel --when-back` waits for a daemon that is away.
WHEN_BACK_LIMIT = 7 * 86400.0
#: Seconds between its looks at the socket.
_WHEN_BACK_POLL = 1.0


@cli.command()
@click.argument("job")
@click.option("--when-back", is_flag=True,
              help="If the daemon is away, wait for it (up to 7 days) and cancel then; `transfer` leaves one "
                   "of these behind when Ctrl-C comes while the daemon is away.")
def cancel(job: str, when_back: bool) -> None:
    """Delete the job and its temporary files."""
    deadline = time.monotonic() + WHEN_BACK_LIMIT
    while True:
        try:
            open_job(job).cancel()
            return
        except DaemonUnavailableError:
            if not when_back or time.monotonic() > deadline:
                raise
        time.sleep(_WHEN_BACK_POLL)


@cli.command()
@click.argument("job")
def complete(job: str) -> None:
    """Move the transferred files to their names and end the job (before TRANSFERRED: the whole files only)."""
    info = open_job(job).complete()
    if info.complete_result == "BG_S_PARTIAL_COMPLETE":
        click.echo(f"BG_S_PARTIAL_COMPLETE: {info.files_transferred} of {info.files_total} files kept; the others "
                   "were not whole and are deleted")

_action("takeownership", "take_ownership", "Make the caller the job's owner (administrators).")


def _setter(name: str, field: str, kind: click.ParamType, metavar: str, doc: str) -> None:
    @cli.command(name, help=doc)
    @click.argument("job")
    @click.argument("value", type=kind, metavar=metavar)
    def command(job: str, value: Any) -> None:
        open_job(job).set_properties(**{field: value})


_setter("setpriority", "priority", PRIORITY, "PRIORITY", "Set the priority: FOREGROUND, HIGH, NORMAL or LOW.")
_setter("setminretrydelay", "minimum_retry_delay", SECONDS, "SECONDS", "Set the delay before retrying a transient error.")
_setter(
    "setnoprogresstimeout", "no_progress_timeout", SECONDS, "SECONDS",
    "Set how long the job may make no progress before it fails.",
)
_setter("setmaxdownloadtime", "max_download_time", SECONDS, "SECONDS", "Set the download time limit (0: none).")
_setter("setmaxbandwidth", "max_bandwidth", _Rate(), "RATE",
        "Cap this job's bandwidth: bytes/s, or with units as in the configuration (20M, 800kbit/s, 2MiB/s; "
        "0: no cap of its own).")
_setter("setcostflags", "cost_flags", CostFlagsParam(), "POLICY",
        "Set the network cost states the job transfers in: ALWAYS, NOT_ROAMING (default), NO_SURCHARGE, "
        "STANDARD, UNRESTRICTED, or BITS_COST_STATE bits as a number.")
_setter("setdescription", "description", click.STRING, "TEXT", "Set the job's description.")
_setter("setdisplayname", "name", click.STRING, "NAME", "Set the job's display name.")
_setter("setondemand", "on_demand", click.BOOL, "true|false",
        "Make the job on demand (BITS_JOB_PROPERTY_ON_DEMAND_MODE, before it starts): requested ranges go first.")
_setter("sethttpmethod", "http_method", click.STRING, "METHOD",
        "Send METHOD instead of GET (before the first resume; the job becomes FOREGROUND and restarts on errors).")
_setter(
    "setdynamiccontent", "dynamic_content", click.BOOL, "true|false",
    "Allow files whose server sends no size or validator (dynamic content).",
)


@cli.command()
@click.argument("job")
@click.argument("headers", nargs=-1, metavar="[HEADER]...")
@click.option("--clear", is_flag=True, help="Remove all custom headers.")
def setcustomheaders(job: str, headers: tuple[str, ...], clear: bool) -> None:
    """Replace the job's custom HTTP headers, each given as 'Name: value'."""
    if clear == bool(headers):
        raise click.UsageError("give either HEADER arguments or --clear")
    open_job(job).set_properties(custom_headers=list(headers))


def _getter(name: str, read: Callable[[JobInfo], object], doc: str) -> None:
    @cli.command(name, help=doc)
    @click.argument("job")
    def command(job: str) -> None:
        value = read(open_job(job).last_info)
        if value is not None:
            click.echo(value)


def _error(info: JobInfo) -> str | None:
    error = error_of(info)
    return None if error is None else error_line(error)


_getter("getstate", lambda job: job.state.name, "Print the job's state.")
_getter("gettype", lambda job: job.type.name, "Print the job's type.")
_getter("getbytestransferred", lambda job: job.bytes_transferred, "Print the bytes transferred.")
_getter("getbytestotal", lambda job: job.bytes_total, "Print the bytes to transfer (-1 while unknown).")
_getter("getfilestransferred", lambda job: job.files_transferred, "Print the number of files transferred.")
_getter("getfilestotal", lambda job: job.files_total, "Print the number of files in the job.")
_getter("getpriority", lambda job: job.priority.name, "Print the job's priority.")
_getter("geterror", _error, "Print the job's error in one line (nothing when it has none).")
_getter("geterrorcount", lambda job: job.error_count, "Print how many times the transfer was interrupted.")
_getter("getowner", lambda job: job.owner, "Print the job owner's user name.")
_getter("getdisplayname", lambda job: job.name, "Print the job's display name.")
_getter("getdescription", lambda job: job.description, "Print the job's description.")
_getter("getminretrydelay", lambda job: job.minimum_retry_delay, "Print the retry delay in seconds.")
_getter("getnoprogresstimeout", lambda job: job.no_progress_timeout, "Print the no-progress timeout in seconds.")
_getter("getmaxdownloadtime", lambda job: job.max_download_time, "Print the download time limit (0: none).")
_getter("getmaxbandwidth", lambda job: job.max_bandwidth, "Print the job's own bandwidth cap in bytes/s (0: none).")
_getter("getcostflags", lambda job: cost_flags_name(job.cost_flags),
        "Print the job's cost flags: the TransferPolicy name, else the number in hex.")
_getter("getdynamiccontent", lambda job: str(job.dynamic_content).lower(), "Print whether dynamic content is allowed.")
_getter("getondemand", lambda job: str(job.on_demand).lower(), "Print whether the job is on demand.")
_getter("gethttpmethod", lambda job: job.http_method, "Print the HTTP method of the job's requests.")
_getter("getcreationtime", lambda job: _time(job.creation_time), "Print when the job was created (local time).")
_getter("getmodificationtime", lambda job: _time(job.modification_time), "Print when the job last changed.")
_getter("getcompletiontime", lambda job: _time(job.transfer_completion_time),
        "Print when the job became TRANSFERRED (WORKING until then).")
_getter("getproxyusage", lambda job: job.proxy_usage.name, "Print the proxy usage (GetProxySettings).")
_getter("getproxylist", lambda job: job.proxy_list or "NULL", "Print the proxy list (NULL when none).")
_getter("getproxybypasslist", lambda job: job.proxy_bypass_list or "NULL", "Print the proxy bypass list (NULL when none).")


@cli.command()
@click.argument("job")
def getcustomheaders(job: str) -> None:
    """Print the custom headers, one a line."""
    info = open_job(job).last_info
    if info.custom_headers_write_only:
        raise click.ClickException("the custom headers are write-only (makecustomheaderswriteonly): they are sent, "
                                   "never shown")
    if info.custom_headers:
        click.echo("\n".join(info.custom_headers))


@cli.command()
@click.argument("job")
def makecustomheaderswriteonly(job: str) -> None:
    """Make the custom headers write-only: sent with every request, never shown again (cannot be undone)."""
    open_job(job).set_properties(custom_headers_write_only=True)


def _time(when: float | None) -> str:
    return "WORKING" if when is None else datetime.fromtimestamp(when).isoformat(sep=" ", timespec="seconds")


@cli.command()
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help="Print the job as the API returns it.")
def info(job: str, as_json: bool) -> None:
    """Show everything about a job."""
    snapshot = open_job(job).last_info
    if as_json:
        print_json(snapshot)
    else:
        console().print(job_panel(snapshot, error_of(snapshot)))


@cli.command("list")
@click.option("--all-users", is_flag=True, help="Every user's jobs (administrators).")
@click.option("--verbose", is_flag=True, help="Everything about each job, as info shows it.")
@click.option("--json", "as_json", is_flag=True, help="Print the job list as the API returns it.")
def list_jobs(all_users: bool, verbose: bool, as_json: bool) -> None:
    """List your jobs."""
    jobs = [job.last_info for job in manager().jobs(all_users)]
    if as_json:
        print_json(JobList(jobs=jobs))
    elif verbose:
        for info in jobs:
            console().print(job_panel(info, error_of(info)))
    else:
        console().print(job_table(jobs, show_owner=all_users))


#: `wait`'s exit code for the state the wait ended in; an active state means the timeout ran out.
WAIT_EXIT = {
    JobState.TRANSFERRED: 0,
    JobState.ACKNOWLEDGED: 0,
    JobState.ERROR: EXIT_JOB_ERROR,
    JobState.CANCELLED: EXIT_CANCELLED,
    JobState.SUSPENDED: EXIT_SUSPENDED,
}


@cli.command()
@click.option("--all-users", is_flag=True, help="Every user's jobs (administrators).")
def reset(all_users: bool) -> None:
    """Cancel all your jobs (bitsadmin /reset)."""
    jobs = manager().jobs(all_users)
    cancelled = 0
    for job in jobs:
        try:
            job.cancel()
            cancelled += 1
        except BitsError as error:  # gone meanwhile, or completed by its owner
            click.echo(f"{job.id}: {error.name}: {error.description}", err=True)
    click.echo(f"{cancelled} out of {len(jobs)} jobs cancelled.")


@cli.command()
@click.argument("job")
@click.option("--timeout", type=click.FloatRange(0), help="Give up after this many seconds (default: never).")
def wait(job: str, timeout: float | None) -> None:
    """Wait until the job is TRANSFERRED, ERROR, SUSPENDED, ACKNOWLEDGED or CANCELLED; print that state.

    Exit code: 0 TRANSFERRED (or ACKNOWLEDGED), 4 ERROR (the error on stderr), 5 CANCELLED, 6 SUSPENDED,
    7 the timeout ran out first (the state it is in is printed), so `openbits wait JOB && openbits complete JOB`
    completes only a transferred job.
    """
    info = open_job(job).wait_info(timeout)
    click.echo(info.state.name)
    error = error_of(info)
    if info.state == JobState.ERROR and error is not None:
        click.echo(f"openbits: {error_line(error)}", err=True)
    raise click.exceptions.Exit(WAIT_EXIT.get(info.state, EXIT_TIMEOUT))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as the API returns it.")
def status(as_json: bool) -> None:
    """Show which daemon answers and who it thinks you are."""
    answer = manager().status()
    if as_json:
        print_json(answer)
        return
    click.echo(f"socket: {manager().socket_path}")
    for key, value in answer.model_dump(mode="json").items():
        click.echo(f"{key}: {value}")
