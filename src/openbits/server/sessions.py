"""Upload sessions on disk, so a restarted server resumes them where the client left off.

Each session is a folder `<session directory>/<session id>/` holding `request`
(the upload, written at its offsets), `response` (the server application's
reply, if any) and `state.json`. The `received` offset in `state.json` never
exceeds what is fsync'ed in `request`: after a crash the client is told an
offset that is true, and resends from there. A closed session leaves only a
small `state.json` (a tombstone) until its timeout, so a retried
Close-Session is acknowledged instead of answered "session not found".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..uploadprotocol import is_session_id, new_session_id

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
DATA_FILE = "request"
REPLY_FILE = "response"


@dataclass
class SessionState:
    """What `state.json` records about one session."""

    id: str
    remote: str
    url: str
    protocol: str
    total: int | None = None
    received: int = 0
    content_name: str | None = None
    notified: bool = False
    static_reply_url: str | None = None
    has_reply: bool = False
    copy_to_destination: bool = True
    closed: bool = False

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.remote.split("/"))


class Session:
    """One upload session: its persisted state, its data file and the lock that orders its packets."""

    def __init__(self, folder: Path, state: SessionState) -> None:
        self.folder = folder
        self.state = state
        self.lock = asyncio.Lock()
        #: Contiguous bytes written (maybe not yet fsync'ed); state.received is the durable part.
        self.received = state.received
        self._fd: int | None = None
        #: Set when cancelled or timed out, for packets that were waiting for the lock.
        self.discarded = False
        #: A sync running in a worker thread while fragments go on arriving (see LocalSession.receive).
        self.syncing: asyncio.Future[None] | None = None

    @property
    def data_path(self) -> Path:
        return self.folder / DATA_FILE

    @property
    def reply_path(self) -> Path:
        return self.folder / REPLY_FILE

    @property
    def unsynced(self) -> int:
        return self.received - self.state.received

    def write(self, offset: int, pieces: list[memoryview]) -> None:
        """Write the pieces one after the other from `offset` (pwritev: no shared file position between
        packets, and no copy to join the chunks a request arrives in)."""
        if self._fd is None:
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            self._fd = os.open(self.data_path, flags, 0o666)
        while pieces:
            written = os.pwritev(self._fd, pieces, offset)
            offset += written
            while pieces and written >= len(pieces[0]):
                written -= len(pieces[0])
                pieces = pieces[1:]
            if written:
                pieces = [pieces[0][written:], *pieces[1:]]

    def sync(self, written: int | None = None) -> None:
        """Make the written bytes durable, then record them as received (in that order). Safe in a worker
        thread while the event loop writes on, given `written`, the bytes written when the sync was asked
        for: the loop's `received` runs ahead of its writes by the chunks it gathers."""
        written = self.received if written is None else written
        if self._fd is not None:
            os.fsync(self._fd)
        elif self.state.total == 0:
            self.data_path.touch()
        self.state.received = max(self.state.received, written)
        self.persist()

    def persist(self) -> None:
        """Replace state.json atomically."""
        tmp = self.folder / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self.state)))
        os.replace(tmp, self.folder / STATE_FILE)

    def release(self) -> None:
        """Close the data file (at shutdown, close, cancel)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

def last_activity(folder: Path) -> float:
    """When a session last made progress: the newest mtime of its folder and files.

    The folder's own mtime covers a session being created (no state.json yet).
    """
    times = [0.0]
    for path in (folder, folder / STATE_FILE, folder / DATA_FILE, folder / REPLY_FILE):
        with contextlib.suppress(OSError):
            times.append(path.stat().st_mtime)
    return max(times)


class SessionStore:
    """The sessions of one virtual directory (its BITSSessionDirectory)."""

    def __init__(self, root: Path, timeout: float) -> None:
        self.root = root
        self.timeout = timeout
        self._live: dict[str, Session] = {}
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def create(self, remote: str, url: str, protocol: str) -> Session:
        """A new session with a fresh random id, persisted before it is announced."""
        sid = new_session_id()
        folder = self.root / sid
        folder.mkdir(mode=0o700)
        session = Session(folder, SessionState(id=sid, remote=remote, url=url, protocol=protocol))
        session.persist()
        self._live[sid] = session
        return session

    def get(self, sid: str) -> Session | None:
        """The session with this id (loaded from disk after a restart), or None if unknown or expired."""
        sid = sid.strip().lower()
        if not is_session_id(sid):
            return None
        session = self._live.get(sid) or self._load(sid)
        if session is None:
            return None
        if time.time() - last_activity(session.folder) > self.timeout and not session.lock.locked():
            self.discard(session)
            return None
        return session

    def _load(self, sid: str) -> Session | None:
        folder = self.root / sid
        try:
            state = SessionState(**json.loads((folder / STATE_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None
        session = self._live[sid] = Session(folder, state)
        return session

    def discard(self, session: Session) -> None:
        """Forget a session and delete all its files."""
        session.release()
        session.discarded = True
        self._live.pop(session.state.id, None)
        shutil.rmtree(session.folder, ignore_errors=True)

    def close(self, session: Session) -> None:
        """Delete a session's data and reply, keeping a tombstone for retried Close-Session packets."""
        session.release()
        for name in (DATA_FILE, REPLY_FILE):
            with contextlib.suppress(FileNotFoundError):
                (session.folder / name).unlink()
        session.state.closed = True
        session.persist()

    def live(self) -> list[Session]:
        """The sessions this process holds open."""
        return list(self._live.values())

    def flush(self) -> None:
        """At shutdown: make every session's progress durable and close its file."""
        for session in list(self._live.values()):
            if not session.state.closed and session.unsynced:
                session.sync()
            session.release()
        self._live.clear()

    def cleanup(self, now: float | None = None) -> int:
        """Delete sessions (and tombstones) without progress for the session timeout; how many."""
        now = time.time() if now is None else now
        removed = 0
        for folder in self.root.iterdir():
            if not is_session_id(folder.name) or not folder.is_dir():
                continue  # never touch what the server did not create
            live = self._live.get(folder.name)
            if (live is not None and live.lock.locked()) or now - last_activity(folder) <= self.timeout:
                continue
            log.info("session %s made no progress for %s s; removing it", folder.name, self.timeout)
            if live is not None:
                self.discard(live)
            else:
                shutil.rmtree(folder, ignore_errors=True)
            removed += 1
        return removed
