"""Metalink piece hashes (RFC 5854 <pieces>): which bytes of a file that failed its digest are fetched again.

A file that fails its whole-file digest is checked piece by piece; the pieces that match stay where they
are and only the runs of bad (or missing) pieces are fetched again, each as one range request at its own
offset, so a piece corrupted in the middle costs that piece, not the rest of the file after it.

The whole-file digest is hashed as the bytes arrive (core/digests.py), which holds only for bytes written
in order from the start. A repair replaces bytes in the middle, so after its last piece the file is hashed
whole once more, read through its descriptor in the digests pool: a second read, but only of a file that
already failed its digest, never on the normal path. Piece hashes (often SHA-1) only find a bad piece;
that final whole-file digest is what proves the file.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

from ..errors import BitsError
from ..model.jobfile import JobFile
from .digests import DISCARDED


def bad_runs(fd: int, length: int, hashes: list[str], size: int) -> list[list[int]]:
    """[offset, length] of each run of consecutive pieces of the file's first `size` bytes that do not match
    their hash ("sha1:HEX", ...): a piece the file is too short for, or that has no hash, is bad. Blocking:
    run it in the digests pool."""
    runs: list[list[int]] = []
    for at in range(0, size, length):
        wanted = min(length, size - at)
        index = at // length
        good = False
        if index < len(hashes):
            algorithm, _, expected = hashes[index].partition(":")
            piece = os.pread(fd, wanted, at)
            good = len(piece) == wanted and hashlib.new(algorithm, piece).hexdigest() == expected
        if good:
            continue
        if runs and runs[-1][0] + runs[-1][1] == at:
            runs[-1][1] += wanted
        else:
            runs.append([at, wanted])
    return runs


async def keep_good_pieces(f: JobFile, fd: int, size: int, failed: BitsError, digests: Executor,
                           sync: Callable[[], Awaitable[None]]) -> BitsError:
    """A file failed its digest or size (`failed`): the partial file is discarded, but for the pieces that
    match their Metalink hashes; what stays is made durable (`sync`) before the caller records it. Returns
    the error to raise, saying what stays."""
    if not f.piece_length or not f.piece_hashes:
        f.restart()
        os.ftruncate(fd, 0)
        return failed
    size = f.expected_size if f.expected_size is not None else size
    runs = await asyncio.get_running_loop().run_in_executor(digests, bad_runs, fd, f.piece_length, f.piece_hashes,
                                                            size)
    said = _plan_repair(f, fd, size, runs)
    if f.repair:
        await sync()
    text = failed.description
    return BitsError(failed.code, text.replace(DISCARDED, said) if DISCARDED in text else f"{text}; {said}",
                     failed.context)


def _plan_repair(f: JobFile, fd: int, size: int, runs: list[list[int]]) -> str:
    """Record on `f` what a file whose digest failed keeps, given its bad `runs` of `size` bytes (its
    Metalink <size>, else the size served), and say it for the error: the good pieces stay and the runs
    are fetched again (`f.repair`), or, when no piece is good or every piece is, the file starts over.
    The descriptor is cut to `size` (a short file is padded: the padding is a bad run); the caller makes
    it durable before the record is saved. What to say of it."""
    if not runs or runs == [[0, size]]:
        f.restart()
        os.ftruncate(fd, 0)
        if not runs:
            return ("every piece matches its Metalink hash but the whole does not match its digest; the file is "
                    "fetched again")
        return "no piece matches its Metalink hash; the file is fetched again"
    os.ftruncate(fd, size)
    missing = sum(n for _, n in runs)
    f.repair = runs
    f.bytes_total, f.durable_offset = size, size
    f.bytes_transferred = size - missing
    f.validator = {"size": size}  # the pieces from any mirror: mirrors share no validators
    shown = ", ".join(f"bytes {at}-{at + n - 1}" for at, n in runs[:4]) + (", ..." if len(runs) > 4 else "")
    return (f"{missing} bytes in {len(runs)} run(s) of pieces fail their Metalink hashes ({shown}); only they "
            "are fetched again, the other pieces stay")


def from_first_bad(f: JobFile, fd: int) -> None:
    """A source that takes no range requests (file://, smb://) cannot send a piece alone: keep the bytes
    before the first bad piece and fetch the rest of the file from there."""
    kept = f.repair[0][0]
    os.ftruncate(fd, kept)
    if not kept:
        f.restart()
    f.repair = ()
    f.bytes_transferred = f.durable_offset = kept
