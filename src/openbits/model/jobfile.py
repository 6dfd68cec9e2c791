"""A file of a job: where it comes from and goes, how far its bytes are, and what it must prove.

The job holds its files in order (model/job.py); the store keeps every field but the live ones
(FILE_FIELDS), so a restarted daemon resumes each file from its durable offset.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any

from ..enums import LENGTH_TO_EOF, SIZE_UNKNOWN, ErrorContext
from ..errors import BitsError, ErrorCode
from .rate import RateMeter
from .ranges import range_length


#: A new file's mode when the client sent no umask: 0666 & ~022
NEW_FILE_MODE = 0o644


#: The longest file name Linux file systems take (bytes)
NAME_MAX = 255


def temp_path_for(local_path: str, file_id: str) -> str:
    """Hidden temporary name beside the destination, unique per file of a job, within NAME_MAX bytes
    whatever the final name's length (the final name is cut, at a character boundary, to make room)."""
    directory, name = os.path.split(local_path)
    suffix = f".{file_id}.bits-part"
    room = NAME_MAX - 1 - len(suffix.encode())
    stem = os.fsencode(name)[:room].decode("utf-8", "ignore") if len(os.fsencode(name)) > room else name
    return os.path.join(directory, f".{stem}{suffix}")


@dataclass(slots=True)
class JobFile:
    remote_url: str
    local_path: str
    temp_path: str
    bytes_total: int = SIZE_UNKNOWN
    #: bytes written so far (progress); may run ahead of durable_offset
    bytes_transferred: int = 0
    #: bytes known to be fsync'ed in the temporary file; the resume point after a crash
    durable_offset: int = 0
    completed: bool = False
    #: RemoteValidator.to_dict() of the response that produced the bytes on disk
    validator: dict[str, Any] | None = None
    #: BITS_FILE_PROPERTY_ID_HTTP_RESPONSE_HEADERS: the header lines of the last answer for this file.
    #: This and the other sequences below are replaced, never changed in place: their default is the one
    #: shared empty tuple, since an empty list a field cost 56 bytes in each of 100,000 queued jobs.
    response_headers: Sequence[str] = ()
    #: AddFileWithRanges: [offset, length] of the remote file (length LENGTH_TO_EOF: to its end), written one
    #: after another in this order; None: the whole file
    ranges: list[list[int]] | None = None
    #: digests the file must have, "algorithm:hex" (check_checksums); checked before it counts as transferred
    checksums: list[str] | None = None
    #: on-demand jobs (BITS_JOB_PROPERTY_ON_DEMAND_MODE): [offset, length] of the bytes in the temporary file,
    #: each at its own offset, merged and ordered (GetFilledFileRanges); and those asked for (RequestFileRanges)
    filled: Sequence[list[int]] = ()
    requested: Sequence[list[int]] = ()
    #: UpdateDownloadPosition: where a Resume without requested ranges starts filling in the rest
    download_position: int = 0
    #: GetValidationState: its digests matched (or SetValidationState(TRUE)); Complete validates implicitly
    validation_state: bool = False
    #: Metalink (RFC 5854): every remote name the file may come from, in priority order (remote_url is one);
    #: a mirror that fails hands the file to the next, keeping the bytes here (the digests prove them)
    mirrors: list[str] | None = None
    #: Metalink's <size>: a mirror that serves another size fails (BG_E_VALIDATION_FAILED)
    expected_size: int | None = None
    #: Metalink's <pieces>: bytes per piece and each one's "algorithm:hex"; a file that fails its digest keeps
    #: the pieces that match and fetches only the others again (core/pieces.py)
    piece_length: int | None = None
    piece_hashes: list[str] | None = None
    #: [offset, length] of the runs of pieces that failed their hashes, still to fetch again, each at its own
    #: offset of the temporary file (whose other bytes are whole and durable up to durable_offset)
    repair: Sequence[list[int]] = ()
    # -- upload jobs: bytes_transferred is what the server acknowledged (BITS-Received-Content-Range)
    #: BITS-Session-Id of the upload session; kept so a restarted daemon continues the same session
    session_id: str | None = None
    #: Close-Session was sent: on a retry, close again before concluding the session is lost
    session_closing: bool = False
    #: st_mtime_ns of the local file when its upload began (with bytes_total, the BITS change check)
    local_mtime_ns: int | None = None
    #: BITS-Host-Id of the session: the server of a farm that has it, which every later packet goes to
    session_host: str | None = None
    #: BITS-Host-Id-Fallback-Timeout: seconds session_host may stay unreachable before the packets go
    #: to the URL's own host again (None: never)
    session_host_fallback: int | None = None
    #: Unix time of the first failed connection to session_host since it was last reached
    session_host_unreachable_since: float | None = None
    #: how fast the bytes arrive now; live only, never stored (see FILE_FIELDS)
    meter: RateMeter | None = field(default=None, metadata={"live": True})

    def rate_now(self) -> int:
        """Bytes per second arriving now (0 when complete or nothing arrives)."""
        return 0 if self.meter is None or self.completed else self.meter.rate(time.monotonic())
    #: mode of the file Complete creates where none existed: 0666 & ~ the umask the client sent at
    #: AddFile (a file it replaces keeps its own mode)
    mode: int = NEW_FILE_MODE

    def next_mirror(self, tried: set[str]) -> str | None:
        """The first mirror after the current one not yet tried in this attempt, or None."""
        if not self.mirrors:
            return None
        at = self.mirrors.index(self.remote_url) if self.remote_url in self.mirrors else -1
        return next((url for url in self.mirrors[at + 1:] + self.mirrors[:at + 1] if url not in tried), None)

    def fail_over(self, url: str) -> None:
        """Fetch from mirror `url` now, keeping the bytes here: the new server is asked for the rest without
        If-Range, since mirrors share no validators, and the file's digests prove the whole at the end."""
        self.remote_url = url
        self.bytes_transferred = self.durable_offset
        self.validator = None if not self.durable_offset else {"size": self.bytes_total}

    def forget_session(self) -> None:
        """The upload session is gone (the server lost it): the file goes again, in a new one."""
        self.session_id = self.session_host = self.session_host_fallback = self.session_host_unreachable_since = None
        self.session_closing = False
        self.bytes_transferred = self.durable_offset = 0

    def restart(self) -> None:
        """Forget every byte: the remote file changed or cannot be resumed."""
        self.bytes_transferred = 0
        self.durable_offset = 0
        self.validator = None
        self.repair = ()

    def local_ranges(self, size: int) -> list[tuple[int, int | None, int]]:
        """(remote first, remote last, local offset) of each range for a remote file of `size` bytes. While
        the size is unknown a range to the end has last None, and the ranges after it no place yet."""
        assert self.ranges is not None
        found: list[tuple[int, int | None, int]] = []
        at = 0
        for offset, length in self.ranges:
            end = (None if size == SIZE_UNKNOWN else size) if length == LENGTH_TO_EOF else offset + length
            if size != SIZE_UNKNOWN and end is not None and (offset >= size or end > size):
                raise BitsError(ErrorCode.BG_E_INVALID_RANGE, f"range {offset}:{range_length(length)} is outside "
                                f"{self.remote_url} ({size} bytes); fix the file's ranges", ErrorContext.REMOTE_FILE)
            found.append((offset, None if end is None else end - 1, at))
            if end is None:
                break
            at += end - offset
        return found


#: the fields of a file the store keeps (the live ones, like its rate, are not)
FILE_FIELDS = tuple(name for name, f in JobFile.__dataclass_fields__.items() if not f.metadata.get("live"))
