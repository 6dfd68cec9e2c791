"""Where upload sessions and finished uploads live: the interface the packets use, whichever store it is.

Two implementations: `local.LocalStorage` (a directory on this machine, the default: sessions are this
process's, so a farm of them needs BITS-Host-Id affinity) and `s3.S3Storage` (an S3-compatible object
store: every node sees every session, so any node serves any packet).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from aiohttp import web

from ..uploadprotocol import ContentRange


@dataclass(frozen=True)
class Outcome:
    """What the server application answered to a finished upload."""

    static_reply_url: str | None
    copy_to_destination: bool


class Session(ABC):
    """One upload session as the packets see it."""

    id: str
    parts: tuple[str, ...]
    url: str
    #: The total length the first fragment announced (None before it).
    total: int | None
    #: Bytes 0..received-1 are stored; what any node answers as BITS-Received-Content-Range.
    received: int
    closed: bool
    #: Set once the server application accepted the upload (None before).
    outcome: Outcome | None
    has_reply: bool

    @property
    def complete(self) -> bool:
        return self.total is not None and self.received >= self.total

    @abstractmethod
    def lock(self) -> AbstractAsyncContextManager[None]:
        """Orders the packets that end a session (last fragment's notification, Close, Cancel) on every
        node that serves it; `refresh()` after taking it."""

    @abstractmethod
    def receiving(self) -> AbstractAsyncContextManager[None]:
        """Held while a fragment is written (the local store serialises them; pieces in a store need not be)."""

    @abstractmethod
    async def refresh(self) -> None:
        """Read the session's state again (another node may have moved it on)."""

    @property
    @abstractmethod
    def ended(self) -> bool:
        """Cancelled, timed out or closed while a packet waited."""

    @abstractmethod
    async def set_total(self, total: int) -> None:
        """Record the file's length (at its first fragment)."""

    @abstractmethod
    async def receive(self, span: ContentRange, body: AsyncIterable[bytes]) -> None:
        """Store the part of a fragment's body beyond `received` (bytes already there are not rewritten)
        and update `received`; AckError 400 if the body is shorter than its range, 416 if the fragment
        starts beyond what is received (which a shared store may only know once the fragment is in)."""

    @abstractmethod
    async def prepare_data(self) -> None:
        """Make the complete upload readable as one file or object, for the server application."""

    @property
    @abstractmethod
    def data_name(self) -> str:
        """BITS-Request-DataFile-Name: where the application reads the upload (by reference)."""

    @property
    @abstractmethod
    def reply_name(self) -> str:
        """BITS-Response-DataFile-Name: where the application writes its reply (by reference)."""

    @abstractmethod
    def data(self) -> AsyncIterator[bytes]:
        """The complete upload's bytes, for a notification by value."""

    @abstractmethod
    async def save_reply(self, body: AsyncIterable[bytes]) -> None:
        """Keep the application's reply (by value)."""

    @abstractmethod
    async def reply_exists(self) -> bool:
        """Whether the application left a reply."""

    @abstractmethod
    async def record_outcome(self, outcome: Outcome, has_reply: bool) -> None:
        """Remember that the application accepted the upload, so no node notifies it again."""

    @abstractmethod
    async def commit(self, allow_overwrites: bool) -> None:
        """Make the upload the destination file (or object) in one atomic step."""

    @abstractmethod
    async def close(self) -> None:
        """Delete data and reply, keeping a tombstone so a retried Close-Session is acknowledged."""

    @abstractmethod
    async def discard(self) -> None:
        """Delete everything of the session."""

    @abstractmethod
    async def reply_response(self, request: web.Request) -> web.StreamResponse:
        """The application's reply, for GET (and HEAD, ranges) of the reply URL."""


class Storage(ABC):
    """The sessions and destination of one virtual directory."""

    #: Whether a session is bound to this process (then Create-Session sends BITS-Host-Id, if configured).
    affinity: bool

    @abstractmethod
    async def check_destination(self, parts: tuple[str, ...], allow_overwrites: bool) -> None:
        """At Create-Session: the upload may go there (AckError otherwise)."""

    @abstractmethod
    async def create(self, remote: str, url: str, protocol: str) -> Session:
        """A new session, stored before its id is announced."""

    @abstractmethod
    async def get(self, sid: str) -> Session | None:
        """The session with this id, or None if unknown, expired or cancelled. A shared store may answer
        from what this process saw last (a lower bound of the progress): `refresh()` where that matters."""

    @abstractmethod
    async def cleanup(self) -> int:
        """Delete sessions without progress for the session timeout and other orphans; how many."""

    @abstractmethod
    async def shutdown(self) -> None:
        """At shutdown: make what this process holds durable."""
