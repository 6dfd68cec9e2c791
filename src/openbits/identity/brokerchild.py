"""The child processes of the file broker: the zygote, and the per-identity broker's request loop.

They run forked from the daemon before its event loop and threads exist: the zygote (root) forks a
broker per identity; the broker drops to that identity (setgroups, setresgid, setresuid), proves
that root cannot be regained, and answers requests until the daemon closes its end. Only this
module runs with a user's identity; it never exec's anything.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import signal
import socket
import traceback
from typing import Any

from ..errors import BitsError, ErrorCode
from .fdpass import BATCH, FD_OPS, FRAME_MAX, JSON_OPS, OPS, Reassembly, close_all, frames, recv_with_fds
from .gss import SecurityContexts
from .localfiles import DiskFiles, local_error

ZYGOTE_MESSAGE_MAX = 1 << 16
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_NO_NEW_PRIVS = 38
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL when the parent goes; set after every credential change (which clears it)."""
    if _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        os._exit(3)
    if os.getppid() != parent_pid:
        os._exit(0)


def run_child(main: Any, *args: Any) -> None:
    """Body of a forked child: never returns into the caller's stack, never runs atexit hooks."""
    code = 0
    try:
        main(*args)
    except BaseException:  # noqa: BLE001 - a child must report and exit, whatever happened
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def zygote_main(sock: socket.socket, daemon_pid: int) -> None:
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
    while message := sock.recv(ZYGOTE_MESSAGE_MAX):
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
            run_child(_broker_main, mine, request, os.getppid())
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
    # libkrb5 finds the user's own ticket cache (the default of its uid), never the daemon's
    os.environ.pop("KRB5CCNAME", None)
    _serve(sock, DiskFiles(request["name"], strict=request.get("strict") is True), SecurityContexts(request["name"]))


def _serve(sock: socket.socket, files: DiskFiles, contexts: SecurityContexts) -> None:
    """The broker's whole life: answer batches of requests until the daemon closes its end."""
    reassembly = Reassembly()
    while True:
        frame, fds, flags = recv_with_fds(sock, FRAME_MAX, 1)
        close_all(fds)  # the daemon never sends descriptors
        if not frame or flags & socket.MSG_TRUNC:
            return
        requests = reassembly.feed(frame)
        for start in range(0, len(requests or ()), BATCH):
            replies, out_fds = [], []
            for request_id, op, args in requests[start : start + BATCH]:
                reply, fds = _handle(contexts if str(op).startswith("negotiate_") else files, op, args)
                if len(out_fds) + len(fds) > BATCH:  # one message carries at most BATCH descriptors
                    _send_replies(sock, replies, out_fds)
                    replies, out_fds = [], []
                replies.append([request_id, reply, len(fds)])
                out_fds += fds
            _send_replies(sock, replies, out_fds)


def _send_replies(sock: socket.socket, replies: list[list[Any]], fds: list[int]) -> None:
    message = frames(replies)
    for frame in message[:-1]:
        sock.send(frame)
    socket.send_fds(sock, message[-1:], fds)
    close_all(fds)


def _handle(files: DiskFiles | SecurityContexts, op: str, args: list[Any]) -> tuple[dict[str, Any], list[int]]:
    """Run one operation: (JSON reply, descriptors to pass)."""
    try:
        if op not in OPS:
            raise local_error(ErrorCode.E_INVALIDARG, f"unknown broker operation {op!r}")
        if op == "open_temps" and not (len(args) == 1 and isinstance(args[0], list) and len(args[0]) <= BATCH):
            raise local_error(ErrorCode.E_INVALIDARG, f"open_temps takes one list of at most {BATCH} paths")
        result = getattr(files, op)(*args)
    except BitsError as exc:
        return {"error": [exc.code, exc.description]}, []
    except Exception as exc:  # noqa: BLE001 - a bug is reported as E_FAIL, the broker lives on
        return {"error": [ErrorCode.E_FAIL, f"file broker failure: {exc!r}"]}, []
    if op in FD_OPS:
        return {"ok": None}, [result]
    if op == "open_temps":
        return ({"ok": [None if type(item) is int else [item.code, item.description] for item in result]},
                [item for item in result if type(item) is int])
    if op == "commit":
        return {"ok": [None if err is None else [err.code, err.description] for err in result]}, []
    if op == "stat" and result is not None:
        return {"ok": [result.size, result.mtime_ns, result.uid, result.mode]}, []
    if op in JSON_OPS:
        return {"ok": result}, []
    return {"ok": None}, []
