"""The calls on a job's files: AddFileSet, AddFileWithRanges, on-demand ranges, remote names, mirrors and
validation (IBackgroundCopyJob's file calls and IBackgroundCopyFile2-6's), as a half of the job's state machine.

Job (model/job.py) takes them in as a base with no fields of its own, so its dataclass keeps the one
declaration of the job's properties in order, and each half of the state machine stays readable alone.
Like Job's, every method is a pure state change on memory: it raises the BitsError BITS documents or
changes the record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..enums import LENGTH_TO_EOF, SIZE_UNKNOWN, ErrorContext, JobState, JobType
from ..errors import BitsError, ErrorCode
from .checks import PIECE_ALGORITHMS, check_checksums, check_local_path
from .jobfile import NEW_FILE_MODE, JobFile, temp_path_for
from .ranges import check_ranges, range_length
from .remote import check_remote_url, scheme_of

#: Where an upload may go: a BITS upload server, or (plain file copy, upload jobs only) an SMB share.
_UPLOAD_SCHEMES = {JobType.UPLOAD: ("http", "https", "smb"), JobType.UPLOAD_REPLY: ("http", "https")}


class FileCalls:
    """The file half of Job: what it reads of the job is declared here for type checkers, and is Job's."""

    __slots__ = ()

    if TYPE_CHECKING:
        id: str
        type: JobType
        state: JobState
        files: list[JobFile]
        on_demand: bool

        @property
        def own_method(self) -> bool: ...
        def _require_not_final(self) -> None: ...
        def touch(self) -> None: ...
        def set_error(self, error: BitsError, *, transient: bool, retry_after: float | None = None) -> None: ...

    def add_files(self, pairs: list[tuple[str, str]], max_files: int | None,
                  ranges: list[list[list[int]] | None] | None = None, max_ranges: int | None = None,
                  checksums: list[list[str] | None] | None = None, mode: int = NEW_FILE_MODE) -> list[JobFile]:
        """AddFileSet within `max_files` (MaxFilesPerJob; None: none); per pair `ranges`: AddFileWithRanges' (or
        None), `max_ranges` its limit (None: none), and `checksums`: the digests it must have (or None)."""
        self._require_not_final()
        ranges = ranges or [None] * len(pairs)
        checksums = [None if c is None else check_checksums(c) for c in checksums or [None] * len(pairs)]
        for wanted, digests in zip(ranges, checksums):
            if digests is not None and (wanted is not None or self.type != JobType.DOWNLOAD):
                raise BitsError(ErrorCode.E_INVALIDARG, "checksums are of a downloaded whole file: give them "
                                "without ranges, in a download job", ErrorContext.GENERAL_QUEUE_MANAGER)
        for (remote_url, _), wanted in zip(pairs, ranges):
            if wanted is not None:
                if self.type != JobType.DOWNLOAD:
                    raise BitsError(ErrorCode.E_NOTIMPL, "only download jobs take AddFileWithRanges",
                                    ErrorContext.GENERAL_QUEUE_MANAGER)
                if urlsplit(remote_url).scheme.lower() not in ("http", "https"):
                    raise BitsError(ErrorCode.E_INVALIDARG, f"remote name {remote_url!r}: ranges come from http:// "
                                    "and https:// servers (BITS takes no ranges of SMB or file sources)",
                                    ErrorContext.REMOTE_FILE)
                check_ranges(wanted, max_ranges)
        if self.type != JobType.DOWNLOAD and len(self.files) + len(pairs) > 1:
            raise BitsError(
                ErrorCode.BG_E_TOO_MANY_FILES,
                "upload jobs carry exactly one file; create one job per file",
                ErrorContext.GENERAL_QUEUE_MANAGER,
            )
        if max_files is not None and len(self.files) + len(pairs) > max_files:
            raise BitsError(
                ErrorCode.BG_E_TOO_MANY_FILES_IN_JOB,
                f"a job holds at most {max_files} files (it has {len(self.files)}, {len(pairs)} more asked); "
                "split the transfer into several jobs",
                ErrorContext.GENERAL_QUEUE_MANAGER,
            )
        for remote_url, local_path in pairs:
            check_remote_url(remote_url)
            check_local_path(local_path)
            if self.type != JobType.DOWNLOAD and scheme_of(remote_url) not in _UPLOAD_SCHEMES[self.type]:
                raise BitsError(ErrorCode.BG_E_PROTOCOL_NOT_AVAILABLE, f"remote name {remote_url!r}: uploads go to "
                                "http:// or https:// servers that speak the BITS upload protocol"
                                + (", or to an SMB share (upload jobs only: an upload-reply job needs a reply)"
                                   if self.type == JobType.UPLOAD else " (an upload-reply job's server replies)"),
                                ErrorContext.REMOTE_FILE)
        added = [
            JobFile(url, path, temp_path_for(path, f"{self.id[:8]}-{len(self.files) + i}"), ranges=wanted,
                    checksums=digests, mode=mode)
            for i, ((url, path), wanted, digests) in enumerate(zip(pairs, ranges, checksums))
        ]
        self.files.extend(added)
        if self.state == JobState.TRANSFERRED:
            # BITS: adding files to a transferred job needs a Resume to move them.
            self.state = JobState.SUSPENDED
        self.touch()
        return added

    def _started(self) -> bool:
        return self.state != JobState.SUSPENDED or any(f.bytes_transferred or f.completed for f in self.files)

    def request_file_ranges(self, index: int, ranges: list[list[int]]) -> None:
        """RequestFileRanges: these ranges go first; they may overlap what is in or asked for already."""
        f = self._on_demand_file(index)
        for offset, length in ranges:
            end = f.bytes_total if length == LENGTH_TO_EOF else offset + length
            if length == 0 or offset >= LENGTH_TO_EOF or (f.bytes_total != SIZE_UNKNOWN and
                                                          (offset >= f.bytes_total or end > f.bytes_total)):
                raise BitsError(ErrorCode.BG_E_INVALID_RANGE, f"range {offset}:{range_length(length)} is outside "
                                f"file {index} ({f.bytes_total} bytes)", ErrorContext.GENERAL_QUEUE_MANAGER)
        f.requested = [*f.requested, *([offset, length] for offset, length in ranges)]
        self.touch()

    def update_download_position(self, index: int, offset: int) -> None:
        """UpdateDownloadPosition: a Resume without requested ranges fills in the rest from `offset` on."""
        self._on_demand_file(index).download_position = offset
        self.touch()

    def _on_demand_file(self, index: int) -> JobFile:
        self._require_not_final()
        if not self.on_demand:
            raise BitsError(ErrorCode.BG_E_RANDOM_ACCESS_NOT_SUPPORTED, f"job {self.id} is not on demand; set "
                            "on_demand (BITS_JOB_PROPERTY_ON_DEMAND_MODE) before it starts",
                            ErrorContext.GENERAL_QUEUE_MANAGER)
        return self._file(index)

    def set_remote_name(self, index: int, url: str) -> None:
        """SetRemoteName: the file comes from `url` from its next attempt on; its bytes stay if the new source
        has the same size and validators (the transport's If-Range proves it), else the file restarts."""
        self._check_renamable()
        self._file(index)
        check_remote_url(url)
        self.files[index].remote_url = url
        self.touch()

    def replace_remote_prefix(self, old: str, new: str) -> int:
        """ReplaceRemotePrefix: every remote name that starts with `old` starts with `new` instead; how many
        (0 is BITS's S_FALSE). Transferred files keep their bytes, as any file whose new source matches."""
        self._check_renamable()
        if not old or not new:
            raise BitsError(ErrorCode.E_INVALIDARG, "ReplaceRemotePrefix needs an old and a new prefix, neither "
                            "empty", ErrorContext.GENERAL_QUEUE_MANAGER)
        renamed = [(f, new + f.remote_url[len(old):]) for f in self.files if f.remote_url.startswith(old)]
        for _, url in renamed:
            if len(url) > 2200:
                raise BitsError(ErrorCode.E_INVALIDARG, f"remote name {url[:80]!r}... would exceed 2,200 "
                                "characters", ErrorContext.REMOTE_FILE)
            check_remote_url(url)
        for f, url in renamed:
            f.remote_url = url
        self.touch()
        return len(renamed)

    def _check_renamable(self) -> None:
        self._require_not_final()
        if self.type != JobType.DOWNLOAD:
            raise BitsError(ErrorCode.E_NOTIMPL, f"job {self.id} is an {self.type.name} job; only download jobs' "
                            "remote names change", ErrorContext.GENERAL_QUEUE_MANAGER)

    def _file(self, index: int) -> JobFile:
        if not 0 <= index < len(self.files):
            raise BitsError(ErrorCode.E_INVALIDARG, f"job {self.id} has {len(self.files)} file(s); there is no file "
                            f"{index}", ErrorContext.GENERAL_QUEUE_MANAGER)
        return self.files[index]

    def set_mirrors(self, index: int, mirrors: list[str], size: int | None, piece_length: int | None = None,
                    piece_hashes: list[str] | None = None) -> None:
        """Metalink: the file's mirrors in priority order (its remote name becomes the first), its size and
        its pieces' hashes."""
        self._check_renamable()
        f = self._file(index)
        if f.ranges is not None or self.on_demand or self.own_method:
            raise BitsError(ErrorCode.E_INVALIDARG, "mirrors are of a whole file downloaded with GET, not of "
                            "ranges, on-demand jobs or SetHttpMethod", ErrorContext.GENERAL_QUEUE_MANAGER)
        if not mirrors or len(set(mirrors)) != len(mirrors):
            raise BitsError(ErrorCode.E_INVALIDARG, "give one mirror at least, each once",
                            ErrorContext.GENERAL_QUEUE_MANAGER)
        for url in mirrors:
            check_remote_url(url)
        if self._started() and f.remote_url != mirrors[0]:
            f.fail_over(mirrors[0])
        if (piece_length is None) != (not piece_hashes):
            raise BitsError(ErrorCode.E_INVALIDARG, "pieces need a length and one hash a piece at least",
                            ErrorContext.GENERAL_QUEUE_MANAGER)
        for digest in piece_hashes or []:
            algorithm, _, hexdigest = digest.partition(":")
            if algorithm not in PIECE_ALGORITHMS or len(hexdigest) != PIECE_ALGORITHMS[algorithm] or not all(
                    c in "0123456789abcdef" for c in hexdigest):
                raise BitsError(ErrorCode.E_INVALIDARG, f"piece hash {digest[:40]!r}: write algorithm:hex with "
                                f"one of {', '.join(PIECE_ALGORITHMS)}", ErrorContext.GENERAL_QUEUE_MANAGER)
        f.remote_url, f.mirrors, f.expected_size = mirrors[0], list(mirrors), size
        f.piece_length, f.piece_hashes = piece_length, piece_hashes
        self.touch()

    def set_validation_state(self, index: int, valid: bool) -> None:
        """SetValidationState: only for a transferred file; FALSE puts the job in ERROR (BG_E_VALIDATION_FAILED)
        with the file's progress at zero, and Resume downloads it again."""
        self._require_not_final()
        f = self._file(index)
        if not f.completed:
            raise BitsError(ErrorCode.E_PENDING, f"file {index} is not transferred yet; validate it once it is",
                            ErrorContext.GENERAL_QUEUE_MANAGER)
        f.validation_state = valid
        if not valid:
            f.completed = False
            f.restart()
            failed = BitsError(ErrorCode.BG_E_VALIDATION_FAILED, f"{f.local_path} was found not valid "
                               "(SetValidationState FALSE); Resume downloads it again", ErrorContext.REMOTE_FILE)
            self.set_error(failed.of_file(index, f.remote_url, f.local_path), transient=False)
        self.touch()
