"""Entry point of the `openbits` command."""

from __future__ import annotations

from . import events, files, jobs, live, proxy, replies, security, tokens, transfer  # noqa: F401  (they register their commands on the group)
from .app import cli
from .completion import complete_jobs

complete_jobs(cli)


def main() -> None:
    cli(prog_name="openbits")
