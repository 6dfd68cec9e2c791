"""Shell completion of JOB arguments: the GUIDs and display names of the caller's jobs, asked of the daemon.

Click's own mechanism (`_OPENBITS_COMPLETE=bash_source openbits` prints the script; `make install`
installs it for bash, zsh and fish). A daemon that does not answer completes nothing and starts none.
"""

from __future__ import annotations

import asyncio
from typing import Any

import click
from click.shell_completion import CompletionItem

from ..client import AsyncManager, DaemonUnavailableError
from ..errors import BitsError


class JobRef(click.ParamType):
    """A job's GUID or display name, as the command line takes it."""

    name = "job"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return value

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        try:
            jobs = asyncio.run(_jobs(ctx.find_root().params.get("socket_path")))
        except (BitsError, DaemonUnavailableError, OSError):
            return []
        guids = [CompletionItem(guid, help=name) for guid, name in jobs if guid.startswith(incomplete.upper())]
        names = [CompletionItem(name, help=guid) for guid, name in jobs if name and name.startswith(incomplete)]
        return guids + names


async def _jobs(socket_path: str | None) -> list[tuple[str, str]]:
    async with AsyncManager(socket_path, autostart=False) as manager:
        return [(job.id, job.last_info.name) for job in await manager.jobs()]


def complete_jobs(group: click.Group) -> None:
    """Give every JOB argument of the group's commands the completing type."""
    for command in group.commands.values():
        for param in command.params:
            if isinstance(param, click.Argument) and param.name == "job":
                param.type = JobRef()
