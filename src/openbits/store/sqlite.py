"""SQLite store in WAL mode with group commit.

One writer thread owns the connection. Concurrent saves queue up and are
committed together in one transaction (one fsync of the WAL), so durability
costs one fsync per batch rather than one per API call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..core.job import Job, JobFile, file_to_record, job_from_record, job_to_record
from ..events.model import Event, EventKind

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    job_id TEXT NOT NULL, idx INTEGER NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, time REAL NOT NULL, owner_uid INTEGER NOT NULL, job_id TEXT NOT NULL,
    kind TEXT NOT NULL, doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, seq);
"""
_INSERT_EVENTS = "INSERT INTO events (seq, time, owner_uid, job_id, kind, doc) VALUES (?, ?, ?, ?, ?, ?)"

_Op = Callable[[sqlite3.Connection], None]


class SqliteStore:
    def __init__(self, path: str, *, synchronous: str = "FULL") -> None:
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        self._path = path
        self._synchronous = synchronous
        self._queue: queue.SimpleQueue[tuple[_Op, asyncio.Future[None]] | None] = queue.SimpleQueue()
        with contextlib.closing(self._connect()) as conn:
            conn.executescript(_SCHEMA)
        self._thread = threading.Thread(target=self._write_loop, name="store-writer", daemon=True)
        self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        return conn

    def load_jobs(self) -> list[Job]:
        """Every job, streamed from two cursors in job id order (files are stored in that order).

        No table of every file's record is built first, so the start-up's peak memory is the
        jobs themselves.
        """
        with contextlib.closing(self._connect()) as conn:
            # Read through a mapping of the file: walking jobs in id order through SQLite's small page
            # cache re-read pages with a system call each (3.3 s of CPU for 100,000 jobs, 0.2 s mapped).
            # The mapping goes with the connection.
            conn.execute(f"PRAGMA mmap_size={1 << 30}")
            files = _decoded(conn.execute("SELECT job_id, doc FROM files ORDER BY job_id, idx"))
            pending = next(files, None)
            jobs = []
            for job_id, record in _decoded(conn.execute("SELECT id, doc FROM jobs ORDER BY id")):
                records = []
                while pending is not None and pending[0] <= job_id:
                    if pending[0] == job_id:
                        records.append(pending[1])
                    pending = next(files, None)
                jobs.append(job_from_record(record, records))
            return jobs

    async def save_job(self, job: Job, files: Sequence[int] = (), events: Sequence[Event] = ()) -> None:
        doc = json.dumps(_compact(job_to_record(job), _JOB_EMPTY))
        file_rows = [(job.id, i, json.dumps(_compact(file_to_record(job.files[i]), _FILE_EMPTY))) for i in files]
        event_rows = _event_rows(events)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO jobs (id, doc) VALUES (?, ?)", (job.id, doc))
            if file_rows:
                conn.executemany("INSERT OR REPLACE INTO files (job_id, idx, doc) VALUES (?, ?, ?)", file_rows)
            if event_rows:
                conn.executemany(_INSERT_EVENTS, event_rows)

        await self._submit(op)

    async def delete_job(self, job_id: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            conn.execute("DELETE FROM files WHERE job_id = ?", (job_id,))

        await self._submit(op)

    # -- events --

    def last_event_seq(self) -> int:
        with contextlib.closing(self._connect()) as conn:
            return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])

    async def append_events(self, events: Sequence[Event]) -> None:
        rows = _event_rows(events)

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(_INSERT_EVENTS, rows)

        await self._submit(op)

    async def read_events(self, after: int, limit: int, owner_uid: int | None, job_id: str | None) -> list[Event]:
        """Read on a connection of its own, in a thread: WAL readers never wait for the writer."""
        where, args = ["seq > ?"], [after]
        for column, value in (("owner_uid", owner_uid), ("job_id", job_id)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        query = (f"SELECT seq, time, job_id, owner_uid, kind, doc FROM events WHERE {' AND '.join(where)} "
                 f"ORDER BY seq LIMIT {int(limit)}")

        def read() -> list[Event]:
            conn = self._connect()
            try:
                return [Event(seq, when, job, uid, EventKind(kind), doc)
                        for seq, when, job, uid, kind, doc in conn.execute(query, args)]
            finally:
                conn.close()

        return await asyncio.to_thread(read)

    async def prune_events(self, older_than: float, keep_at_most: int) -> None:
        def op(conn: sqlite3.Connection) -> None:
            newest = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
            conn.execute("DELETE FROM events WHERE seq < ? AND (time < ? OR seq <= ?)",
                         (newest, older_than, newest - keep_at_most))

        await self._submit(op)

    async def close(self) -> None:
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)

    def _submit(self, op: _Op) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put((op, future))
        return future

    def _write_loop(self) -> None:
        conn = self._connect()
        try:
            while (item := self._queue.get()) is not None:
                batch = [item]
                while True:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        self._queue.put(None)
                        break
                    batch.append(nxt)
                self._commit(conn, batch)
        finally:
            conn.close()

    @staticmethod
    def _commit(conn: sqlite3.Connection, batch: list[tuple[_Op, asyncio.Future[None]]]) -> None:
        error: BaseException | None = None
        try:
            conn.execute("BEGIN")
            for op, _ in batch:
                op(conn)
            conn.execute("COMMIT")
        except BaseException as exc:  # noqa: BLE001 - handed to every waiter below
            error = exc
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        for _, future in batch:
            future.get_loop().call_soon_threadsafe(_settle, future, error)


def _empty_defaults(cls: type) -> dict[str, object]:
    """Fields whose default is empty (None, 0, False, "", []): a record leaves them out when they hold it.

    Only empty defaults, whose meaning no later version will change; the loader fills them in again.
    A queued job's record halves (816 -> 408 bytes), and so does the start-up's JSON work.
    """
    empty: dict[str, object] = {}
    for name, f in cls.__dataclass_fields__.items():  # type: ignore[attr-defined]
        default = [] if f.default_factory is list else f.default
        if default is None or (type(default) in (int, float, bool, str, list) and not default):
            empty[name] = default
    return empty


_JOB_EMPTY = _empty_defaults(Job)
_FILE_EMPTY = _empty_defaults(JobFile)


def _compact(record: dict[str, Any], empty: dict[str, object]) -> dict[str, Any]:
    return {key: value for key, value in record.items()
            if key not in empty or type(value) is not type(empty[key]) or value != empty[key]}


def _event_rows(events: Sequence[Event]) -> list[tuple[int, float, int, str, str, str]]:
    return [(e.seq, e.time, e.owner_uid, e.job_id, e.kind.value, e.doc) for e in events]


def _decoded(rows: sqlite3.Cursor, batch: int = 5000) -> Iterator[tuple[str, Any]]:
    """(key, decoded JSON doc) pairs; each batch of docs is parsed as one JSON array, which halves
    the decoding time of 100,000 jobs against one json.loads per doc."""
    while chunk := rows.fetchmany(batch):
        docs = json.loads("[" + ",".join(doc for _, doc in chunk) + "]")
        yield from zip((key for key, _ in chunk), docs)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)

