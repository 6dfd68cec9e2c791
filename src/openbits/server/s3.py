"""The object-storage store: sessions and uploads in an S3-compatible bucket, so any node serves any packet.

Nothing of a session is in a node's memory but what it saw of it last (a lower bound of its progress): its
folder in the bucket is the truth (s3folder.py has what its names mean). A piece is one PUT, which a
store makes visible whole or not at all, so a node that dies mid-fragment leaves nothing, and the received
range every node answers is read from one LIST after the fragment is stored (or is what the node saw and
the fragment added, if the node had seen its beginning received). Close-Session assembles the
pieces into the destination object with one multipart upload (ranges copied inside the store; pieces
smaller than a part are joined by the node), so the destination appears at once, complete, and carries
the session id in its metadata.

Without a server application the bytes go to the destination, so Create-Session starts its multipart
upload at once, and a fragment's bytes that fill a whole slot of it (slot(total) bytes, 16 MiB and up,
at a multiple of that) stream into it as that slot's part: the store writes them once, not as a piece and
again as a part (3.4x the store's CPU per byte of a plain multipart upload, bench/upload.py). A slot's
part is always the same bytes, so a retried fragment that writes it again changes nothing. A fragment's
head that ends a slot whose beginning is pieces becomes that slot's part at once, the pieces streamed
back through the node ahead of it (a 64 MiB upload's 1, 3 and 12 MiB first fragments: its first slot is
a part at the third). The rest of a fragment is pieces, joined into their slots' parts at Close-Session.

Each request costs the store CPU (about 10 ms of Swift's), so a packet makes few: a fragment, its pieces
and parts, one record of its parts (with their ETags, so Close-Session needs no ListParts) and one LIST,
none if it began within what its node saw and wrote a part (_settle); a node's first packet of a
session, a LIST and a GET of session.json more. Close-Session: the lock (a PUT and a LIST, which is also
the refresh), a HEAD of the destination, the slots not yet parts, the completion, the tombstone and,
after the Ack, one DeleteObjects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterable, AsyncIterator, Coroutine
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import replace
from typing import Any

from aiohttp import web
from botocore.exceptions import ClientError

from ..errors import ErrorCode
from ..uploadprotocol import BG_E_SESSION_NOT_FOUND, ContentRange, is_session_id, new_session_id
from .acks import AckError
from .s3bucket import PART_MIN, Bucket, FragmentBody, Listed, Streamed, chained, gather_parts, open_client, plan_parts
from .s3folder import INFO, FolderState, Lease, cover, covered, piece_key, read_state, record_key, spans
from .settings import NotificationType, ObjectStorage, VirtualDirectory
from .storage import Outcome, Session, Storage

__all__ = ["PART_MIN", "S3Storage", "plan_parts", "storages"]

log = logging.getLogger(__name__)

#: Metadata key (x-amz-meta-...) naming the session a destination object came from.
SESSION_META = "bits-session-id"
#: The smallest slot of a destination's multipart upload (a part but the last): the openbits client's
#: largest fragment to a server that tells no limit (LEGACY_FRAGMENT_LIMIT), a power of two at a multiple of
#: which its fragments end, so a fast link's fragments are whole parts (8 MiB slots made two parts of a
#: 16 MiB fragment, a request to the store more). Larger slots would make a slow link's 16 MiB fragments
#: pieces, each read back into its part: three times the store's traffic.
SLOT = 16 << 20


class S3Session(Session):
    """A session whose state is its folder in the bucket; this object is only a packet's view of it."""

    def __init__(self, store: S3Storage, sid: str, info: dict[str, str], state: FolderState) -> None:
        self._store = store
        self.id = sid
        self._info = info
        self.parts = tuple(info["remote"].split("/"))
        self.url = info["url"]
        self.outcome = None
        self._lease: Lease | None = None
        #: The lock's LIST came after the last refresh (so the next refresh needs none).
        self._fresh = False
        self._apply(state)

    def _apply(self, state: FolderState) -> None:
        self._state = state
        self.total, self.received, self.closed, self.has_reply = state.total, state.received, state.closed, state.reply
        self._store.remember(self.id, self._info, state)

    def _made(self, key: str) -> None:
        """A key this packet wrote under the lock, for Close-Session's and Cancel-Session's delete."""
        self._state.keys += (key,)

    @property
    def folder(self) -> str:
        return self._store.folder(self.id)

    def lock(self) -> AbstractAsyncContextManager[None]:
        self._lease = Lease(self._store.bucket, self.folder, self._store.lock_ttl, listed=self._listed)
        return self._lease

    def _listed(self, objects: list[Listed]) -> None:
        self._apply(self._store.read(self.id, objects))
        self._fresh = True

    def receiving(self) -> AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()  # pieces are immutable: fragments need no order between nodes

    async def refresh(self) -> None:
        if not self._fresh:
            self._apply(await self._store.state(self.id))
        self._fresh = False
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
        """Stored from what this node knew was received, then checked against one LIST: a view that was
        behind costs bytes stored twice (harmless), never a LIST more before the fragment."""
        assert self.total is not None
        reader = FragmentBody(body)
        total, end = self.total, span.last + 1
        slot = self._store.slot(total) if "upload" in self._info else None
        start = max(span.first, self.received)
        if slot is not None and start % slot and end >= min(start // slot * slot + slot, total) and \
                covered(self._state.pieces, start, start // slot * slot) is None:
            self._apply(await self._store.state(self.id))  # the pieces that begin its slot may be in
            start = max(start, self.received)
        seen = self._state.total == span.total and span.first <= self.received
        written: list[str] = []
        parts: list[tuple[int, int, str]] = []
        sending: list[tuple[int, int, asyncio.Future[str]]] = []  # parts whose bodies are sent
        try:
            await reader.skip(min(start, end) - span.first)
            if span.total == 0:
                written.append(await self._piece(reader, 0, 0))
            for first, stop, whole in spans(start, end, total, slot):
                low = first // slot * slot if slot else first
                head = None if whole or slot is None or stop != min(low + slot, total) else \
                    covered(self._state.pieces, first, low)
                if whole or head:  # a whole slot, or the end of one begun by pieces: joined with them now
                    chunks = reader.take(stop - first)
                    body = chained(self._store.bucket.ranges(head), chunks) if head else chunks
                    sending.append((low, stop, await reader.overlapped(self._part(low, stop, body))))
                else:
                    written.append(await self._piece(reader, first, stop))
            await gather_parts(sending, parts)
        except asyncio.CancelledError:
            for _, _, sent in sending:
                sent.cancel()
            raise
        except Exception:
            await gather_parts(sending, parts, failed=True)
            with contextlib.suppress(AckError):  # what a failure left is still progress; and the session
                await self._settle(written, parts, False)  # may have ended (a piece to join is gone)
            if self.ended:
                raise AckError(400, BG_E_SESSION_NOT_FOUND, "the upload session has ended") from None
            if reader.short:  # however the PUT failed, it failed because the client sent too little
                raise AckError(400, ErrorCode.E_INVALIDARG, "the fragment body is shorter than its Content-Range") from None
            raise
        await self._settle(written, parts, seen and bool(parts))
        if self.ended:
            raise AckError(400, BG_E_SESSION_NOT_FOUND, "the upload session has ended")
        refused = None
        if self._state.total != span.total:
            refused = AckError(400, ErrorCode.E_INVALIDARG, f"total length {span.total} differs from the session's {self._state.total}")
        elif span.first > self.received:
            refused = AckError(416, ErrorCode.http(416), f"the fragment starts at {span.first}, not at {self.received}")
        if refused is not None:
            await self._store.bucket.delete(written)  # a node whose view was behind stored it before it knew
            raise refused

    async def _settle(self, written: list[str], parts: list[tuple[int, int, str]], seen: bool) -> None:
        """The session as the store has it after this fragment: one LIST, while the one record of the
        parts it wrote is stored (this node knows it is there). Pieces written into a session cancelled
        or expired meanwhile are taken back. `seen`: the fragment began within what this node saw
        received and the store took a part of the session's upload (which Close and Cancel end), so that
        view and what the fragment wrote are the state without a LIST (half the requests of a 1 GiB
        upload through one node)."""
        bucket, now = self._store.bucket, time.time()
        stored: list[Coroutine[Any, Any, None]] = []
        if parts:
            assert self.total is not None
            written.append(record_key(self.folder, parts[0][0], parts[-1][1], self.total, self._store.slot(self.total),
                                      [e for _, _, e in parts]))
            stored.append(bucket.put(written[-1], b"", 0))
        if seen:
            await asyncio.gather(*stored)
            objects = [Listed(k, 0, self._state.newest) for k in self._state.keys]
        else:
            objects = (await asyncio.gather(bucket.list(self.folder), *stored))[0]
        objects += [Listed(k, 0, now) for k in written if all(o.key != k for o in objects)]
        state = self._store.read(self.id, objects)
        if not state.info and written:
            await self._store.bucket.delete(written)
        self._apply(state)

    async def _piece(self, reader: FragmentBody, first: int, end: int) -> str:
        assert self.total is not None
        key = piece_key(self.folder, first, end, self.total)
        await self._store.bucket.put(key, Streamed(reader.take(end - first)) if end > first else b"", end - first)
        return key

    async def _part(self, first: int, end: int, chunks: AsyncIterator[bytes | memoryview]) -> str:
        """A whole slot into the destination's upload; its ETag."""
        assert self.total is not None
        number = first // self._store.slot(self.total) + 1
        return await self._store.bucket.put_part(self._store.destination(self.parts), self._info["upload"], number,
                                                 Streamed(chunks), end - first)

    async def prepare_data(self) -> None:
        if not self._state.request:
            assert self.total is not None
            await self._store.assemble(self.folder + "request", cover(self._state.pieces, self.total), self)
            self._state.request = True
            self._made(self.folder + "request")

    @property
    def data_name(self) -> str:
        return f"s3://{self._store.bucket.name}/{self.folder}request"

    @property
    def reply_name(self) -> str:
        return f"s3://{self._store.bucket.name}/{self.folder}response"

    def data(self) -> AsyncIterator[bytes]:
        return self._store.bucket.stream(self.folder + "request")

    async def save_reply(self, body: AsyncIterable[bytes]) -> None:
        data = b"".join([chunk async for chunk in body])  # replies are small; a PUT needs the length
        await self._store.bucket.put(self.folder + "response", data, len(data))
        self._made(self.folder + "response")

    async def reply_exists(self) -> bool:
        return await self._store.bucket.head(self.folder + "response") is not None

    async def record_outcome(self, outcome: Outcome, has_reply: bool) -> None:
        record = {"static_reply_url": outcome.static_reply_url, "copy_to_destination": outcome.copy_to_destination,
                  "has_reply": has_reply}
        raw = json.dumps(record).encode()
        await self._store.bucket.put(self.folder + "outcome.json", raw, len(raw))
        self._made(self.folder + "outcome.json")
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
            await self._store.complete(key, self._info["upload"], self._state, self.total)
            return
        if self._state.request:
            segments = [(self.folder + "request", 0, self.total)] if self.total else []
        else:
            segments = cover(self._state.pieces, self.total)
        await self._store.assemble(key, segments, self)
        if "upload" in self._info:
            await self._store.bucket.abort(key, self._info["upload"])  # an empty file: one PUT, no parts

    async def close(self) -> None:
        """Under the lock, whose LIST named the keys to delete (a piece a stray fragment adds meanwhile is
        clean-up's, with the tombstone). They are deleted after the Ack (a thousand records and pieces of
        a large upload took 0.6 s); a node that dies first leaves them to the clean-up too."""
        await self._store.bucket.put(self.folder + "closed", b"", 0)
        self._apply(replace(self._state, closed=True))
        keep = {self.folder + INFO, self.folder + "closed"}
        doomed = [k for k in self._state.keys if k not in keep and "/lock/" not in k]
        assert self._lease is not None
        self._store.later(self._lease.release_with(doomed))

    async def discard(self) -> None:
        """Under the lock, as close()."""
        assert self._lease is not None
        await self._lease.release_with([k for k in self._state.keys if "/lock/" not in k])
        if "upload" in self._info:
            await self._store.bucket.abort(self._store.destination(self.parts), self._info["upload"])
        self._state.info = False

    async def reply_response(self, request: web.Request) -> web.StreamResponse:
        return await self._store.bucket.serve(request, self.folder + "response")


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
        self._known: dict[str, tuple[dict[str, str], FolderState]] = {}
        self._later: set[asyncio.Task[None]] = set()

    def folder(self, sid: str) -> str:
        return f"{self.root}{sid}/"

    def destination(self, parts: tuple[str, ...]) -> str:
        return self._base + "/".join(parts)

    async def state(self, sid: str) -> FolderState:
        return self.read(sid, await self.bucket.list(self.folder(sid)))

    def read(self, sid: str, objects: list[Listed]) -> FolderState:
        return read_state(objects, self.folder(sid), self.slot)

    def slot(self, total: int) -> int:
        """The bytes of each part (but the last) of a session's multipart upload: SLOT, or more for a file
        that would need more than max_parts."""
        return SLOT * max(1, math.ceil(total / (self.max_parts * SLOT)))

    async def complete(self, key: str, upload: str, state: FolderState, total: int) -> None:
        """Finish a session's multipart upload: the slots that are parts already (their ETags from the
        records), the others joined from the pieces."""
        slot = self.slot(total)
        parts, todo = [], []
        for number, low in enumerate(range(0, total, slot), 1):
            if low in state.etags:
                parts.append({"PartNumber": number, "ETag": f'"{state.etags[low]}"'})
            else:
                todo.append((number, cover(state.pieces, min(low + slot, total), low)))
        parts += await self.bucket.fill(key, upload, todo)
        try:
            await self.bucket.complete(key, upload, parts)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "InvalidPart":
                raise
            # A store whose ETags are not the parts' MD5 changed one when a resent fragment wrote it again.
            have = await self.bucket.uploaded_parts(key, upload)
            await self.bucket.complete(key, upload, [{**p, "ETag": have.get(p["PartNumber"], p["ETag"])} for p in parts])

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
        raw = json.dumps(info).encode()
        await self.bucket.put(self.folder(sid) + INFO, raw, len(raw))
        return S3Session(self, sid, info, FolderState(info=True, newest=time.time(), keys=(self.folder(sid) + INFO,)))

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
                raw = await self.bucket.read(self.folder(sid) + INFO)
                if raw is None:
                    return None
                info = json.loads(raw)
        session = S3Session(self, sid, info, state)
        if state.outcome:
            await session.refresh()
        return session

    def remember(self, sid: str, info: dict[str, str], state: FolderState) -> None:
        """Keep a session's (unchanging) session.json and its last listed state, for this node's next packet."""
        self._known.pop(sid, None)
        if len(self._known) >= 10_000:
            self._known.pop(next(iter(self._known)))
        self._known[sid] = (info, state)

    async def cleanup(self) -> int:
        """Expired sessions (any node's) and orphans go: each under its lock, re-checked once held, so no
        two nodes delete the same session and none deletes one that moved meanwhile."""
        now, timeout = time.time(), self.vdir.session_timeout
        newest: dict[str, float] = {}
        created: dict[str, float] = {}
        for obj in await self.bucket.list(self.root):  # one listing of every session, not one per session
            sid, _, rest = obj.key[len(self.root):].partition("/")
            newest[sid] = max(newest.get(sid, 0.0), obj.modified)
            if rest == INFO:
                created[sid] = obj.modified
        removed = 0
        live: set[str] = set()
        for sid, modified in newest.items():
            if not is_session_id(sid):
                continue
            if now - modified <= timeout:
                if now - created.get(sid, now) > timeout:  # alive, but its upload is as old as an abandoned one
                    raw = await self.bucket.read(self.folder(sid) + INFO)
                    live.add(json.loads(raw).get("upload", "") if raw else "")
                continue
            listed: list[Listed] = []
            lease = Lease(self.bucket, self.folder(sid), self.lock_ttl, wait=0, listed=listed.extend)
            try:
                async with lease:
                    unlocked = [o for o in listed if "/lock/" not in o.key]
                    if unlocked and time.time() - max(o.modified for o in unlocked) > timeout:
                        log.info("session %s made no progress for %s s; removing it", sid, timeout)
                        await lease.release_with([o.key for o in unlocked])
                        removed += 1  # its upload is aborted below
            except AckError:
                continue  # another node holds it: it is alive, or that node is cleaning it
        return removed + await self.bucket.abort_stale_uploads(self._base, now - timeout, live)

    def later(self, work: Coroutine[Any, Any, None]) -> None:
        """Run store work no Ack waits for; shutdown() lets it finish."""
        task = asyncio.ensure_future(work)
        self._later.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._later.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("deleting a closed session's data failed (the clean-up will): %s", task.exception())

    async def shutdown(self) -> None:
        await asyncio.gather(*self._later, return_exceptions=True)


async def storages(vdirs: tuple[VirtualDirectory, ...], settings: ObjectStorage,
                   stack: AsyncExitStack) -> dict[str, Storage]:
    """One S3Storage per virtual directory, sharing one client (its connection pool)."""
    bucket = Bucket(await open_client(settings, stack), settings.bucket)
    return {v.prefix: S3Storage(v, bucket, settings) for v in vdirs}

