"""A session's folder in the bucket: what its object names say, and its lock.

Everything a node must know of a session is in the names one LIST returns, so a packet costs one LIST
and no GETs (session.json aside, read once per node):

    session.json                          id, name, URL, protocol, upload id (written once, at Create-Session)
    data/<first>-<end>-<total>            a piece: the bytes [first, end) a fragment added
    part/<first>-<end>-<total>-<slot>-<etags>
                                          bytes [first, end) are parts of that multipart upload in slots
                                          of <slot> bytes, the ETag of each in order, dot-separated (empty
                                          object; a record of another slot size says nothing)
    request, outcome.json, response       for the server application: the upload, its answer, its reply
    closed                                the tombstone: Close-Session retried after a lost Ack gets 200
    lock/<claim>                          who holds the session's lock (see Lease)

Pieces and part records never change; duplicates and overlaps from retried fragments are harmless. The
received range every node answers is the contiguous cover of pieces and part records whose total is
the one the first piece announced.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from ..errors import ErrorCode
from .acks import AckError
from .s3bucket import Bucket, Listed

#: Largest piece one PUT stores; a longer fragment becomes several.
PIECE_MAX = 256 << 20
#: Seconds a packet waits for a session's lock before it is answered 503 (the client retries).
LOCK_WAIT = 30.0
INFO = "session.json"
#: Objects of a session folder that say something by being there, and the FolderState field each sets.
_MARKERS = {INFO: "info", "closed": "closed", "outcome.json": "outcome", "response": "reply", "request": "request"}


@dataclass
class FolderState:
    """What one LIST of a session's folder says."""

    info: bool = False
    closed: bool = False
    outcome: bool = False
    reply: bool = False
    request: bool = False
    total: int | None = None
    received: int = 0
    #: (first, end, key) of the pieces, by offset.
    pieces: tuple[tuple[int, int, str], ...] = ()
    #: (first, end) of the runs of slots that are parts of the destination's upload.
    direct: tuple[tuple[int, int], ...] = ()
    #: ETag of each part those runs name, by first offset of its slot.
    etags: dict[int, str] = field(default_factory=dict)
    #: Every key listed (what Close-Session and Cancel-Session delete).
    keys: tuple[str, ...] = ()
    newest: float = 0.0


def piece_key(folder: str, first: int, end: int, total: int) -> str:
    return f"{folder}data/{first:016x}-{end:016x}-{total:016x}"


def record_key(folder: str, first: int, end: int, total: int, slot: int, etags: list[str]) -> str:
    return f"{folder}part/{first:016x}-{end:016x}-{total:016x}-{slot:x}-{'.'.join(e.strip(chr(34)) for e in etags)}"


def read_state(objects: list[Listed], root: str, slot: Callable[[int], int]) -> FolderState:
    """The state of the session whose folder is `root` from its listing; `slot(total)`: bytes per part."""
    state = FolderState(keys=tuple(o.key for o in objects))
    # (first, end, total, key, (slot, ETags) of a record or None for a piece)
    found: list[tuple[int, int, int, str, tuple[int, list[str]] | None]] = []
    for obj in objects:
        name = obj.key[len(root):]
        state.newest = max(state.newest, obj.modified)
        kind, _, rest = name.partition("/")
        if kind in ("data", "part"):
            fields = rest.split("-")
            try:
                first, end, total = (int(v, 16) for v in fields[:3])
                record = (int(fields[3], 16), fields[4].split(".")) if kind == "part" else None
            except (ValueError, IndexError):
                continue
            found.append((first, end, total, obj.key, record))
        elif name in _MARKERS:
            setattr(state, _MARKERS[name], True)
    found.sort()
    if found:
        state.total = found[0][2]  # the first piece's (a fragment of another total was refused)
    pieces, direct = [], []
    for first, end, total, key, record in found:
        if total != state.total:
            continue
        if record is None:
            pieces.append((first, end, key))
            continue
        size, etags = slot(total), record[1]
        if record[0] != size or len(etags) != -(-(end - first) // size):
            continue  # not a record this layout wrote: as if absent (the client is told less, and resends)
        direct.append((first, end))
        state.etags.update({first + i * size: etag for i, etag in enumerate(etags)})
    state.pieces, state.direct = tuple(pieces), tuple(direct)
    for first, end in sorted([(f, e) for f, e, _ in pieces] + direct):
        if first > state.received:
            break
        state.received = max(state.received, end)
    return state


def covered(pieces: tuple[tuple[int, int, str], ...], end: int, start: int = 0) -> list[tuple[str, int, int]] | None:
    """Non-overlapping (key, offset in it, length) segments of [start, end) from the pieces; None if they
    leave a gap."""
    out, at = [], start
    for first, stop, key in pieces:
        if at >= end:
            break
        if stop > at >= first:
            take = min(stop, end) - at
            out.append((key, at - first, take))
            at += take
    return out if at >= end else None


def cover(pieces: tuple[tuple[int, int, str], ...], end: int, start: int = 0) -> list[tuple[str, int, int]]:
    """covered() of bytes that are all there."""
    out = covered(pieces, end, start)
    assert out is not None, "cover() of an incomplete session"
    return out


def spans(start: int, end: int, total: int, slot: int | None) -> list[tuple[int, int, bool]]:
    """[start, end) of a fragment cut into (first, end, whole slot?): with a multipart upload (`slot`), at
    its slots' bounds; what is not a whole slot is pieces of at most PIECE_MAX."""
    out = []
    at = start
    while at < end:
        if slot is None:
            stop, whole = min(end, at + PIECE_MAX), False
        else:
            low = at // slot * slot
            high = min(low + slot, total)
            stop = min(end, high, at + PIECE_MAX)
            whole = at == low and stop == high
        out.append((at, stop, whole))
        at = stop
    return out


class Lease:
    """A session's lock in the store, without conditional writes (Swift's s3api has none).

    A claimant PUTs a uniquely named claim, then LISTs the session's folder: alone among the claims, it
    holds the lock; otherwise it withdraws and tries again after a random pause. Two claimants can both
    withdraw, never both hold (whichever LISTs second sees the other's claim, the store's listings being
    read-after-write). A claim older than `ttl` by the store's clock belongs to a node that died holding
    it and is removed. The winning LIST is the session's state as the holder starts (`listed`), so
    taking the lock also refreshes the session.
    """

    def __init__(self, bucket: Bucket, folder: str, ttl: float, wait: float = LOCK_WAIT,
                 listed: Callable[[list[Listed]], None] | None = None) -> None:
        self._bucket, self._folder, self._ttl, self._wait = bucket, folder, ttl, wait
        self._listed = listed
        #: The claim while held; a holder that deletes it along with the session's other keys drops it.
        self.key: str | None = None

    async def __aenter__(self) -> None:
        deadline = time.monotonic() + self._wait
        claims_at = self._folder + "lock/"
        for attempt in range(1_000_000):
            key = f"{claims_at}{uuid.uuid4().hex}"
            await self._bucket.put(key, b"", 0)
            objects = await self._bucket.list(self._folder)
            claims = [o for o in objects if o.key.startswith(claims_at)]
            mine = next((c.modified for c in claims if c.key == key), time.time())
            stale = [c.key for c in claims if c.key != key and mine - c.modified > self._ttl]
            if stale:
                await self._bucket.delete(stale)
            if all(c.key == key or c.key in stale for c in claims):
                self.key = key
                if self._listed is not None:
                    self._listed([o for o in objects if o.key not in stale])
                return
            await self._bucket.delete([key])
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(random.uniform(0.01, 0.05) * 2 ** min(attempt, 5))
        raise AckError(503, ErrorCode.http(503), "another server is finishing this upload session; retry later")

    def release_with(self, keys: list[str]) -> Coroutine[Any, Any, None]:
        """Delete `keys` and the claim in one request: the lock goes with what it guarded (released now,
        for __aexit__; the deletion is the coroutine's)."""
        claim, self.key = [self.key] if self.key else [], None
        return self._bucket.delete(keys + claim)

    async def __aexit__(self, *exc: object) -> None:
        if self.key is not None:
            with contextlib.suppress(AckError):
                await self._bucket.delete([self.key])
            self.key = None
