"""Checksums of downloads: computed as the bytes arrive, checked before the file counts as transferred.

A worker thread follows the temporary file from its first byte as it grows (read back from the page
cache right behind the writer: the fast path splices bodies into the file, so no copy of them passes
through our memory to hash), so by the end of the transfer only the last few kilobytes are left to
hash. The expected digests are the file's own (AddFile's checksums) and those the server sends:
Repr-Digest and, for a whole answer, Content-Digest (RFC 9530), and Digest (RFC 3230).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import re
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Executor

from ..enums import ErrorContext
from ..errors import BitsError, ErrorCode, TransferError

#: Bytes hashed per read (one buffer, reused).
CHUNK = 1024 * 1024
#: Seconds the follower waits when it has caught up with the writer.
IDLE = 0.002
#: Digest header algorithm names -> hashlib's (RFC 9530's registry; RFC 3230's upper-case names).
_HEADER_ALGORITHMS = {"sha-256": "sha256", "sha-512": "sha512"}
#: What a failed digest's error says of the partial file (core/pieces.py says more when pieces stay).
DISCARDED = "the partial file is discarded and Resume downloads it again"
_DICT_MEMBER = re.compile(r"\s*([A-Za-z0-9_.*-]+)\s*=\s*:([A-Za-z0-9+/=]*):\s*")


def header_digests(lines: Iterable[str]) -> list[tuple[str, str, str]]:
    """(algorithm, hex, header name) the server's answer claims for the whole file."""
    found = []
    headers = [line.partition(":")[::2] for line in lines]
    partial = any(name.strip().lower() == "content-range" for name, _ in headers)
    for name, value in headers:
        name = name.strip()
        kind = name.lower()
        if kind == "repr-digest" or (kind == "content-digest" and not partial):
            pairs = [(m[1], m[2]) for m in map(_DICT_MEMBER.fullmatch, value.split(",")) if m]
        elif kind == "digest":
            pairs = [tuple(part.strip().split("=", 1)) for part in value.split(",") if "=" in part]  # type: ignore[misc]
        else:
            continue
        for algorithm, encoded in pairs:
            ours = _HEADER_ALGORITHMS.get(algorithm.strip().lower())
            if ours is None:
                continue
            try:
                found.append((ours, base64.b64decode(encoded.strip(), validate=True).hex(), name))
            except (binascii.Error, ValueError):
                continue
    return found


class Follower:
    """The digests of one temporary file, hashed from byte 0 as it grows; `close()` whatever happens."""

    def __init__(self, fd: int, algorithms: Iterable[str], pool: Executor) -> None:
        self._fd = fd
        self._algorithms = set(algorithms)
        self._hashes = {a: hashlib.new(a) for a in self._algorithms}
        self._hashed = 0
        self._end: int | None = None
        self._reset = self._stop = False
        self._lock = threading.Lock()
        self._future = asyncio.get_running_loop().run_in_executor(pool, self._follow)

    def restart(self, algorithms: Iterable[str] = ()) -> None:
        """The file was cut back to nothing (a new version), or more algorithms are wanted: hash from 0 again."""
        with self._lock:
            self._algorithms |= set(algorithms)
            self._reset = True

    def wants(self, algorithms: Iterable[str]) -> bool:
        return not set(algorithms) <= self._algorithms

    async def finish(self, size: int) -> dict[str, str]:
        """Hex digests of the file's first `size` bytes, once all of them are written."""
        self._end = size
        await asyncio.shield(self._future)
        return {a: h.hexdigest() for a, h in self._hashes.items()}

    async def close(self) -> None:
        """Stop, and return only when the thread no longer reads the descriptor."""
        self._stop = True
        try:
            await asyncio.shield(self._future)
        except OSError:
            pass

    def _follow(self) -> None:
        buffer = memoryview(bytearray(CHUNK))
        while not self._stop:
            with self._lock:
                if self._reset:
                    self._reset, self._hashed = False, 0
                    self._hashes = {a: hashlib.new(a) for a in self._algorithms}
            end = self._end
            limit = end if end is not None else os.fstat(self._fd).st_size
            if self._hashed >= limit:
                if end is not None:
                    return
                time.sleep(IDLE)
                continue
            # read into one buffer, not mapped: a file cut short under a mapping would SIGBUS the daemon
            # (its owner may truncate it), a read just comes back short
            n = os.preadv(self._fd, [buffer[:min(CHUNK, limit - self._hashed)]], self._hashed)
            if not n:
                raise OSError(f"the temporary file ends at {self._hashed} bytes, before {limit}")
            for h in self._hashes.values():
                h.update(buffer[:n])
            self._hashed += n


class Verification:
    """What one file's transfer checks: AddFile's checksums and the digests its answers claim."""

    def __init__(self, fd: int, checksums: list[str] | None, pool: Executor) -> None:
        self._fd, self._pool = fd, pool
        self._own = [(a, d, "the file's checksum") for a, _, d in (c.partition(":") for c in checksums or ())]
        self._claimed: list[tuple[str, str, str]] = []
        self._follower: Follower | None = None

    def answered(self, headers: Iterable[str], offset: int) -> None:
        """An answer was accepted; its bytes go on at `offset` (0: the file starts over, cut back right after)."""
        self._claimed = [(a, d, f"the server's {name} header") for a, d, name in header_digests(headers)]
        algorithms = {a for a, _, _ in self._own + self._claimed}
        if not algorithms:
            return
        if self._follower is None:
            self._follower = Follower(self._fd, algorithms, self._pool)
        if offset == 0 or self._follower.wants(algorithms):
            # after the transport has cut the file back (it does so right after this call returns)
            asyncio.get_running_loop().call_soon(self._follower.restart, algorithms)

    def rehash(self) -> None:
        """Bytes were replaced in the middle of the file (Metalink pieces fetched again, core/pieces.py): the
        file's own digests are hashed over the whole file again, read once through the descriptor."""
        algorithms = {a for a, _, _ in self._own}
        if algorithms:
            self._follower = Follower(self._fd, algorithms, self._pool)

    async def check(self, size: int, local_path: str) -> BitsError | None:
        """BG_E_VALIDATION_FAILED for the first digest the file's `size` bytes do not have; None: all match."""
        if self._follower is None:
            return None
        try:
            actual = await self._follower.finish(size)
        except OSError as exc:  # cut short or unreadable under us: a retry starts over
            raise TransferError(ErrorCode.E_FAIL, f"{local_path}: hashing its temporary file failed ({exc}); the "
                                "job retries", ErrorContext.LOCAL_FILE, transient=True) from exc
        for algorithm, digest, source in self._own + self._claimed:
            if actual[algorithm] != digest:
                return BitsError(ErrorCode.BG_E_VALIDATION_FAILED, f"{local_path}: the {algorithm} digest is "
                                 f"{actual[algorithm]}, expected {digest} ({source}); {DISCARDED}",
                                 ErrorContext.REMOTE_FILE)
        return None

    @property
    def checked(self) -> bool:
        return self._follower is not None

    async def close(self) -> None:
        if self._follower is not None:
            await self._follower.close()

