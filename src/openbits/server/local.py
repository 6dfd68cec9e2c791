"""The local-directory store: sessions in the virtual directory's BITSSessionDirectory, commits by rename.

The default, with nothing to run. A session belongs to the process that holds its folder, so several of
these behind a load balancer need BITS-Host-Id affinity (or a shared file system).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AbstractAsyncContextManager

from aiohttp import web

from ..errors import ErrorCode
from ..uploadprotocol import ContentRange, Header, format_received_range
from . import sessions
from .acks import AckError
from .paths import check_destination, commit
from .settings import VirtualDirectory
from .storage import Outcome, Session, Storage

log = logging.getLogger(__name__)

#: Bytes gathered from the request before one write: fewer system calls than one per received chunk.
WRITE_BYTES = 1 << 20
#: Chunks gathered at most (one pwritev takes up to IOV_MAX, 1024 on Linux).
WRITE_CHUNKS = 512


class LocalSession(Session):
    """A session folder of this process (sessions.Session) behind the store-neutral interface."""

    def __init__(self, store: LocalStorage, raw: sessions.Session) -> None:
        self._store = store
        self.raw = raw

    id = property(lambda self: self.raw.state.id)
    parts = property(lambda self: self.raw.state.parts)
    url = property(lambda self: self.raw.state.url)
    total = property(lambda self: self.raw.state.total)
    received = property(lambda self: self.raw.received)
    closed = property(lambda self: self.raw.state.closed)
    has_reply = property(lambda self: self.raw.state.has_reply)

    @property
    def outcome(self) -> Outcome | None:
        state = self.raw.state
        return Outcome(state.static_reply_url, state.copy_to_destination) if state.notified else None

    def lock(self) -> AbstractAsyncContextManager[None]:
        return self.raw.lock

    def receiving(self) -> AbstractAsyncContextManager[None]:
        return self.raw.lock

    async def refresh(self) -> None:
        return None  # this process is the only one that changes the folder

    @property
    def ended(self) -> bool:
        return self.raw.discarded or self.raw.state.closed

    async def set_total(self, total: int) -> None:
        self.raw.state.total = total
        self._disk(self.raw.persist)

    async def receive(self, span: ContentRange, body: AsyncIterable[bytes]) -> None:
        raw = self.raw
        if span.first > raw.received:
            raise AckError(416, ErrorCode.http(416), f"the fragment starts at {span.first}, not at {raw.received}")
        offset, pending, start = span.first, [], 0
        try:
            async for chunk in body:
                end = offset + len(chunk)
                if end > raw.received:
                    skip = max(0, raw.received - offset)
                    if not pending:
                        start = offset + skip
                    pending.append(memoryview(chunk)[skip:])
                    raw.received = end
                    if end - start >= WRITE_BYTES or len(pending) >= WRITE_CHUNKS:
                        raw.write(start, pending)
                        pending = []
                        self._sync_behind()
                offset = end
            if pending:
                raw.write(start, pending)
            if offset != span.last + 1:
                raise AckError(400, ErrorCode.E_INVALIDARG, "the fragment body is shorter than its Content-Range")
            if self.complete:  # durable before the last Ack
                await self.settle()
                await asyncio.to_thread(raw.sync, raw.received)
            else:
                self._sync_behind()
        except OSError as exc:
            if pending:  # received ran ahead of the write that failed
                raw.received = start
            raise self._error(exc) from exc

    def _sync_behind(self) -> None:
        """Every sync_bytes, within a fragment too: with a 256 MiB fragment the last Ack waited for the
        writeback of the whole last fragment."""
        raw = self.raw  # called with every gathered chunk written: received is what is written
        if raw.unsynced >= self._store.sync_bytes and raw.syncing is None:
            raw.syncing = asyncio.ensure_future(asyncio.to_thread(raw.sync, raw.received))
            raw.syncing.add_done_callback(self._synced)

    def _synced(self, done: asyncio.Future[None]) -> None:
        """The writeback of the bytes before overlaps the receiving of the next ones (an fsync in line with
        the fragments made the upload wait for the disk every sync_bytes); a failure here shows again at
        the next sync, and the recorded offset stays what was synced."""
        self.raw.syncing = None
        if not done.cancelled() and done.exception() is not None:
            log.warning("syncing session %s failed: %s", self.id, done.exception())

    async def settle(self) -> None:
        """Wait for a sync in flight (before the file is closed, committed or synced again)."""
        if self.raw.syncing is not None:
            with contextlib.suppress(OSError):
                await asyncio.shield(self.raw.syncing)

    async def prepare_data(self) -> None:
        return None  # the data file is complete and synced at the last fragment

    @property
    def data_name(self) -> str:
        return str(self.raw.data_path)

    @property
    def reply_name(self) -> str:
        return str(self.raw.reply_path)

    async def data(self) -> AsyncIterator[bytes]:
        with self.raw.data_path.open("rb") as f:
            while chunk := await asyncio.to_thread(f.read, WRITE_BYTES):
                yield chunk

    async def save_reply(self, body: AsyncIterable[bytes]) -> None:
        path = self.raw.reply_path
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as out:
            async for chunk in body:
                out.write(chunk)
        tmp.replace(path)

    async def reply_exists(self) -> bool:
        return self.raw.reply_path.exists()

    async def record_outcome(self, outcome: Outcome, has_reply: bool) -> None:
        state = self.raw.state
        state.notified = True
        state.static_reply_url = outcome.static_reply_url
        state.copy_to_destination = outcome.copy_to_destination
        state.has_reply = has_reply
        self._disk(self.raw.persist)

    async def commit(self, allow_overwrites: bool) -> None:
        await self.settle()
        vdir = self._store.vdir
        assert vdir.directory is not None
        try:
            await asyncio.to_thread(commit, vdir.directory, self.parts, self.raw.data_path, allow_overwrites)
        except OSError as exc:
            raise self._error(exc) from exc

    async def close(self) -> None:
        await self.settle()
        self._store.sessions.close(self.raw)

    async def discard(self) -> None:
        await self.settle()
        self._store.sessions.discard(self.raw)

    async def reply_response(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(self.raw.reply_path, headers={"Content-Type": "application/octet-stream"})

    def _disk(self, action: object) -> None:
        try:
            action()  # type: ignore[operator]
        except OSError as exc:
            raise self._error(exc) from exc

    def _error(self, exc: OSError) -> AckError:
        headers = {Header.RECEIVED_CONTENT_RANGE: format_received_range(self.raw.received)}
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return AckError(507, ErrorCode.ERROR_DISK_FULL, "the server's disk is full", headers=headers)
        return AckError(500, ErrorCode.E_FAIL, f"the server could not write the upload: {exc.strerror}", headers=headers)


class LocalStorage(Storage):
    """The sessions of one virtual directory in its session directory, and its destination folder."""

    affinity = True

    def __init__(self, vdir: VirtualDirectory, sync_bytes: int) -> None:
        if vdir.directory is None:
            raise ValueError(f"vdir {vdir.prefix}: 'directory' is required with the local storage backend")
        self.vdir = vdir
        self.sync_bytes = sync_bytes
        self.sessions = sessions.SessionStore(vdir.sessions_path, vdir.session_timeout)

    async def check_destination(self, parts: tuple[str, ...], allow_overwrites: bool) -> None:
        assert self.vdir.directory is not None
        check_destination(self.vdir.directory, parts, allow_overwrites)

    async def create(self, remote: str, url: str, protocol: str) -> Session:
        return LocalSession(self, self.sessions.create(remote, url, protocol))

    async def get(self, sid: str) -> Session | None:
        raw = self.sessions.get(sid)
        return None if raw is None else LocalSession(self, raw)

    async def cleanup(self) -> int:
        return await asyncio.to_thread(self.sessions.cleanup)

    async def shutdown(self) -> None:
        for raw in self.sessions.live():
            await LocalSession(self, raw).settle()
        self.sessions.flush()
