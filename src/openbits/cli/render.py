"""How the CLI shows jobs to people (rich) and to programs (the API's JSON)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime
from typing import Any

import click
from pydantic import BaseModel
from rich.console import Console, Group
from rich.filesize import decimal
from rich.panel import Panel
from rich.progress import BarColumn, DownloadColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text
from rich.table import Table

from ..model.job import JOB_PROPERTIES
from ..model.properties import Described
from ..schema.models import JobInfo
from ..enums import BLOCKED_BY_COST, BLOCKED_BY_POLICY, NOT_LOGGED_ON, SIZE_UNKNOWN, JobState, cost_flags_name
from ..errors import BitsError

#: how the rate reason begins of a job that may move nothing now
_HELD = (BLOCKED_BY_COST, BLOCKED_BY_POLICY, NOT_LOGGED_ON)

#: Colour of each state in tables, so trouble stands out.
_STATE_STYLE = {
    JobState.TRANSFERRED: "green",
    JobState.ACKNOWLEDGED: "green",
    JobState.ERROR: "bold red",
    JobState.TRANSIENT_ERROR: "yellow",
    JobState.CANCELLED: "dim",
    JobState.SUSPENDED: "cyan",
}


def console(stderr: bool = False) -> Console:
    """A console for tables; when piped it is wide enough that GUIDs and paths are not folded."""
    out = Console(stderr=stderr, highlight=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = 200
    return out


def print_json(model: BaseModel) -> None:
    """The model as the API sends it (enumerations by name), indented for reading."""
    click.echo(json.dumps(model.model_dump(mode="json"), indent=2))


def size(count: int) -> str:
    return "UNKNOWN" if count == SIZE_UNKNOWN else decimal(count)


def state_text(state: JobState) -> str:
    style = _STATE_STYLE.get(state)
    return f"[{style}]{state.name}[/]" if style else state.name


#: Units a duration is shown in, largest first.
_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


def duration(seconds: float) -> str:
    """Seconds as people read them: "14 days", "1 hour 30 minutes", "45 seconds" (two units at most)."""
    left, parts = round(seconds), []
    for name, size in _UNITS:
        count, left = divmod(left, size)
        if count and len(parts) < 2:
            parts.append(f"{count} {name}{'s' if count != 1 else ''}")
        elif parts:
            break
    return " ".join(parts) or "0 seconds"


def _time(stamp: float | None) -> str:
    return "-" if stamp is None else datetime.fromtimestamp(stamp).isoformat(sep=" ", timespec="seconds")


def error_line(error: BitsError) -> str:
    """One line naming the error, its number and where it happened (GetError's code and context)."""
    where = "" if error.file is None else f" (file {error.file.index}, {error.protocol}: {error.file.remote_url} -> " \
        f"{error.file.local_path})"
    return f"{error.name} (0x{error.code:08X}) in {error.context.name}{where}: {error.description}"


def rate_text(rate: int) -> str:
    return f"{decimal(rate)}/s" if rate else "-"


def time_left(total: int, done: int, rate: int) -> str:
    """From the daemon's rate; "-" while the size or the rate is unknown."""
    if total == SIZE_UNKNOWN or not rate or total < done:
        return "-"
    return duration(max(1, (total - done) / rate)) if total > done else "0 seconds"


def job_table(jobs: list[JobInfo], show_owner: bool = False) -> Table:
    """bitsadmin /list: one row a job."""
    table = Table(box=None, pad_edge=False)
    table.add_column("GUID", no_wrap=True)
    table.add_column("NAME")
    table.add_column("TYPE")
    table.add_column("STATE")
    table.add_column("PRIORITY")
    table.add_column("FILES", justify="right")
    table.add_column("BYTES", justify="right")
    table.add_column("RATE", justify="right")
    table.add_column("LEFT", justify="right")
    if show_owner:
        table.add_column("OWNER")
    for job in jobs:
        row = [
            job.id,
            job.name,
            job.type.name,
            state_text(job.state),
            job.priority.name,
            f"{job.files_transferred} / {job.files_total}",
            f"{size(job.bytes_transferred)} / {size(job.bytes_total)}",
            rate_text(job.transfer_rate),
            time_left(job.bytes_total, job.bytes_transferred, job.transfer_rate),
        ]
        table.add_row(*row, *([job.owner] if show_owner else []))
    return table


#: How `info` shows a property's value, by its description's shown_as (model/properties.py).
_SHOWN: dict[str, Callable[[Any], str]] = {
    "text": str,
    "name": lambda value: value.name,
    "seconds": lambda value: duration(value),
    "rate": lambda value: f"{decimal(value)}/s",
    "time": lambda value: _time(value),
    "yes_no": lambda value: "yes" if value else "no",
    "lines": "\n".join,
    "cost_flags": cost_flags_name,
}


def _shown(p: Described, value: Any) -> str:
    if p.how.unset and not value:
        return p.how.unset
    return _SHOWN[p.how.shown_as](value)


def job_panel(job: JobInfo, error: BitsError | None) -> Panel:
    """bitsadmin /info /verbose: the job's properties, its error and its files."""
    props = Table.grid(padding=(0, 2))
    props.add_column(style="bold")
    props.add_column()
    rows = [
        ("GUID", job.id),
        ("Type", job.type.name),
        ("State", state_text(job.state)),
        ("Owner", f"{job.owner} (uid {job.owner_uid})"),
        ("Files", f"{job.files_transferred} / {job.files_total}"),
        ("Bytes", f"{size(job.bytes_transferred)} / {size(job.bytes_total)}"),
        ("Rate", rate_text(job.transfer_rate)),
        ("Time left", time_left(job.bytes_total, job.bytes_transferred, job.transfer_rate)),
        ("Allowed rate", (f"{decimal(job.allowed_rate)}/s" if job.allowed_rate
                          else "nothing" if job.rate_reason.startswith(_HELD)
                          else "unlimited")
         + (f" ({job.rate_reason})" if job.rate_reason else "")),
        *((p.how.label, _shown(p, getattr(job, p.name))) for p in JOB_PROPERTIES if p.how.label),
        ("Error", "-" if error is None else f"[red]{error_line(error)}[/]"),
    ]
    for label, value in rows:
        props.add_row(label, value)
    files = Table(title="Files", title_justify="left", box=None, pad_edge=False)
    files.add_column("BYTES", justify="right", no_wrap=True)
    files.add_column("DONE")
    files.add_column("RATE", justify="right")
    files.add_column("LEFT", justify="right")
    files.add_column("REMOTE")
    files.add_column("LOCAL")
    for file in job.files:
        transferred = f"{size(file.bytes_transferred)} / {size(file.bytes_total)}"
        files.add_row(transferred, "yes" if file.completed else "no", rate_text(file.transfer_rate),
                      time_left(file.bytes_total, file.bytes_transferred, file.transfer_rate), file.remote_url,
                      file.local_path)
    return Panel(Group(props, files) if job.files else props, title=job.name, title_align="left", expand=False)


class _DaemonRate(ProgressColumn):
    """The daemon's own rate of the job (the event's transfer_rate), not one guessed from redraws."""

    def render(self, task: Task) -> Text:
        return Text(rate_text(task.fields.get("rate", 0)), style="progress.data.speed")


class _DaemonTimeLeft(ProgressColumn):
    def render(self, task: Task) -> Text:
        total = SIZE_UNKNOWN if task.total is None else int(task.total)
        return Text(time_left(total, int(task.completed), task.fields.get("rate", 0)), style="progress.remaining")


def transfer_progress(show: bool) -> Progress:
    """The progress bar of `openbits transfer`, on stderr so stdout stays for results; only on a terminal.

    With a size unknown it shows the bytes so far (and a pulsing bar), not 0/0.
    """
    out = console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        _DaemonRate(),
        _DaemonTimeLeft(),
        console=out,
        disable=not (show and out.is_terminal),
    )
