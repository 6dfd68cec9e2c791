"""Ranges of a file as BITS gives them, [offset, length] (length BG_LENGTH_TO_EOF: to the end): the checks
of AddFileWithRanges, and the filled and wanted stretches of an on-demand file.
"""

from __future__ import annotations

from ..enums import LENGTH_TO_EOF, ErrorContext
from ..errors import BitsError, ErrorCode


def first_gap(filled: list[list[int]], start: int, end: int | None) -> tuple[int, int | None] | None:
    """The first stretch of [start, end) (end None: to the unknown end) that `filled` (merged, ordered) lacks."""
    for offset, length in filled:
        if offset > start:
            break
        start = max(start, offset + length)
    if end is not None and start >= end:
        return None
    following = next((offset for offset, _ in filled if offset > start), None)
    stop = following if end is None else min(end, following) if following is not None else end
    return start, stop


def merged(filled: list[list[int]], start: int, end: int) -> list[list[int]]:
    """`filled` with [start, end) added, merged and ordered."""
    spans = sorted([*((o, o + n) for o, n in filled), (start, end)])
    out: list[list[int]] = []
    for a, b in spans:
        if out and a <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], b - out[-1][0])
        else:
            out.append([a, b - a])
    return out


def range_length(length: int) -> str:
    """A range's length as bitsadmin writes it: a number, or eof for BG_LENGTH_TO_EOF."""
    return "eof" if length == LENGTH_TO_EOF else str(length)


def check_ranges(ranges: list[list[int]], max_ranges: int | None) -> None:
    """AddFileWithRanges' refusals: none, too many (MaxRangesPerFile; None: no limit, as for administrators),
    a range that starts at BG_LENGTH_TO_EOF or is empty, duplicates or overlaps (ranges may come in any order)."""
    if not ranges:
        raise BitsError(ErrorCode.E_INVALIDARG, "AddFileWithRanges needs one or more ranges", ErrorContext.GENERAL_QUEUE_MANAGER)
    if max_ranges is not None and len(ranges) > max_ranges:
        raise BitsError(ErrorCode.BG_E_TOO_MANY_RANGES_IN_FILE, f"{len(ranges)} ranges for one file; MaxRangesPerFile "
                        f"allows {max_ranges} (administrators have no limit)", ErrorContext.GENERAL_QUEUE_MANAGER)
    for offset, length in ranges:
        if not 0 <= offset < LENGTH_TO_EOF or not 0 < length <= LENGTH_TO_EOF:
            raise BitsError(ErrorCode.BG_E_INVALID_RANGE, f"range {offset}:{range_length(length)}: an offset is a "
                            "byte position (not BG_LENGTH_TO_EOF) and a length at least 1", ErrorContext.GENERAL_QUEUE_MANAGER)
    ordered = sorted(ranges)
    for (offset, length), (following, _) in zip(ordered, ordered[1:]):
        if length == LENGTH_TO_EOF or offset + length > following:
            raise BitsError(ErrorCode.BG_E_OVERLAPPING_RANGES, f"range {offset}:{range_length(length)} overlaps the "
                            f"range at {following}; give each byte once", ErrorContext.GENERAL_QUEUE_MANAGER)
