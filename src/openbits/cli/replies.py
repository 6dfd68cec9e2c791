"""bitsadmin's reply verbs for upload-reply jobs: the reply file's name, the reply itself, its progress."""

from __future__ import annotations

import sys

import click

from .app import cli, open_job


@cli.command()
@click.argument("job")
@click.argument("path", type=click.Path(dir_okay=False), required=False)
def setreplyfilename(job: str, path: str | None) -> None:
    """Save the reply of upload-reply JOB to PATH at Complete (no PATH: the name openbits chooses)."""
    open_job(job).reply_file_name = path


@cli.command()
@click.argument("job")
def getreplyfilename(job: str) -> None:
    """Print where the reply will be (or is) saved; nothing before a file is added."""
    name = open_job(job).last_info.reply_file_name
    if name is not None:
        click.echo(name)


@cli.command()
@click.argument("job")
def getreplydata(job: str) -> None:
    """Write the reply (up to 1 MiB) of a TRANSFERRED upload-reply job to stdout, byte for byte."""
    sys.stdout.buffer.write(open_job(job).get_reply_data())
    sys.stdout.buffer.flush()


@cli.command()
@click.argument("job")
def getreplyprogress(job: str) -> None:
    """Print the reply's bytes transferred and total ('transferred / total'; total -1 until it begins)."""
    info = open_job(job).last_info
    click.echo(f"{info.reply_bytes_transferred} / {info.reply_bytes_total}")
