"""Whether an HTTP answer is the one a download asked for: a resumed file's 200, 206 or 416, a range
request's 206, and where a redirect may lead under the job's security flags (SetSecurityFlags).
"""

from __future__ import annotations

import re

import aiohttp
from yarl import URL

from ..enums import REDIRECT_POLICY_MASK, SIZE_UNKNOWN, ErrorContext, SecurityFlags
from ..errors import ErrorCode, TransferError
from .base import DownloadSink, RemoteValidator, VersionChanged
from .httperrors import display_url, raise_for_status, redirect_failed

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")
#: The statuses whose Location a download follows (as far as the job's redirect policy lets it).
REDIRECTS = frozenset({300, 301, 302, 303, 307, 308})
#: BG_HTTP_REDIRECT_POLICY_DISALLOW: HRESULT_FROM_WIN32(HTTP_STATUS_*) of the redirect the server sent
_DISALLOWED = {300: ErrorCode.HTTP_STATUS_AMBIGUOUS, 301: ErrorCode.HTTP_STATUS_MOVED,
               302: ErrorCode.HTTP_STATUS_REDIRECT, 303: ErrorCode.HTTP_STATUS_REDIRECT_METHOD,
               307: ErrorCode.HTTP_STATUS_REDIRECT_KEEP_VERB, 308: ErrorCode.HTTP_STATUS_PERMANENT_REDIRECT}


def accept_answer(
    resp: aiohttp.ClientResponse, offset: int, old: RemoteValidator | None
) -> tuple[RemoteValidator, int] | None:
    """The response's validator and where its body starts in the file; None for an unusable partial answer.

    200 is the whole file (the remote changed, or the server ignores ranges).
    A 206 must start where we asked and describe the same version we have.
    """
    if resp.status == 200:
        size = resp.content_length if resp.content_length is not None else SIZE_UNKNOWN
        return RemoteValidator.of_answer(size, resp.headers), 0
    content_range = resp.headers.get("Content-Range", "")
    if old is None:
        return None
    if resp.status == 416:
        # Everything was already here (crash after the last byte was made durable, before completion).
        match = _UNSATISFIED_RANGE.fullmatch(content_range.strip())
        if match and int(match[1]) == offset == old.size:
            validator = RemoteValidator.of_answer(offset, resp.headers, old)
            return (validator, offset) if old.same_version(validator) else None
        return None
    if resp.status != 206:
        return None
    match = _CONTENT_RANGE.fullmatch(content_range.strip())
    if match is None:
        return None
    first, last = int(match[1]), int(match[2])
    size = old.size if match[3] == "*" else int(match[3])
    validator = RemoteValidator.of_answer(size, resp.headers, old)  # the validators it has must match
    if first != offset or (size != SIZE_UNKNOWN and last != size - 1) or not old.same_version(validator):
        return None
    if resp.content_length is not None and resp.content_length != last - first + 1:
        return None
    return validator, offset


def range_answer(resp: aiohttp.ClientResponse, first: int, last: int | None, old: RemoteValidator | None,
                  shown: str) -> RemoteValidator:
    """The version a range request was answered with, or the BITS error for an answer that is no such range."""
    if resp.status == 416:
        raise TransferError(ErrorCode.BG_E_INVALID_RANGE, f"bytes {first}- are outside {shown} (the server answered "
                            f"HTTP 416, Content-Range: {resp.headers.get('Content-Range')!r}); fix the file's ranges",
                            ErrorContext.REMOTE_FILE, 416, transient=False)
    if resp.status not in (200, 206):
        raise_for_status(resp, shown)
    size = resp.content_length if resp.status == 200 and resp.content_length is not None else SIZE_UNKNOWN
    match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip()) if resp.status == 206 else None
    if match is not None and match[3] != "*":
        size = int(match[3])
    validator = RemoteValidator.of_answer(size, resp.headers, old)
    if old is not None and not old.same_version(validator):
        raise VersionChanged(shown)
    if match is None or int(match[1]) != first or (last is not None and int(match[2]) != min(last, size - 1)):
        raise TransferError(ErrorCode.BG_E_INSUFFICIENT_RANGE_SUPPORT, f"the server sent {shown} without the range "
                            f"bytes={first}-{'' if last is None else last} (HTTP {resp.status}, Content-Range: "
                            f"{resp.headers.get('Content-Range')!r}); use a server that supports ranges",
                            ErrorContext.REMOTE_FILE, resp.status, transient=False)
    if size != SIZE_UNKNOWN and last is not None and last >= size:
        raise TransferError(ErrorCode.BG_E_INVALID_RANGE, f"bytes {first}-{last} run past the end of {shown} "
                            f"({size} bytes); fix the file's ranges", ErrorContext.REMOTE_FILE, transient=False)
    return validator


def redirect_target(url: URL, status: int, location: str, flags: int, sink: DownloadSink, shown: str) -> URL:
    """Where a redirect leads, if the job's security flags let it be followed (SetSecurityFlags)."""
    try:
        target = url.join(URL(location))
    except ValueError:
        raise redirect_failed(shown, f"a redirect to {location!r}") from None
    if target.scheme not in ("http", "https"):
        raise redirect_failed(shown, f"a redirect to {display_url(target)}")
    if flags & REDIRECT_POLICY_MASK == SecurityFlags.HTTP_REDIRECT_POLICY_DISALLOW:
        sink.redirected(str(target))  # BITS updates the remote name with the redirected URL
        raise TransferError(
            _DISALLOWED.get(status, ErrorCode.HTTP_STATUS_REDIRECT),
            f"The server redirected {shown} to {display_url(target)} (HTTP {status}) and the job's redirect "
            "policy is DISALLOW (security flag 0x200); allow redirects with setsecurityflags, or use that URL.",
            ErrorContext.REMOTE_FILE, status, transient=False)
    if url.scheme == "https" and target.scheme == "http" and not (
            flags & SecurityFlags.HTTP_REDIRECT_POLICY_ALLOW_HTTPS_TO_HTTP):
        raise TransferError(
            ErrorCode.ERROR_HTTP_REDIRECT_FAILED,
            f"The server redirected {shown} from https to {display_url(target)}, which is not encrypted; a job "
            "follows such a redirect only with the security flag HTTP_REDIRECT_POLICY_ALLOW_HTTPS_TO_HTTP (0x800).",
            ErrorContext.REMOTE_FILE, status, transient=False)
    return target

