"""The file broker: one small process per identity does every local path operation of the daemon.

Layout, all created before the daemon's event loop and threads exist:

    openbitsd (root) --zygote socket--> zygote (root, forked by FileBroker.start)
                                          `-- fork --> broker (alice only) <--socketpair--> openbitsd

The zygote forks a broker per identity and hands the daemon one end of a fresh SOCK_SEQPACKET
socketpair over SCM_RIGHTS; the broker drops to that identity (setgroups, setresgid, setresuid)
without exec'ing anything, so the interpreter's location does not matter. The broker answers JSON
requests and returns open descriptors over SCM_RIGHTS; the daemon only ever touches descriptors.

Both directions batch: the daemon sends every request queued during one event-loop turn as one
JSON list of [id, op, args]; the broker answers up to 250 of them per message as [id, reply,
number of descriptors], with the descriptors of the batch in order on the message (fdpass.py).

Three modules, as OpenSSH splits its monitor: this one is the daemon's side (the wrappers the
daemon calls), brokerchild.py the children's request loop, fdpass.py the framing both speak.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat as st
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from ..enums import ErrorContext
from ..errors import BitsError, ErrorCode
from ..model.identity import Identity
from .brokerchild import ZYGOTE_MESSAGE_MAX, run_child, zygote_main
from .fdpass import BATCH, FRAME_MAX, ProtocolError, Reassembly, close_all, frames, recv_with_fds
from .localfiles import FileStat, LocalFiles, Rename, local_error

_DESCRIPTION_MAX = 2000
_SPAWN_TIMEOUT = 10.0
#: A broker that answers nothing for this long (stopped by its user, wedged on a dead mount) is dropped.
CALL_TIMEOUT = 120.0


#: Codes a broker may report; anything else becomes E_FAIL (the broker is the less trusted side).
_BROKER_CODES = frozenset(
    {
        ErrorCode.E_FAIL,
        ErrorCode.E_ACCESSDENIED,
        ErrorCode.E_INVALIDARG,
        ErrorCode.ERROR_FILE_NOT_FOUND,
        ErrorCode.ERROR_PATH_NOT_FOUND,
        ErrorCode.ERROR_FILE_EXISTS,
        ErrorCode.ERROR_DISK_FULL,
        ErrorCode.ERROR_LOGON_FAILURE,
    }
)



class _BrokerGone(Exception):
    """The broker exited (killed, crashed, closed) or stopped answering; a new one can be spawned."""


class _Connection:
    """Many coroutines' requests multiplexed over one broker socket, matched by request id."""

    def __init__(self, sock: socket.socket, pid: int, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        sock.setblocking(False)
        self.sock, self.pid, self.loop, self.timeout = sock, pid, loop, timeout
        self.alive = True
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[tuple[Any, list[int]]]] = {}
        self._outbox: list[list[Any]] = []
        self._backlog: deque[bytes] = deque()
        self._reassembly = Reassembly()
        loop.add_reader(sock.fileno(), self._on_readable)

    async def call(self, op: str, args: list[Any]) -> tuple[Any, list[int]]:
        """Queue one request for this loop turn's batch and wait for its (reply, descriptors)."""
        if not self.alive:
            raise _BrokerGone("exited")
        self._next_id = request_id = (self._next_id + 1) & 0xFFFFFFFF
        future = self._pending[request_id] = self.loop.create_future()
        if not self._outbox:
            self.loop.call_soon(self._send_outbox)
        self._outbox.append([request_id, op, args])
        try:
            async with asyncio.timeout(self.timeout):
                return await future
        except TimeoutError:
            _discard(future)
            self.close()
            raise _BrokerGone(f"did not answer {op} within {self.timeout:g} s") from None
        except asyncio.CancelledError:
            _discard(future)
            raise
        finally:
            self._pending.pop(request_id, None)

    def close(self) -> None:
        """Drop the connection; the broker sees EOF and exits, waiting callers get _BrokerGone."""
        if not self.alive:
            return
        self.alive = False
        if not self.loop.is_closed():
            self.loop.remove_reader(self.sock.fileno())
            self.loop.remove_writer(self.sock.fileno())
        self.sock.close()
        self._outbox.clear()
        self._backlog.clear()
        for future in self._pending.values():
            if not future.done() and not self.loop.is_closed():
                future.set_exception(_BrokerGone("exited"))

    def _send_outbox(self) -> None:
        batch, self._outbox = self._outbox, []
        if self.alive:
            self._backlog.extend(frames(batch))
            self._flush()

    def _flush(self) -> None:
        while self._backlog:
            try:
                self.sock.send(self._backlog[0])
            except BlockingIOError:
                self.loop.add_writer(self.sock.fileno(), self._flush)
                return
            except OSError:
                self.close()
                return
            self._backlog.popleft()
        self.loop.remove_writer(self.sock.fileno())

    def _on_readable(self) -> None:
        while self.alive:
            try:
                frame, fds, flags = recv_with_fds(self.sock, FRAME_MAX, BATCH, socket.MSG_CMSG_CLOEXEC)
            except BlockingIOError:
                return
            except OSError:
                self.close()
                return
            try:
                if not frame:
                    raise ProtocolError("end of file")
                if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                    raise ProtocolError("truncated frame")
                replies = self._reassembly.feed(frame)
                if replies is None and fds:
                    raise ProtocolError("descriptors before the last frame")
                matched = [] if replies is None else _match(replies, fds)
            except ProtocolError:
                close_all(fds)
                self.close()
                return
            for request_id, reply, its_fds in matched:
                future = self._pending.get(request_id)
                if future is None or future.done():
                    close_all(its_fds)  # its caller was cancelled
                else:
                    future.set_result((reply, its_fds))


def _discard(future: asyncio.Future[tuple[Any, list[int]]]) -> None:
    """Close the descriptors of a reply that won the race against its caller's cancellation."""
    if future.done() and not future.cancelled() and future.exception() is None:
        close_all(future.result()[1])


def _match(replies: Any, fds: list[int]) -> list[tuple[int, Any, list[int]]]:
    """Split a batch's descriptors among its replies; the counts must add up exactly."""
    matched, used = [], 0
    try:
        for request_id, reply, count in replies:
            if type(request_id) is not int or type(count) is not int or not 0 <= count <= BATCH:
                raise ProtocolError("bad reply header")
            matched.append((request_id, reply, fds[used : used + count]))
            used += count
    except (TypeError, ValueError):
        raise ProtocolError("bad reply batch") from None
    if used != len(fds):
        raise ProtocolError("descriptor count mismatch")
    return matched


def _reply(reply: Any, who: str) -> Any:
    """Check a broker reply defensively: known shapes, known codes, bounded text."""
    if isinstance(reply, dict) and reply.keys() == {"ok"}:
        return reply["ok"]
    if isinstance(reply, dict) and reply.keys() == {"error"}:
        raise _broker_error(reply["error"])
    raise local_error(ErrorCode.E_FAIL, f"the file broker for user {who} sent a malformed reply")


def _broker_error(item: Any) -> BitsError:
    """[code, description] from a broker; a code it has no business sending becomes E_FAIL."""
    if isinstance(item, list) and len(item) == 2 and type(item[0]) is int and isinstance(item[1], str):
        if item[0] in _BROKER_CODES:
            return local_error(item[0], item[1][:_DESCRIPTION_MAX])
    return local_error(ErrorCode.E_FAIL, f"file broker failure: {str(item)[:_DESCRIPTION_MAX]}")


class _BrokerFiles:
    """LocalFiles for one identity, backed by its broker process (spawned on first use, respawned after death)."""

    def __init__(self, spawner: FileBroker, identity: Identity, strict: bool = False) -> None:
        self.identity = identity
        self.strict = strict
        self._spawner = spawner
        self._conn: _Connection | None = None

    @property
    def pid(self) -> int | None:
        """The current broker process, if one runs (for diagnostics and tests)."""
        return self._conn.pid if self._conn is not None and self._conn.alive else None

    async def check_destination(self, local_path: str) -> None:
        await self._call("check_destination", [local_path])

    async def open_temp(self, temp_path: str, *, create: bool) -> int:
        return await self._call_fd("open_temp", [temp_path, create])

    async def open_temps(self, temp_paths: Sequence[str]) -> list[int | BitsError]:
        results: list[int | BitsError] = []
        for start in range(0, len(temp_paths), BATCH):
            paths = list(temp_paths[start : start + BATCH])
            reply, fds = await self._exchange("open_temps", [paths], retry=True)
            try:
                items = _reply(reply, self.identity.name)
                if (not isinstance(items, list) or len(items) != len(paths) or items.count(None) != len(fds)
                        or not all(st.S_ISREG(os.fstat(fd).st_mode) for fd in fds)):
                    raise local_error(ErrorCode.E_FAIL, f"the file broker for user {self.identity.name} sent a "
                                      "malformed reply")
            except BaseException:
                close_all(fds)
                raise
            given = iter(fds)
            results += [next(given) if item is None else _broker_error(item) for item in items]
        return results

    async def commit(self, renames: Sequence[tuple[str, str] | tuple[str, str, int]]) -> list[BitsError | None]:
        pairs = [list(Rename(*rename)) for rename in renames]
        results = await self._call("commit", [pairs], retry=False)
        if not isinstance(results, list) or len(results) != len(pairs):
            raise local_error(ErrorCode.E_FAIL, f"the file broker for user {self.identity.name} sent a malformed reply")
        return [None if item is None else _broker_error(item) for item in results]

    async def remove(self, paths: Sequence[str]) -> None:
        await self._call("remove", [list(paths)])

    async def open_read(self, path: str) -> int:
        return await self._call_fd("open_read", [path])

    async def stat(self, path: str) -> FileStat | None:
        result = await self._call("stat", [path])
        if result is None:
            return None
        if not (isinstance(result, list) and len(result) == 4 and all(type(v) is int for v in result)):
            raise local_error(ErrorCode.E_FAIL, f"the file broker for user {self.identity.name} sent a malformed stat")
        return FileStat(*result)

    async def list_folder(self, path: str) -> list[str]:
        names = await self._call("list_folder", [path])
        if not (isinstance(names, list) and all(isinstance(name, str) for name in names)):
            raise local_error(ErrorCode.E_FAIL, f"the file broker for user {self.identity.name} sent a malformed list")
        return names

    async def negotiate_start(self, context_id: str, protocol: str, service: str, host: str,
                              username: str | None, password: str | None,
                              binding: str | None = None) -> tuple[str | None, str | None]:
        reply = await self._call("negotiate_start", [context_id, protocol, service, host, username, password, binding])
        if not (isinstance(reply, list) and len(reply) == 2 and all(v is None or isinstance(v, str) for v in reply)):
            raise local_error(ErrorCode.E_FAIL, f"the file broker for user {self.identity.name} sent a malformed token")
        return reply[0], reply[1]

    async def negotiate_step(self, context_id: str, token: str, final: bool) -> tuple[str | None, bool]:
        reply = await self._call("negotiate_step", [context_id, token, final])
        if not (isinstance(reply, list) and len(reply) == 2 and (reply[0] is None or isinstance(reply[0], str))
                and isinstance(reply[1], bool)):
            raise local_error(ErrorCode.E_FAIL, f"the file broker for user {self.identity.name} sent a malformed token")
        return reply[0], reply[1]

    async def negotiate_key(self, context_id: str) -> str:
        reply = await self._call("negotiate_key", [context_id])
        if not isinstance(reply, str):
            raise local_error(ErrorCode.E_FAIL, f"the file broker for user {self.identity.name} sent a malformed key")
        return reply

    async def negotiate_end(self, context_id: str) -> None:
        await self._call("negotiate_end", [context_id])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _call_fd(self, op: str, args: list[Any]) -> int:
        """A request answered by exactly one regular-file descriptor."""
        reply, fds = await self._exchange(op, args, retry=True)
        try:
            _reply(reply, self.identity.name)
            if len(fds) != 1 or not st.S_ISREG(os.fstat(fds[0]).st_mode):
                raise local_error(ErrorCode.E_FAIL, f"the file broker for user {self.identity.name} sent no file")
        except BaseException:
            close_all(fds)
            raise
        return fds[0]

    async def _call(self, op: str, args: list[Any], retry: bool = True) -> Any:
        reply, fds = await self._exchange(op, args, retry=retry)
        close_all(fds)
        return _reply(reply, self.identity.name)

    async def _exchange(self, op: str, args: list[Any], retry: bool) -> tuple[Any, list[int]]:
        """One round trip; a request lost with a dead broker is resent once to a new one when that is safe."""
        gone: _BrokerGone | None = None
        for _ in range(2 if retry else 1):
            try:
                return await self._connection().call(op, args)
            except _BrokerGone as exc:
                gone = exc
        raise local_error(ErrorCode.E_FAIL, f"the file broker for user {self.identity.name} {gone} during {op}")

    def _connection(self) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = self._conn
        if conn is None or not conn.alive or conn.loop is not loop:
            if conn is not None:
                conn.close()
            pid, sock = self._spawner._spawn(self.identity, self.strict)
            conn = self._conn = _Connection(sock, pid, loop, self._spawner.call_timeout)
        return conn


class FileBroker:
    """Owns the zygote and one broker process per identity."""

    def __init__(self, zygote: socket.socket, zygote_pid: int, call_timeout: float) -> None:
        self._zygote: socket.socket | None = zygote
        self._zygote_pid = zygote_pid
        self.call_timeout = call_timeout
        self._lock = threading.Lock()
        self._files: dict[tuple[Identity, bool], _BrokerFiles] = {}

    @classmethod
    def start(cls, *, call_timeout: float = CALL_TIMEOUT) -> FileBroker:
        """Fork the zygote: call before the event loop and any thread exist (fork copies only this thread)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        daemon_pid = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            ours.close()
            run_child(zygote_main, theirs, daemon_pid)
        theirs.close()
        ours.settimeout(_SPAWN_TIMEOUT)
        return cls(ours, pid, call_timeout)

    def files_for(self, identity: Identity, strict: bool = False) -> LocalFiles:
        """The broker-backed LocalFiles of identity; a user-mode daemon can only act as itself.

        strict: a broker that follows no symbolic link in any component of a path (a job after TakeOwnership).
        """
        euid = os.geteuid()
        if euid != 0 and identity.uid != euid:
            raise BitsError(
                ErrorCode.E_ACCESSDENIED,
                f"openbitsd runs as uid {euid} (user mode) and cannot access files as user {identity.name}",
                ErrorContext.LOCAL_FILE,
            )
        files = self._files.get((identity, strict))
        if files is None:
            files = self._files[(identity, strict)] = _BrokerFiles(self, identity, strict)
        return files

    def _spawn(self, identity: Identity, strict: bool = False) -> tuple[int, socket.socket]:
        """Ask the zygote for a broker holding identity: (its pid, our end of its socket). Takes ~1 ms."""
        request = {"uid": identity.uid, "gid": identity.gid, "groups": list(identity.groups), "name": identity.name,
                   "strict": strict}
        with self._lock:
            if self._zygote is None:
                raise local_error(ErrorCode.E_FAIL, "the file broker is closed or its zygote died; restart openbitsd")
            try:
                self._zygote.send(json.dumps(request).encode())
                message, fds, _ = recv_with_fds(self._zygote, ZYGOTE_MESSAGE_MAX, 1, socket.MSG_CMSG_CLOEXEC)
            except OSError as exc:  # dead or wedged: a late answer must never be taken for the next one
                self._zygote.close()
                self._zygote = None
                raise local_error(ErrorCode.E_FAIL, f"the file broker zygote does not answer: {exc}") from None
        try:
            pid = json.loads(message)["pid"] if len(fds) == 1 else None
            if type(pid) is not int:
                raise ValueError(message)
            sock = socket.socket(fileno=fds[0])
        except (ValueError, KeyError, TypeError, OSError) as exc:
            close_all(fds)
            raise local_error(ErrorCode.E_FAIL, f"cannot start a file broker for user {identity.name}: {exc}") from None
        return pid, sock

    async def aclose(self) -> None:
        """Stop every broker (EOF on their sockets) and the zygote, and reap the zygote."""
        for files in self._files.values():
            files.close()
        self._files.clear()
        with self._lock:
            zygote, self._zygote = self._zygote, None
        if zygote is not None:
            zygote.close()
        pid, self._zygote_pid = self._zygote_pid, 0
        deadline = time.monotonic() + 2.0
        try:
            while pid and os.waitpid(pid, os.WNOHANG) == (0, 0):
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                await asyncio.sleep(0.005)
        except ChildProcessError:  # somebody else reaped it
            pass
