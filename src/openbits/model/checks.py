"""What a caller gives a job, checked before it reaches the record: a file's digests, the job's security
flags, a local name. Each refusal is the BitsError BITS answers, naming what to give instead.
"""

from __future__ import annotations

import os

from ..enums import REDIRECT_POLICY_MASK, SECURITY_FLAGS_KNOWN, ErrorContext, SecurityFlags
from ..errors import BitsError, ErrorCode

#: The digests a file may be checked against, and their length in hex digits.
CHECKSUM_ALGORITHMS = {"sha256": 64, "sha512": 128, "blake2b": 128}
#: ... and a Metalink piece (sha1 finds a bad piece; the file's own digest proves the whole)
PIECE_ALGORITHMS = {"sha1": 40, "sha256": 64, "sha512": 128}


def check_checksums(checksums: list[str]) -> list[str]:
    """'algorithm:hex' digests (sha256, sha512, blake2b), lower case; E_INVALIDARG naming the bad one."""
    found = []
    for checksum in checksums:
        algorithm, colon, digest = checksum.strip().partition(":")
        algorithm, digest = algorithm.lower(), digest.lower()
        wanted = CHECKSUM_ALGORITHMS.get(algorithm)
        if not colon or wanted is None or len(digest) != wanted or digest.strip("0123456789abcdef"):
            raise BitsError(ErrorCode.E_INVALIDARG, f"checksum {checksum!r}: give algorithm:hex with one of "
                            + ", ".join(f"{name} ({n} hex digits)" for name, n in CHECKSUM_ALGORITHMS.items()),
                            ErrorContext.GENERAL_QUEUE_MANAGER)
        found.append(f"{algorithm}:{digest}")
    return found


def check_security_flags(flags: int) -> None:
    """SetSecurityFlags answers E_NOTIMPL for a flag BITS does not define and for a redirect policy not one of its three."""
    policy = flags & REDIRECT_POLICY_MASK
    if flags & ~SECURITY_FLAGS_KNOWN or policy not in (0, SecurityFlags.HTTP_REDIRECT_POLICY_ALLOW_REPORT,
                                                       SecurityFlags.HTTP_REDIRECT_POLICY_DISALLOW):
        raise BitsError(
            ErrorCode.E_NOTIMPL,
            f"security flags 0x{flags:x}: the flags are ENABLE_CRL_CHECK 0x1, IGNORE_CERT_CN_INVALID 0x2, "
            "IGNORE_CERT_DATE_INVALID 0x4, IGNORE_UNKNOWN_CA 0x8, IGNORE_CERT_WRONG_USAGE 0x10, one redirect policy "
            "(ALLOW_SILENT 0x0, ALLOW_REPORT 0x100, DISALLOW 0x200) and ALLOW_HTTPS_TO_HTTP 0x800",
            ErrorContext.GENERAL_QUEUE_MANAGER,
        )


def check_local_path(path: str) -> None:
    if not os.path.isabs(path) or "\0" in path or path.endswith("/"):
        raise BitsError(
            ErrorCode.E_INVALIDARG,
            f"local name {path!r} must be an absolute path to a file (the client library makes paths absolute)",
            ErrorContext.LOCAL_FILE,
        )
    if os.path.normpath(path) != path:
        raise BitsError(
            ErrorCode.E_INVALIDARG, f"local name {path!r} must be normalised (no '..', '.' or '//')",
            ErrorContext.LOCAL_FILE,
        )
