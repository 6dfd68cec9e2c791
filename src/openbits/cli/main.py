"""Entry point of the `openbits` command."""

from __future__ import annotations

from . import events, files, jobs, live, proxy, replies, tokens  # noqa: F401  (they register their commands on the group)
from .app import cli


def main() -> None:
    cli(prog_name="openbits")
