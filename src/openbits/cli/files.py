"""bitsadmin's verbs about a job's files: list them, name their temporary files; add a Metalink's."""

from __future__ import annotations

import os
from typing import BinaryIO

import click

from ..client.reader import BUFFER
from ..enums import LENGTH_TO_EOF
from ..model.ranges import range_length
from ..model.metalink import MAX_SIZE, MetalinkError, parse_metalink
from ..schema.models import FileInfo
from .app import cli, open_job


def file_of(job: str, index: int) -> FileInfo:
    """The job's file at `index` (bitsadmin counts from 0), or a usage error naming the valid range."""
    files = open_job(job).last_info.files
    if not 0 <= index < len(files):
        raise click.BadParameter(f"the job has {len(files)} file(s): give 0 to {len(files) - 1}",
                                 param_hint="FILE_INDEX")
    return files[index]


class _Ranges(click.ParamType):
    """bitsadmin's range list: offset:length pairs joined by commas, length eof for BG_LENGTH_TO_EOF."""

    name = "RANGES"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> list[tuple[int, int]]:
        ranges = []
        for part in str(value).split(","):
            offset, colon, length = part.strip().partition(":")
            try:
                ranges.append((int(offset), LENGTH_TO_EOF if length.strip().lower() == "eof" else int(length)))
            except ValueError:
                self.fail(f"{part.strip()!r}: give offset:length pairs joined by commas, like 0:100,2000:eof")
            if not colon:
                self.fail(f"{part.strip()!r} has no length: give offset:length, like 0:100")
        return ranges


@cli.command()
@click.argument("job")
@click.argument("url")
@click.argument("path", type=click.Path(dir_okay=False))
@click.argument("ranges", type=_Ranges())
def addfilewithranges(job: str, url: str, path: str, ranges: list[tuple[int, int]]) -> None:
    """Add a file made of byte ranges of URL (AddFileWithRanges), written to PATH one after another in the
    order given: RANGES is offset:length,... with eof as the length of a range to the end (0:100,2000:eof)."""
    open_job(job).add_file(url, path, ranges)


@cli.command()
@click.argument("job")
@click.argument("file_index", type=click.IntRange(0))
def getfileranges(job: str, file_index: int) -> None:
    """Print the file's ranges as addfilewithranges takes them (nothing for a whole file)."""
    ranges = file_of(job, file_index).ranges
    if ranges is not None:
        click.echo(",".join(f"{r.offset}:{range_length(r.length)}" for r in ranges))


@cli.command()
@click.argument("job")
@click.argument("file_index", type=click.IntRange(0))
@click.argument("state", type=click.BOOL, metavar="true|false")
def setvalidationstate(job: str, file_index: int, state: bool) -> None:
    """Mark a transferred file valid or not (SetValidationState): false puts the job in ERROR and resume
    downloads the file again."""
    open_job(job).set_validation_state(file_index, state)


@cli.command()
@click.argument("job")
@click.argument("file_index", type=click.IntRange(0))
def getvalidationstate(job: str, file_index: int) -> None:
    """Print whether the file is valid: its checksums matched, or setvalidationstate said so."""
    click.echo(str(file_of(job, file_index).validation_state).lower())


@cli.command()
@click.argument("job")
@click.argument("file_index", type=click.IntRange(0))
@click.argument("url")
def setremotename(job: str, file_index: int, url: str) -> None:
    """Fetch the file from URL from now on (SetRemoteName); its bytes stay when URL serves the same version."""
    open_job(job).set_remote_name(file_index, url)


@cli.command()
@click.argument("job")
@click.argument("old_prefix")
@click.argument("new_prefix")
def replaceremoteprefix(job: str, old_prefix: str, new_prefix: str) -> None:
    """Change every remote name starting with OLD_PREFIX to start with NEW_PREFIX (a dead mirror, say)."""
    count = open_job(job).replace_remote_prefix(old_prefix, new_prefix)
    click.echo(f"{count} remote name(s) replaced" if count else f"S_FALSE: no remote name starts with {old_prefix}")


@cli.command()
@click.argument("job")
@click.argument("file_index", type=click.IntRange(0))
@click.argument("ranges", type=_Ranges())
def requestfileranges(job: str, file_index: int, ranges: list[tuple[int, int]]) -> None:
    """Ask an on-demand job for these ranges first (RequestFileRanges; offset:length,...); resume to fetch them."""
    open_job(job).request_file_ranges(file_index, ranges)


@cli.command()
@click.argument("job")
@click.argument("file_index", type=click.IntRange(0))
@click.argument("offset", type=click.IntRange(0))
def updatedownloadposition(job: str, file_index: int, offset: int) -> None:
    """Where an on-demand job's resume fills in the rest from (UpdateDownloadPosition)."""
    open_job(job).update_download_position(file_index, offset)


@cli.command()
@click.argument("job")
@click.argument("file_index", type=click.IntRange(0))
def getfilledfileranges(job: str, file_index: int) -> None:
    """Print the ranges of an on-demand job's file that are in (GetFilledFileRanges), as offset:length,..."""
    filled = file_of(job, file_index).filled_ranges
    click.echo(",".join(f"{r.offset}:{r.length}" for r in filled or ()))


@cli.command()
@click.argument("job")
@click.argument("file_index", type=click.IntRange(0))
def cat(job: str, file_index: int) -> None:
    """Write the file to stdout while it downloads (an on-demand job fetches what is read next; a transferred
    file is read as it is)."""
    file_of(job, file_index)
    with open_job(job).files[file_index].open() as source:
        out = click.get_binary_stream("stdout")
        while chunk := source.read(BUFFER):
            out.write(chunk)


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


@cli.command()
@click.argument("job")
@click.argument("metalink", type=click.File("rb"))
@click.argument("folder", type=click.Path(file_okay=False, exists=True, writable=True))
def addmetalink(job: str, metalink: BinaryIO, folder: str) -> None:
    """Add the files of a Metalink (RFC 5854 .meta4; '-' for stdin) under FOLDER, with their digests, sizes and
    mirrors: a file whose mirror fails goes on from the next one by priority, keeping its bytes."""
    try:
        files = parse_metalink(metalink.read(MAX_SIZE + 1), metalink.name)
    except MetalinkError as exc:
        raise click.BadParameter(str(exc), param_hint="METALINK") from None
    target = open_job(job)
    first = len(target.last_info.files)
    target.add_files([(f.mirrors[0], os.path.join(folder, f.name)) for f in files],
                     [f.checksums or None for f in files])
    for index, f in enumerate(files, first):
        if len(f.mirrors) > 1 or f.size is not None or f.piece_hashes:
            target.set_mirrors(index, f.mirrors, f.size, f.piece_length, f.piece_hashes)
    click.echo(f"added {len(files)} file(s) from {metalink.name}")
