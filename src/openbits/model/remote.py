"""Whether a remote name can be transferred at all: checked whole at AddFile, so no malformed URL reaches a
transport (an unclosed IPv6 bracket was an HTTP 500; port 99999 failed the whole job at its first run).

BITS answers E_INVALIDARG for a remote name that is not valid and for one of an unsupported protocol; openbits
names the second BG_E_PROTOCOL_NOT_AVAILABLE, which says more.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import SplitResult, urlsplit

from ..enums import ErrorContext
from ..errors import BitsError, ErrorCode

SUPPORTED_SCHEMES = ("http", "https", "file", "smb")
#: A host name: dot-separated labels of letters, digits, '-' and '_' (some intranets use it).
_HOST = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}"
                   r"[A-Za-z0-9_])?)*\.?$")
#: What a URL may not contain unencoded: spaces, controls, and characters outside US-ASCII.
_UNENCODED = re.compile(r"[^\x21-\x7e]")
#: What a file URL may not contain (a local path may have spaces and any UTF-8).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _invalid(url: str, why: str) -> BitsError:
    return BitsError(ErrorCode.E_INVALIDARG, f"remote name {url!r} {why}", ErrorContext.REMOTE_FILE)


def scheme_of(url: str) -> str:
    """The remote name's protocol in lower case; a \\\\server\\share\\path name is smb."""
    return "smb" if url.startswith("\\\\") else urlsplit(url).scheme.lower()


def check_remote_url(url: str) -> None:
    """Refuse a remote name openbits cannot transfer, saying what is wrong with it."""
    if url.startswith("\\\\"):  # \\server\share\path, as BITS takes SMB names
        if url[2:].count("\\") < 2:
            raise _invalid(url, "needs \\\\server\\share\\path")
        return
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed '[' of an IPv6 address, brackets around no address
        raise _invalid(url, f"is not a valid URL ({exc}); an IPv6 address goes in brackets: http://[::1]:8080/x"
                       ) from None
    scheme = parts.scheme.lower()
    if scheme not in SUPPORTED_SCHEMES:
        raise BitsError(
            ErrorCode.BG_E_PROTOCOL_NOT_AVAILABLE,
            f"remote name {url!r} uses scheme {parts.scheme or '(none)'!r}; openbits transfers http, https, file and "
            "smb (or \\\\server\\share\\path)",
            ErrorContext.REMOTE_FILE,
        )
    bad = (_CONTROL if scheme == "file" else _UNENCODED).search(url)
    if bad:
        raise _invalid(url, f"has {bad.group()!r} at position {bad.start() + 1}; percent-encode it (a space is "
                            "%20; other characters as UTF-8 bytes, as BITS asks)")
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise _invalid(url, "needs an absolute path on this machine: file:///path")
        return
    _check_host(url, parts)


def _check_host(url: str, parts: SplitResult) -> None:
    host = parts.hostname
    if not host:
        raise _invalid(url, "has no host (an IPv6 address goes in brackets: http://[::1]/x)")
    bracketed = "[" in parts.netloc
    if bracketed:
        try:
            ipaddress.IPv6Address(host.partition("%")[0])
        except ValueError:
            raise _invalid(url, f"has {host!r} in brackets, which is no IPv6 address") from None
    elif ":" in host or not _HOST.match(host):
        raise _invalid(url, f"has the host {host!r}, which is no host name or address (an IPv6 address goes in "
                            "brackets: http://[::1]/x)")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 and parts.netloc.rpartition("]")[2].rpartition(":")[1]:
        given = parts.netloc.rpartition(":")[2]
        raise _invalid(url, f"has the port {given!r}; a port is a number from 1 to 65535")
