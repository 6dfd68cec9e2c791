"""The object-storage store: sessions and uploads in an S3-compatible bucket, so any node serves any packet.

Nothing of a session is in a node's memory. Under `<prefix><vdir>/<session directory>/<session id>/`:

    session.json                 id, name, URL, protocol, upload id (written once, at Create-Session)
    mpu/<upload id, hex>         the destination's multipart upload belongs to a live session
    data/<first>-<end>-<total>   one piece per fragment (hex offsets): the bytes [first, end) it added
    part/<first>-<end>-<total>   bytes [first, end) are that multipart upload's part (empty: a record)
    request                      the whole upload as one object, for the server application
    outcome.json                 the application accepted the upload (what it answered)
    response                     the application's reply
    closed                       the tombstone: Close-Session retried after a lost Ack gets 200
    lock/<claim>                 who holds the session's lock (see Lease)

A piece is one PUT, which a store makes visible whole or not at all, so a node that dies mid-fragment
leaves nothing, and the received range every node answers is the contiguous cover of the pieces (a
LIST). Pieces never change; duplicates and overlaps from retried fragments are harmless. Close-Session
assembles the pieces into the destination object with one multipart upload (ranges copied inside the
store; pieces smaller than a part are joined by the node), so the destination appears at once, complete,
and carries the session id in its metadata.

Without a server application the bytes go to the destination, so Create-Session starts its multipart
upload at once, and a fragment's bytes that fill a whole slot of it (slot(total) bytes, 8 MiB and up, at
a multiple of that) stream into it as that slot's part: the store writes them once, not as a piece and
again as a part (3.4x the store's CPU per byte of a plain multipart upload, bench/upload.py). A slot's
part is always the same bytes, so a retried fragment that writes it again changes nothing. The rest of
a fragment is pieces, joined into their slots' parts at Close-Session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web
from botocore.exceptions import ClientError

from ..errors import ErrorCode
from ..uploadprotocol import BG_E_SESSION_NOT_FOUND, ContentRange, is_session_id, new_session_id
from .acks import AckError
from .s3bucket import PART_MIN, Bucket, FragmentBody, Listed, Streamed, guarded, is_missing, open_client, plan_parts
from .settings import NotificationType, ObjectStorage, VirtualDirectory
from .storage import Outcome, Session, Storage

__all__ = ["PART_MIN", "S3Storage", "plan_parts", "storages"]

log = logging.getLogger(__name__)

#: Largest piece one PUT stores; a longer fragment becomes several.
PIECE_MAX = 256 << 20
#: Seconds a packet waits for a session's lock before it is answered 503 (the client retries).
LOCK_WAIT = 30.0
#: Metadata key (x-amz-meta-...) naming the session a destination object came from.
SESSION_META = "bits-session-id"
#: The smallest slot of a destination's multipart upload (a part but the last; a power of two, as the
#: client's fragment ends are multiples of one).
SLOT = 8 << 20

@dataclass
class _State:
    """What one LIST of a session's folder says."""

    info: bool = False
    closed: bool = False
    outcome: bool = False
    reply: bool = False
    request: bool = False
    total: int | None = None
    received: int = 0
    pieces: tuple[tuple[int, int, str], ...] = ()
    newest: float = 0.0


#: Objects of a session folder that say something by being there, and the _State field each sets.
_MARKERS = {"session.json": "info", "closed": "closed", "outcome.json": "outcome", "response": "reply",
            "request": "request"}


def read_state(objects: list[Listed], root: str) -> _State:
    state = _State()
    pieces = []
    for obj in objects:
        name = obj.key[len(root):]
        state.newest = max(state.newest, obj.modified)
        if name.startswith(("data/", "part/")):
            try:
                first, end, total = (int(v, 16) for v in name[5:].split("-"))
            except ValueError:
                continue
            pieces.append((first, end, obj.key))
            state.total = total
        elif name in _MARKERS:
            setattr(state, _MARKERS[name], True)
    state.pieces = tuple(sorted(pieces))
    for first, end, _ in state.pieces:
        if first > state.received:
            break
        state.received = max(state.received, end)
    return state


def cover(pieces: tuple[tuple[int, int, str], ...], end: int, start: int = 0) -> list[tuple[str, int, int]]:
    """Non-overlapping (key, offset in it, length) segments of [start, end) from the pieces."""
    out, at = [], start
    for first, stop, key in pieces:
        if at >= end:
            break
        if stop > at >= first:
            take = min(stop, end) - at
            out.append((key, at - first, take))
            at += take
    assert at >= end, "cover() of an incomplete session"
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

    A claimant PUTs a uniquely named claim, then LISTs the claims: alone, it holds the lock; otherwise it
    withdraws and tries again after a random pause. Two claimants can both withdraw, never both hold
    (whichever LISTs second sees the other's claim, the store's listings being read-after-write). A claim
    older than `ttl` by the store's clock belongs to a node that died holding it and is removed.
    """

    def __init__(self, bucket: Bucket, folder: str, ttl: float, wait: float = LOCK_WAIT) -> None:
        self._bucket, self._folder, self._ttl, self._wait = bucket, folder + "lock/", ttl, wait
        self._key: str | None = None

    async def __aenter__(self) -> None:
        deadline = time.monotonic() + self._wait
        for attempt in range(1_000_000):
            key = f"{self._folder}{uuid.uuid4().hex}"
            await self._bucket.put(key, b"", 0)
            claims = await self._bucket.list(self._folder)
            mine = next((c.modified for c in claims if c.key == key), time.time())
            stale = [c.key for c in claims if c.key != key and mine - c.modified > self._ttl]
            if stale:
                await self._bucket.delete(stale)
            if all(c.key == key or c.key in stale for c in claims):
                self._key = key
                return
            await self._bucket.delete([key])
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(random.uniform(0.01, 0.05) * 2 ** min(attempt, 5))
        raise AckError(503, ErrorCode.http(503), "another server is finishing this upload session; retry later")

    async def __aexit__(self, *exc: object) -> None:
        if self._key is not None:
            with contextlib.suppress(AckError):
                await self._bucket.delete([self._key])
            self._key = None


class S3Session(Session):
    """A session whose state is its folder in the bucket; this object is only a packet's view of it."""

    def __init__(self, store: S3Storage, sid: str, info: dict[str, str], state: _State) -> None:
        self._store = store
        self.id = sid
        self._info = info
        self.parts = tuple(info["remote"].split("/"))
        self.url = info["url"]
        self.outcome = None
        self._apply(state)

    def _apply(self, state: _State) -> None:
        self._state = state
        self.total, self.received, self.closed, self.has_reply = state.total, state.received, state.closed, state.reply
        self._store.remember(self.id, self._info, state)

    @property
    def folder(self) -> str:
        return self._store.folder(self.id)

    def lock(self) -> AbstractAsyncContextManager[None]:
        return Lease(self._store.bucket, self.folder, self._store.lock_ttl)

    def receiving(self) -> AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()  # pieces are immutable: fragments need no order between nodes

    async def refresh(self) -> None:
        self._apply(await self._store.state(self.id))
        if self._state.outcome and self.outcome is None:
            raw = await self._store.bucket.read(self.folder + "outcome.json")
            if raw is not None:
                data = json.loads(raw)
                self.outcome = Outcome(data["static_reply_url"], data["copy_to_destination"])
                self.has_reply = data["has_reply"]

    @property
    def ended(self) -> bool:
        return not self._state.info or self._state.closed

    async def set_total(self, total: int) -> None:
        self.total = total  # recorded in every piece's name

    async def receive(self, span: ContentRange, body: AsyncIterable[bytes]) -> None:
        assert self.total is not None
        reader = FragmentBody(body)
        start, end = max(span.first, self.received), span.last + 1
        written: list[str] = []
        try:
            await reader.skip(min(start, end) - span.first)
            if span.total == 0:
                written.append(await self._piece(reader, 0, 0))
            slot = self._store.slot(self.total) if "upload" in self._info else None
            for first, stop, whole in spans(start, end, self.total, slot):
                written.append(await (self._part if whole else self._piece)(reader, first, stop))
        except Exception:
            if written:  # what a failure left is still progress
                await self._settle(written)
            if reader.short:  # however the PUT failed, it failed because the client sent too little
                raise AckError(400, ErrorCode.E_INVALIDARG, "the fragment body is shorter than its Content-Range") from None
            raise
        await self._settle(written)
        if self.ended:
            raise AckError(400, BG_E_SESSION_NOT_FOUND, "the upload session has ended")

    async def _settle(self, written: list[str]) -> None:
        """The session as the store has it after this fragment (one LIST); pieces written into a session
        cancelled or expired meanwhile are taken back."""
        state = await self._store.state(self.id)
        if not state.info and written:
            await self._store.bucket.delete(written)
        self._apply(state)

    async def _piece(self, reader: FragmentBody, first: int, end: int) -> str:
        key = f"{self.folder}data/{first:016x}-{end:016x}-{self.total:016x}"
        await self._store.bucket.put(key, Streamed(reader, end - first) if end > first else b"", end - first)
        return key

    async def _part(self, reader: FragmentBody, first: int, end: int) -> str:
        """A whole slot into the destination's upload, then its record."""
        assert self.total is not None
        number = first // self._store.slot(self.total) + 1
        await self._store.bucket.put_part(self._store.destination(self.parts), self._info["upload"], number,
                                          Streamed(reader, end - first), end - first)
        key = f"{self.folder}part/{first:016x}-{end:016x}-{self.total:016x}"
        await self._store.bucket.put(key, b"", 0)
        return key

    async def prepare_data(self) -> None:
        if not self._state.request:
            assert self.total is not None
            await self._store.assemble(self.folder + "request", cover(self._state.pieces, self.total), self)
            self._state.request = True

    @property
    def data_name(self) -> str:
        return f"s3://{self._store.bucket.name}/{self.folder}request"

    @property
    def reply_name(self) -> str:
        return f"s3://{self._store.bucket.name}/{self.folder}response"

    async def data(self) -> AsyncIterator[bytes]:
        answer = await guarded(self._store.bucket.client.get_object(Bucket=self._store.bucket.name,
                                                                    Key=self.folder + "request"))
        async with answer["Body"] as body:
            while chunk := await guarded(body.read(1 << 20)):
                yield chunk

    async def save_reply(self, body: AsyncIterable[bytes]) -> None:
        data = b"".join([chunk async for chunk in body])  # replies are small; a PUT needs the length
        await self._store.bucket.put(self.folder + "response", data, len(data))

    async def reply_exists(self) -> bool:
        return await self._store.bucket.head(self.folder + "response") is not None

    async def record_outcome(self, outcome: Outcome, has_reply: bool) -> None:
        record = {"static_reply_url": outcome.static_reply_url, "copy_to_destination": outcome.copy_to_destination,
                  "has_reply": has_reply}
        raw = json.dumps(record).encode()
        await self._store.bucket.put(self.folder + "outcome.json", raw, len(raw))
        self.outcome, self.has_reply = outcome, has_reply

    async def commit(self, allow_overwrites: bool) -> None:
        key = self._store.destination(self.parts)
        there = await self._store.bucket.head(key)
        if there is not None:
            if there.get("Metadata", {}).get(SESSION_META) == self.id:
                return  # committed by a node that died before it wrote the tombstone
            if not allow_overwrites:
                raise AckError(409, ErrorCode.ERROR_FILE_EXISTS, "the file exists and overwrites are not allowed")
        assert self.total is not None
        if "upload" in self._info and self.total:
            await self._store.complete(key, self._info["upload"], self._state.pieces, self.total)
            return
        if self._state.request:
            segments = [(self.folder + "request", 0, self.total)] if self.total else []
        else:
            segments = cover(self._state.pieces, self.total)
        await self._store.assemble(key, segments, self)
        if "upload" in self._info:
            await self._store.bucket.abort(key, self._info["upload"])  # an empty file: one PUT, no parts

    async def close(self) -> None:
        await self._store.bucket.put(self.folder + "closed", b"", 0)
        keep = {self.folder + "session.json", self.folder + "closed"}
        objects = await self._store.bucket.list(self.folder)
        await self._store.bucket.delete([o.key for o in objects if o.key not in keep and "/lock/" not in o.key])

    async def discard(self) -> None:
        objects = await self._store.bucket.list(self.folder)
        await self._store.bucket.delete([o.key for o in objects if "/lock/" not in o.key])
        if "upload" in self._info:
            await self._store.bucket.abort(self._store.destination(self.parts), self._info["upload"])
        self._state.info = False

    async def reply_response(self, request: web.Request) -> web.StreamResponse:
        bucket = self._store.bucket
        args: dict[str, Any] = {"Bucket": bucket.name, "Key": self.folder + "response"}
        if "Range" in request.headers:
            args["Range"] = request.headers["Range"]
        try:
            answer = await guarded(bucket.client.get_object(**args))
        except ClientError as exc:
            if is_missing(exc):
                raise web.HTTPNotFound(text="no such reply\n") from None
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 416:
                raise web.HTTPRequestRangeNotSatisfiable() from None
            raise
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        if "ContentRange" in answer:
            headers["Content-Range"] = answer["ContentRange"]
        response = web.StreamResponse(status=206 if "ContentRange" in answer else 200, headers=headers)
        response.content_length = answer["ContentLength"]
        await response.prepare(request)
        async with answer["Body"] as body:
            if request.method != "HEAD":
                while chunk := await guarded(body.read(1 << 20)):
                    await response.write(chunk)
        await response.write_eof()
        return response


class S3Storage(Storage):
    """One virtual directory's sessions and uploads in the bucket."""

    affinity = False

    def __init__(self, vdir: VirtualDirectory, bucket: Bucket, settings: ObjectStorage) -> None:
        if vdir.reserved_name is None:
            raise ValueError(f"vdir {vdir.prefix}: session_directory must be relative with backend = \"s3\"")
        self.vdir = vdir
        self.bucket = bucket
        self.max_parts = settings.max_parts
        #: Whether the upload goes straight to its destination (no server application to see it first).
        self.direct = vdir.notification_type is NotificationType.NONE
        self._base = settings.prefix + (vdir.prefix.strip("/") + "/" if vdir.prefix != "/" else "")
        self.root = self._base + vdir.session_directory.strip("/") + "/"
        #: The lock outlives the longest thing done under it: the application's answer, then an assembly.
        self.lock_ttl = vdir.notification_timeout + 600.0
        #: session.json (it never changes) and the last listed state of the sessions this node served lately.
        self._known: dict[str, tuple[dict[str, str], _State]] = {}

    def folder(self, sid: str) -> str:
        return f"{self.root}{sid}/"

    def destination(self, parts: tuple[str, ...]) -> str:
        return self._base + "/".join(parts)

    async def state(self, sid: str) -> _State:
        return read_state(await self.bucket.list(self.folder(sid)), self.folder(sid))

    def slot(self, total: int) -> int:
        """The bytes of each part (but the last) of a session's multipart upload: SLOT, or more for a file
        that would need more than max_parts."""
        return SLOT * max(1, math.ceil(total / (self.max_parts * SLOT)))

    async def complete(self, key: str, upload: str, pieces: tuple[tuple[int, int, str], ...], total: int) -> None:
        """Finish a session's multipart upload: the slots that are parts already, the others joined from
        the pieces."""
        slot = self.slot(total)
        have = await self.bucket.uploaded_parts(key, upload)
        direct = {first for first, _, key in pieces if "/part/" in key}
        plain = tuple(p for p in pieces if "/part/" not in p[2])
        parts, todo = [], []
        for number, low in enumerate(range(0, total, slot), 1):
            if low in direct and number in have:
                parts.append({"PartNumber": number, "ETag": have[number]})
            else:
                todo.append((number, cover(plain, min(low + slot, total), low)))
        await self.bucket.complete(key, upload, parts + await self.bucket.fill(key, upload, todo))

    async def assemble(self, key: str, segments: list[tuple[str, int, int]], session: S3Session) -> None:
        assert session.total is not None
        await self.bucket.assemble(key, segments, session.total, self.max_parts, {SESSION_META: session.id})

    async def check_destination(self, parts: tuple[str, ...], allow_overwrites: bool) -> None:
        if not allow_overwrites and await self.bucket.head(self.destination(parts)) is not None:
            raise AckError(409, ErrorCode.ERROR_FILE_EXISTS, "the file exists and overwrites are not allowed")

    async def create(self, remote: str, url: str, protocol: str) -> Session:
        sid = new_session_id()
        info = {"id": sid, "remote": remote, "url": url, "protocol": protocol}
        if self.direct:
            info["upload"] = await self.bucket.start_upload(self.destination(tuple(remote.split("/"))),
                                                            {SESSION_META: sid})
            await self.bucket.put(f"{self.folder(sid)}mpu/{info['upload'].encode().hex()}", b"", 0)
        raw = json.dumps(info).encode()
        await self.bucket.put(self.folder(sid) + "session.json", raw, len(raw))
        return S3Session(self, sid, info, _State(info=True, newest=time.time()))

    async def get(self, sid: str) -> Session | None:
        """From what this node last saw of the session, if it is recent: a lower bound of its progress,
        which a fragment's own LIST corrects (packets refresh where a stale view would answer wrong)."""
        sid = sid.strip().lower()
        if not is_session_id(sid):
            return None
        known = self._known.get(sid)
        if known is not None and time.time() - known[1].newest <= self.vdir.session_timeout and not known[1].closed:
            info, state = known[0], replace(known[1])
        else:
            state = await self.state(sid)
            if not state.info or time.time() - state.newest > self.vdir.session_timeout:
                return None
            if known is not None:
                info = known[0]
            else:
                raw = await self.bucket.read(self.folder(sid) + "session.json")
                if raw is None:
                    return None
                info = json.loads(raw)
        session = S3Session(self, sid, info, state)
        if state.outcome:
            await session.refresh()
        return session

    def remember(self, sid: str, info: dict[str, str], state: _State) -> None:
        """Keep a session's (unchanging) session.json and its last listed state, for this node's next packet."""
        self._known.pop(sid, None)
        if len(self._known) >= 10_000:
            self._known.pop(next(iter(self._known)))
        self._known[sid] = (info, state)

    async def cleanup(self) -> int:
        """Expired sessions (any node's) and orphans go: each under its lock, re-checked once held, so no
        two nodes delete the same session and none deletes one that moved meanwhile."""
        now = time.time()
        newest: dict[str, float] = {}
        uploads: dict[str, str] = {}
        for obj in await self.bucket.list(self.root):  # one listing of every session, not one per session
            sid, _, rest = obj.key[len(self.root):].partition("/")
            newest[sid] = max(newest.get(sid, 0.0), obj.modified)
            if rest.startswith("mpu/"):
                with contextlib.suppress(ValueError):
                    uploads[sid] = bytes.fromhex(rest[4:]).decode()
        removed = 0
        for sid, modified in newest.items():
            if not is_session_id(sid) or now - modified <= self.vdir.session_timeout:
                continue
            try:
                async with Lease(self.bucket, self.folder(sid), self.lock_ttl, wait=0):
                    objects = await self.bucket.list(self.folder(sid))
                    unlocked = [o for o in objects if "/lock/" not in o.key]
                    if unlocked and time.time() - max(o.modified for o in unlocked) > self.vdir.session_timeout:
                        log.info("session %s made no progress for %s s; removing it", sid, self.vdir.session_timeout)
                        await self.bucket.delete([o.key for o in unlocked])
                        uploads.pop(sid, None)  # its upload is aborted below
                        removed += 1
            except AckError:
                continue  # another node holds it: it is alive, or that node is cleaning it
        removed += await self.bucket.abort_stale_uploads(self._base, now - self.vdir.session_timeout,
                                                         set(uploads.values()))
        return removed

    async def shutdown(self) -> None:
        return None  # nothing is held here


async def storages(vdirs: tuple[VirtualDirectory, ...], settings: ObjectStorage,
                   stack: AsyncExitStack) -> dict[str, Storage]:
    """One S3Storage per virtual directory, sharing one client (its connection pool)."""
    bucket = Bucket(await open_client(settings, stack), settings.bucket)
    return {v.prefix: S3Storage(v, bucket, settings) for v in vdirs}

