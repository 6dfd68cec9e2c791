"""`monitor`: the job list, redrawn when the daemon's event stream says something happened, not on a timer."""

from __future__ import annotations

import time

import click
from rich.live import Live
from rich.table import Table

from .app import cli, manager
from .render import console, job_table


def say(line: str) -> None:
    """A note on stderr beside the live table (the daemon went away, it is back)."""
    console(stderr=True).print(f"openbits: {line}", markup=False, highlight=False, soft_wrap=True)


def daemon_lost(reason: str) -> None:
    say(f"the daemon went away ({reason}); waiting for it to come back (Ctrl-C ends)")


def daemon_back() -> None:
    say("the daemon is back")


@cli.command()
@click.option("--all-users", is_flag=True, help="Every user's jobs (administrators).")
@click.option("--refresh", type=click.FloatRange(0.1), default=1.0, show_default=True,
              help="Seconds between redraws at most (it redraws only after events).")
def monitor(all_users: bool, refresh: float) -> None:
    """Show the job list live until Ctrl-C; when the daemon goes away it says so and waits for it."""

    def table() -> Table:
        return job_table([job.last_info for job in manager().jobs(all_users)], show_owner=all_users)

    try:
        with Live(table(), console=console(), auto_refresh=False) as live:
            changed, drawn = False, time.monotonic()
            for event in manager().events(all_users=all_users, idle=refresh, on_lost=daemon_lost,
                                          on_back=daemon_back):
                changed = changed or event is not None
                if changed and time.monotonic() - drawn >= refresh:
                    live.update(table(), refresh=True)
                    changed, drawn = False, time.monotonic()
    except KeyboardInterrupt:
        pass
