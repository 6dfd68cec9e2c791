"""Commands that follow jobs as they move: `transfer` (Start-BitsTransfer) and `monitor`.

Both follow the daemon's event stream: they redraw when something happened, not on a timer.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator

import click
from rich.live import Live

from ..schema.models import JobInfo
from ..client import DaemonUnavailableError, Job
from ..client.types import error_of
from ..enums import SIZE_UNKNOWN, JobPriority, JobState, JobType
from ..errors import BitsError
from .app import cli, fail, manager
from .jobs import PRIORITY, job_type_options
from .render import console, job_table, print_json, transfer_progress

#: Exit code after Ctrl-C, as a shell reports SIGINT.
_EXIT_INTERRUPTED = 130


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Let SIGTERM end a synchronous transfer as Ctrl-C does, so the job is cancelled rather than orphaned."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _follow(job: Job, show_bar: bool) -> JobInfo:
    """Follow the job's events until it leaves the active states, drawing a bar meanwhile; return the last snapshot.

    The job was resumed before: its history (replayed from seq 0) starts SUSPENDED, so only a stop after it
    was active counts.
    """
    with transfer_progress(show_bar) as bar:
        task = bar.add_task(job.last_info.name, total=None)
        was_active = False
        for event in job.events():
            total = None if event.bytes_total == SIZE_UNKNOWN else event.bytes_total
            note = f" [yellow]{event.state.name}[/]" if event.state == JobState.TRANSIENT_ERROR else ""
            description = f"{event.job_name} {event.files_transferred}/{event.files_total}{note}"
            bar.update(task, total=total, completed=event.bytes_transferred, description=description)
            was_active = was_active or event.state.is_active
            if was_active and not event.state.is_active:
                break
    return job.info()


@cli.command()
@job_type_options
@click.argument("pairs", nargs=-1, required=True, metavar="URL PATH [URL PATH]...")
@click.option("--name", default="openbits transfer", show_default=True, help="Display name of the job.")
@click.option("--priority", type=PRIORITY, default=JobPriority.FOREGROUND.name, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the final job as JSON instead of a progress bar.")
def transfer(job_type: str, pairs: tuple[str, ...], name: str, priority: str, as_json: bool) -> None:
    """Transfer files now, like Start-BitsTransfer: create, add, resume, wait, complete.

    On ERROR the job is left for inspection (its GUID is printed) and the exit
    code is 1. Ctrl-C (or SIGTERM) cancels the job, as in Start-BitsTransfer's
    synchronous mode, and exits 130.
    """
    if len(pairs) % 2:
        raise click.UsageError("give URL PATH pairs: the last URL has no PATH")
    files = list(zip(pairs[::2], pairs[1::2]))
    job = manager().create_job(name, JobType[job_type], priority=JobPriority[priority.upper()])
    try:
        with _sigterm_interrupts():
            job.add_files(files)
            job.resume()
            info = _follow(job, show_bar=not as_json)
    except KeyboardInterrupt:
        job.cancel()
        fail(f"interrupted: cancelled job {job.id}", _EXIT_INTERRUPTED)
    except BaseException:
        with contextlib.suppress(BitsError, DaemonUnavailableError):
            job.cancel()  # the caller only sees the error: a job nobody will hear of again is litter
        raise
    if info.state == JobState.TRANSFERRED:
        info = job.complete()
    if as_json:
        print_json(info)
    if info.state == JobState.ERROR:
        error = error_of(info)
        reason = f"{error.name}: {error.description}" if error else "the job failed"
        fail(f"{reason} (job {job.id} left for inspection)")
    if info.state != JobState.ACKNOWLEDGED:
        fail(f"job {job.id} ended {info.state.name}, not transferred")


@cli.command()
@click.option("--all-users", is_flag=True, help="Every user's jobs (administrators).")
@click.option("--refresh", type=click.FloatRange(0.1), default=1.0, show_default=True,
              help="Seconds between redraws at most (it redraws only after events).")
def monitor(all_users: bool, refresh: float) -> None:
    """Show the job list live until Ctrl-C."""

    def table() -> object:
        return job_table([job.last_info for job in manager().jobs(all_users)], show_owner=all_users)

    try:
        with Live(table(), console=console(), auto_refresh=False) as live:
            changed, drawn = False, time.monotonic()
            for event in manager().events(all_users=all_users, idle=refresh):
                changed = changed or event is not None
                if changed and time.monotonic() - drawn >= refresh:
                    live.update(table(), refresh=True)
                    changed, drawn = False, time.monotonic()
    except KeyboardInterrupt:
        pass
