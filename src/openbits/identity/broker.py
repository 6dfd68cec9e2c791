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
number of descriptors], with the descriptors of the batch in order on the message (SCM_MAX_FD is
253). A message larger than one SOCK_SEQPACKET frame is split into consecutive frames flagged MORE;
descriptors ride on the last frame. Neither side interleaves two messages' frames.
"""

from __future__ import annotations

import array
import asyncio
import ctypes
import gc
import json
import os
import signal
import socket
import stat as st
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Sequence
from typing import Any

from ..enums import ErrorContext
from ..errors import BitsError, ErrorCode
from ..model.identity import Identity
from .localfiles import DiskFiles, FileStat, LocalFiles, local_error

_MORE = b"+"
_LAST = b"."
_CHUNK = 32 * 1024
_FRAME_MAX = 1 + _CHUNK
_MESSAGE_MAX = 64 * 1024 * 1024
_BATCH = 250
_DESCRIPTION_MAX = 2000
_SPAWN_TIMEOUT = 10.0
_ZYGOTE_MESSAGE_MAX = 1 << 16
#: A broker that answers nothing for this long (stopped by its user, wedged on a dead mount) is dropped.
CALL_TIMEOUT = 120.0

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_NO_NEW_PRIVS = 38
_libc = ctypes.CDLL(None, use_errno=True)

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
    }
)
_OPS = frozenset({"check_destination", "open_temp", "open_temps", "commit", "remove", "open_read", "stat"})
_FD_OPS = frozenset({"open_temp", "open_read"})


class _ProtocolError(Exception):
    """The peer broke the framing rules; the connection is dropped."""


class _BrokerGone(Exception):
    """The broker exited (killed, crashed, closed) or stopped answering; a new one can be spawned."""


# --- framing (both sides) -------------------------------------------------------------------


def _frames(message: Any) -> list[bytes]:
    payload = json.dumps(message, separators=(",", ":")).encode()
    chunks = [payload[i : i + _CHUNK] for i in range(0, len(payload), _CHUNK)] or [b""]
    return [_MORE + chunk for chunk in chunks[:-1]] + [_LAST + chunks[-1]]


class _Reassembly:
    """Joins the consecutive frames of one message; bounded so a peer cannot exhaust memory."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, frame: bytes) -> Any:
        """The decoded message once its last frame is in, else None."""
        flag = frame[:1]
        if flag not in (_MORE, _LAST):
            raise _ProtocolError("bad frame")
        self._size += len(frame) - 1
        if self._size > _MESSAGE_MAX:
            raise _ProtocolError("message too large")
        self._parts.append(frame[1:])
        if flag == _MORE:
            return None
        payload = b"".join(self._parts)
        self._parts, self._size = [], 0
        try:
            return json.loads(payload)
        except (ValueError, RecursionError) as exc:
            raise _ProtocolError(f"bad JSON: {exc}") from None


def _recv(sock: socket.socket, bufsize: int, maxfds: int, flags: int = 0) -> tuple[bytes, list[int], int]:
    """socket.recv_fds, except that flags are honoured (3.11 drops them, losing MSG_CMSG_CLOEXEC)."""
    fds = array.array("i")
    data, ancillary, msg_flags, _ = sock.recvmsg(bufsize, socket.CMSG_LEN(maxfds * fds.itemsize), flags)
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds), msg_flags


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)


# --- child processes: zygote and brokers ---------------------------------------------------


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL when the parent goes; set after every credential change (which clears it)."""
    if _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        os._exit(3)
    if os.getppid() != parent_pid:
        os._exit(0)


def _run_child(main: Any, *args: Any) -> None:
    """Body of a forked child: never returns into the caller's stack, never runs atexit hooks."""
    code = 0
    try:
        main(*args)
    except BaseException:  # noqa: BLE001 - a child must report and exit, whatever happened
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def _zygote_main(sock: socket.socket, daemon_pid: int) -> None:
    # Objects inherited from the daemon must never be finalised here: their descriptors are closed below.
    gc.freeze()
    _die_with_parent(daemon_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # brokers are reaped by the kernel
    os.chdir("/")
    keep = sock.fileno()
    os.closerange(3, keep)
    os.closerange(keep + 1, 1 << 20)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    while message := sock.recv(_ZYGOTE_MESSAGE_MAX):
        request = json.loads(message)
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.fork()
        except OSError as exc:
            sock.send(json.dumps({"error": str(exc)}).encode())
            mine.close()
            theirs.close()
            continue
        if pid == 0:
            sock.close()
            theirs.close()
            _run_child(_broker_main, mine, request, os.getppid())
        mine.close()
        socket.send_fds(sock, [json.dumps({"pid": pid}).encode()], [theirs.fileno()])
        theirs.close()


def _become(uid: int, gid: int, groups: list[int]) -> None:
    """Hold exactly this identity; prove that root cannot be regained."""
    if os.geteuid() != 0:
        if os.geteuid() != uid:  # user mode: the daemon can only be itself
            raise PermissionError(f"cannot act as uid {uid} without root")
        return
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if uid == 0:
        return
    try:
        os.setresuid(0, 0, 0)
    except PermissionError:
        pass
    else:
        raise RuntimeError("setresuid(0) still works after dropping privileges")
    with open("/proc/self/status") as status:
        caps = [line.split()[1] for line in status if line.startswith(("CapPrm:", "CapEff:"))]
    if any(int(value, 16) for value in caps):
        raise RuntimeError(f"capabilities left after dropping privileges: {caps}")


def _broker_main(sock: socket.socket, request: dict[str, Any], zygote_pid: int) -> None:
    _become(request["uid"], request["gid"], request["groups"])
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)  # failures above still reach the daemon's log; nothing of root's stays open after
    os.close(null)
    _die_with_parent(zygote_pid)
    # Not dumpable whatever fs.suid_dumpable says: its user cannot ptrace it into forging replies.
    for option, value in ((_PR_SET_NO_NEW_PRIVS, 1), (_PR_SET_DUMPABLE, 0)):
        if _libc.prctl(option, value, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl({option}, {value}) failed")
    os.umask(0o077)
    _serve(sock, DiskFiles(request["name"]))


def _serve(sock: socket.socket, files: DiskFiles) -> None:
    """The broker's whole life: answer batches of requests until the daemon closes its end."""
    reassembly = _Reassembly()
    while True:
        frame, fds, flags = _recv(sock, _FRAME_MAX, 1)
        _close_all(fds)  # the daemon never sends descriptors
        if not frame or flags & socket.MSG_TRUNC:
            return
        requests = reassembly.feed(frame)
        for start in range(0, len(requests or ()), _BATCH):
            replies, out_fds = [], []
            for request_id, op, args in requests[start : start + _BATCH]:
                reply, fds = _handle(files, op, args)
                if len(out_fds) + len(fds) > _BATCH:  # one message carries at most _BATCH descriptors
                    _send_replies(sock, replies, out_fds)
                    replies, out_fds = [], []
                replies.append([request_id, reply, len(fds)])
                out_fds += fds
            _send_replies(sock, replies, out_fds)


def _send_replies(sock: socket.socket, replies: list[list[Any]], fds: list[int]) -> None:
    frames = _frames(replies)
    for frame in frames[:-1]:
        sock.send(frame)
    socket.send_fds(sock, frames[-1:], fds)
    _close_all(fds)


def _handle(files: DiskFiles, op: str, args: list[Any]) -> tuple[dict[str, Any], list[int]]:
    """Run one operation: (JSON reply, descriptors to pass)."""
    try:
        if op not in _OPS:
            raise local_error(ErrorCode.E_INVALIDARG, f"unknown broker operation {op!r}")
        if op == "open_temps" and not (len(args) == 1 and isinstance(args[0], list) and len(args[0]) <= _BATCH):
            raise local_error(ErrorCode.E_INVALIDARG, f"open_temps takes one list of at most {_BATCH} paths")
        result = getattr(files, op)(*args)
    except BitsError as exc:
        return {"error": [exc.code, exc.description]}, []
    except Exception as exc:  # noqa: BLE001 - a bug is reported as E_FAIL, the broker lives on
        return {"error": [ErrorCode.E_FAIL, f"file broker failure: {exc!r}"]}, []
    if op in _FD_OPS:
        return {"ok": None}, [result]
    if op == "open_temps":
        return ({"ok": [None if type(item) is int else [item.code, item.description] for item in result]},
                [item for item in result if type(item) is int])
    if op == "commit":
        return {"ok": [None if err is None else [err.code, err.description] for err in result]}, []
    if op == "stat" and result is not None:
        return {"ok": [result.size, result.mtime_ns, result.uid, result.mode]}, []
    return {"ok": None}, []


# --- daemon side ---------------------------------------------------------------------------


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
        self._reassembly = _Reassembly()
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
            self._backlog.extend(_frames(batch))
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
                frame, fds, flags = _recv(self.sock, _FRAME_MAX, _BATCH, socket.MSG_CMSG_CLOEXEC)
            except BlockingIOError:
                return
            except OSError:
                self.close()
                return
            try:
                if not frame:
                    raise _ProtocolError("end of file")
                if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                    raise _ProtocolError("truncated frame")
                replies = self._reassembly.feed(frame)
                if replies is None and fds:
                    raise _ProtocolError("descriptors before the last frame")
                matched = [] if replies is None else _match(replies, fds)
            except _ProtocolError:
                _close_all(fds)
                self.close()
                return
            for request_id, reply, its_fds in matched:
                future = self._pending.get(request_id)
                if future is None or future.done():
                    _close_all(its_fds)  # its caller was cancelled
                else:
                    future.set_result((reply, its_fds))


def _discard(future: asyncio.Future[tuple[Any, list[int]]]) -> None:
    """Close the descriptors of a reply that won the race against its caller's cancellation."""
    if future.done() and not future.cancelled() and future.exception() is None:
        _close_all(future.result()[1])


def _match(replies: Any, fds: list[int]) -> list[tuple[int, Any, list[int]]]:
    """Split a batch's descriptors among its replies; the counts must add up exactly."""
    matched, used = [], 0
    try:
        for request_id, reply, count in replies:
            if type(request_id) is not int or type(count) is not int or not 0 <= count <= _BATCH:
                raise _ProtocolError("bad reply header")
            matched.append((request_id, reply, fds[used : used + count]))
            used += count
    except (TypeError, ValueError):
        raise _ProtocolError("bad reply batch") from None
    if used != len(fds):
        raise _ProtocolError("descriptor count mismatch")
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

    def __init__(self, spawner: FileBroker, identity: Identity) -> None:
        self.identity = identity
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
        for start in range(0, len(temp_paths), _BATCH):
            paths = list(temp_paths[start : start + _BATCH])
            reply, fds = await self._exchange("open_temps", [paths], retry=True)
            try:
                items = _reply(reply, self.identity.name)
                if (not isinstance(items, list) or len(items) != len(paths) or items.count(None) != len(fds)
                        or not all(st.S_ISREG(os.fstat(fd).st_mode) for fd in fds)):
                    raise local_error(ErrorCode.E_FAIL, f"the file broker for user {self.identity.name} sent a "
                                      "malformed reply")
            except BaseException:
                _close_all(fds)
                raise
            given = iter(fds)
            results += [next(given) if item is None else _broker_error(item) for item in items]
        return results

    async def commit(self, renames: Sequence[tuple[str, str]]) -> list[BitsError | None]:
        pairs = [[temp, final] for temp, final in renames]
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
            _close_all(fds)
            raise
        return fds[0]

    async def _call(self, op: str, args: list[Any], retry: bool = True) -> Any:
        reply, fds = await self._exchange(op, args, retry=retry)
        _close_all(fds)
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
            pid, sock = self._spawner._spawn(self.identity)
            conn = self._conn = _Connection(sock, pid, loop, self._spawner.call_timeout)
        return conn


class FileBroker:
    """Owns the zygote and one broker process per identity."""

    def __init__(self, zygote: socket.socket, zygote_pid: int, call_timeout: float) -> None:
        self._zygote: socket.socket | None = zygote
        self._zygote_pid = zygote_pid
        self.call_timeout = call_timeout
        self._lock = threading.Lock()
        self._files: dict[Identity, _BrokerFiles] = {}

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
            _run_child(_zygote_main, theirs, daemon_pid)
        theirs.close()
        ours.settimeout(_SPAWN_TIMEOUT)
        return cls(ours, pid, call_timeout)

    def files_for(self, identity: Identity) -> LocalFiles:
        """The broker-backed LocalFiles of identity; a user-mode daemon can only act as itself."""
        euid = os.geteuid()
        if euid != 0 and identity.uid != euid:
            raise BitsError(
                ErrorCode.E_ACCESSDENIED,
                f"openbitsd runs as uid {euid} (user mode) and cannot access files as user {identity.name}",
                ErrorContext.LOCAL_FILE,
            )
        files = self._files.get(identity)
        if files is None:
            files = self._files[identity] = _BrokerFiles(self, identity)
        return files

    def _spawn(self, identity: Identity) -> tuple[int, socket.socket]:
        """Ask the zygote for a broker holding identity: (its pid, our end of its socket). Takes ~1 ms."""
        request = {"uid": identity.uid, "gid": identity.gid, "groups": list(identity.groups), "name": identity.name}
        with self._lock:
            if self._zygote is None:
                raise local_error(ErrorCode.E_FAIL, "the file broker is closed or its zygote died; restart openbitsd")
            try:
                self._zygote.send(json.dumps(request).encode())
                message, fds, _ = _recv(self._zygote, _ZYGOTE_MESSAGE_MAX, 1, socket.MSG_CMSG_CLOEXEC)
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
            _close_all(fds)
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
