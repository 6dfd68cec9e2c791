"""bitsadmin's verbs about a job's files: list them, name their temporary files."""

from __future__ import annotations

import click

from ..schema.models import FileInfo
from .app import cli, open_job


def file_of(job: str, index: int) -> FileInfo:
    """The job's file at `index` (bitsadmin counts from 0), or a usage error naming the valid range."""
    files = open_job(job).last_info.files
    if not 0 <= index < len(files):
        raise click.BadParameter(f"the job has {len(files)} file(s): give 0 to {len(files) - 1}",
                                 param_hint="FILE_INDEX")
    return files[index]


@cli.command()
@click.argument("job")
def listfiles(job: str) -> None:
    """List the job's files: bytes transferred / total, COMPLETED or WORKING, remote -> local name."""
    for f in open_job(job).last_info.files:
        total = "UNKNOWN" if f.bytes_total < 0 else str(f.bytes_total)
        click.echo(f"{f.bytes_transferred} / {total} {'COMPLETED' if f.completed else 'WORKING'} "
                   f"{f.remote_url} -> {f.local_path}")


@cli.command()
@click.argument("job")
@click.argument("file_index", type=click.IntRange(0))
def gettemporaryname(job: str, file_index: int) -> None:
    """Print the temporary file that holds the file's bytes until Complete (GetTemporaryName)."""
    click.echo(file_of(job, file_index).temp_path)
