"""Many users, one hostile (issue 16): no local user can starve, fool or outlast the others.

A shared system daemon, real users (tests/users.py) whose clients really run as them (runuser), so
every identity the daemon sees is SO_PEERCRED's. Each attack is bounded in count and time and stays
on the daemon's Unix socket. SECURITY.md names the defence each test shows.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .daemon import DaemonProcess
from .users import RealUser, RealUsers, require_root

pytestmark = pytest.mark.root

PYTHON = Path(sys.prefix) / "bin" / "python"
CLI = Path(sys.prefix) / "bin" / "openbits"
#: the test daemon's caps: small, so that every attack stays short
PER_USER = 64
REQUEST_TIMEOUT = 3
RETAINED = 20

PRELUDE = """
import json, os, socket, sys, time
SOCK = os.environ["OPENBITS_SOCKET"]
def out(**kw):
    print(json.dumps(kw), flush=True)
def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(SOCK)
    return s
def refused(s, wait=1.0):
    '''What the daemon sent on s within wait seconds ("EOF" for a close), or "" while it stays silent.'''
    s.settimeout(wait)
    try:
        return s.recv(4096).decode(errors="replace") or "EOF"
    except socket.timeout:
        return ""
    except OSError as e:
        return repr(e)
def post(path, body, method="POST"):
    '''One request on its own connection: (status, body text).'''
    s = connect()
    data = json.dumps(body).encode()
    s.sendall(f"{method} {path} HTTP/1.1\\r\\nHost: x\\r\\nContent-Type: application/json\\r\\n"
              f"Content-Length: {len(data)}\\r\\nConnection: close\\r\\n\\r\\n".encode() + data)
    s.settimeout(120)
    reply = b""
    while chunk := s.recv(65536):
        reply += chunk
    s.close()
    head, _, text = reply.decode(errors="replace").partition("\\r\\n\\r\\n")
    return int(head.split()[1]), text
def logons(user, passwords):
    '''Every password tried at once, each on its own connection: the answers' descriptions.'''
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(len(passwords)) as pool:
        return list(pool.map(lambda p: post("/v1/logon", {"username": user, "password": p})[1], passwords))
def follow():
    '''A connection held open the legitimate way: an event stream.'''
    s = connect()
    s.sendall(b"GET /v1/events HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    return s
def served(sockets):
    '''How many of the streams answered 200, and how many were refused for the per-user cap.'''
    answers = [refused(s, 2) for s in sockets]
    return {"served": sum(a.startswith("HTTP/1.1 200") for a in answers),
            "refused": sum("max_connections_per_user" in a for a in answers)}
"""


@pytest.fixture(scope="module")
def made() -> Iterator[RealUsers]:
    """Users live until the module ends: a uid used again would inherit the daemon's counts."""
    require_root()
    with RealUsers() as users:
        yield users


@pytest.fixture(scope="module")
def users(made: RealUsers) -> dict[str, RealUser]:
    return {role: made.create(role) for role in ("alice", "bob", "mallory")}


@pytest.fixture
def make_user(made: RealUsers) -> Callable[[str], RealUser]:
    return made.create


@pytest.fixture(scope="module")
def world(users: dict[str, RealUser]) -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="obt_hostile_", dir="/var/tmp"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base)


@pytest.fixture(scope="module")
def daemon(world: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(world / "daemon", {"max_connections_per_user": PER_USER,
                                                "request_timeout": REQUEST_TIMEOUT,
                                                "max_retained_jobs_per_user": RETAINED}, system=True).start()
    try:
        yield process
    finally:
        process.stop()


def _script(daemon: DaemonProcess, code: str) -> Path:
    script = daemon.root.parent / f"script_{secrets.token_hex(4)}.py"
    script.write_text(PRELUDE + textwrap.dedent(code))
    script.chmod(0o644)
    return script


def _env(user: RealUser, daemon: DaemonProcess) -> dict[str, str]:
    return {"OPENBITS_SOCKET": str(daemon.socket), "PATH": "/usr/bin:/bin", "HOME": str(user.home)}


def start_as(user: RealUser, daemon: DaemonProcess, code: str) -> subprocess.Popen[str]:
    """PRELUDE + code as user, in the background: its stdout lines are JSON."""
    return subprocess.Popen(["/usr/sbin/runuser", "-u", user.name, "--", str(PYTHON), str(_script(daemon, code))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(user, daemon))


def run_as(user: RealUser, daemon: DaemonProcess, code: str, timeout: float = 60) -> dict[str, Any]:
    """PRELUDE + code as user; its last stdout line, as JSON."""
    proc = start_as(user, daemon, code)
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr
    return json.loads(stdout.strip().splitlines()[-1])


def cli_as(user: RealUser, daemon: DaemonProcess, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/usr/sbin/runuser", "-u", user.name, "--", str(CLI), "--socket", str(daemon.socket),
                           "--no-autostart", *args], capture_output=True, text=True, timeout=timeout,
                          env=_env(user, daemon))


def owned(path: Path, user: RealUser, mode: int | None = None) -> Path:
    """A new folder of user's (and mode)."""
    path.mkdir()
    os.chown(path, user.uid, user.identity.gid)
    if mode is not None:
        path.chmod(mode)
    return path


def rss(daemon: DaemonProcess) -> int:
    """The daemon's resident memory, bytes."""
    assert daemon.proc is not None
    for line in Path(f"/proc/{daemon.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# -- 1. connections --------------------------------------------------------------------------


def test_connections_are_capped_per_user_and_root_is_exempt(users, daemon) -> None:
    mallory = start_as(users["mallory"], daemon, f"""
    held = [follow() for _ in range({PER_USER + 40})]
    out(**served(held))
    sys.stdin.readline()  # hold them while the others work
    """)
    try:
        assert mallory.stdout is not None and mallory.stdin is not None
        counts = json.loads(mallory.stdout.readline())
        assert counts == {"served": PER_USER, "refused": 40}
        # Another user is served meanwhile, as often as it likes (its own cap is its own).
        listed = cli_as(users["alice"], daemon, "list")
        assert listed.returncode == 0, listed.stderr
        mine = run_as(users["alice"], daemon, f"""
        out(**served([follow() for _ in range({PER_USER})]))
        """)
        assert mine == {"served": PER_USER, "refused": 0}
        # Root is exempt from the per-user cap.
        held = []
        for _ in range(PER_USER + 20):
            held.append(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            held[-1].connect(str(daemon.socket))
        time.sleep(0.3)
        for sock in held:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
            sock.close()
        mallory.stdin.write("\n")
        mallory.stdin.flush()
        mallory.wait(30)
    finally:
        mallory.kill()
    # The closed connections were counted out: mallory has her whole cap again.
    again = run_as(users["mallory"], daemon, f"""
    out(**served([follow() for _ in range({PER_USER})]))
    """)
    assert again == {"served": PER_USER, "refused": 0}
    assert "connection refused: uid" in daemon.log()


def test_descriptor_limit_is_raised_to_the_hard_limit(world) -> None:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    daemon = DaemonProcess(world / "daemon-nofile", system=True,
                           wrap=["/usr/bin/prlimit", f"--nofile=1024:{hard}", "--"]).start()
    try:
        assert daemon.proc is not None
        limits = Path(f"/proc/{daemon.proc.pid}/limits").read_text()
        line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert line.split()[3:5] == [str(hard), str(hard)]
    finally:
        daemon.stop()


def test_default_cap_fits_a_hundred_transfers_following_events() -> None:
    from openbits.model.config import Config

    assert Config().max_connections_per_user >= 2 * 100 + 100


def test_accept_errors_are_one_line_per_interval(tmp_path: Path) -> None:
    """asyncio's accept loop out of descriptors (EMFILE): one line per interval, no traceback."""
    path = tmp_path / "s.sock"
    server = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import asyncio, logging, resource, socket, sys
        from openbits.api.connections import quiet_accept_errors
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
        async def main():
            quiet_accept_errors(asyncio.get_running_loop())
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind({str(path)!r}); sock.listen(512)
            await asyncio.get_running_loop().create_server(asyncio.Protocol, sock=sock)
            print("ready", flush=True)
            await asyncio.sleep(4)
        asyncio.run(main())
        """)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "ready"
    clients = []
    for _ in range(200):
        clients.append(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        try:
            clients[-1].connect(str(path))
        except ConnectionRefusedError:
            time.sleep(0.05)  # the backlog is full while the server cannot accept
    _, stderr = server.communicate(timeout=30)
    for client in clients:
        client.close()
    assert "out of system resource" in stderr and "Traceback" not in stderr
    assert len(stderr.splitlines()) <= 2, stderr


# -- 2. slow and large requests ----------------------------------------------------------------


def test_slowloris_headers_and_slow_bodies_are_cut_off(users, daemon) -> None:
    answer = run_as(users["mallory"], daemon, """
    def trickle(head, step=1.0, limit=15):
        s = connect()
        s.sendall(head)
        start = time.monotonic()
        for _ in range(limit):
            time.sleep(step)
            try:
                s.sendall(b"X")
            except OSError as e:
                return time.monotonic() - start, repr(e)
            got = refused(s, 0.01)
            if got:
                return time.monotonic() - start, got
        return time.monotonic() - start, ""
    header = trickle(b"GET /v1/jobs HTTP/1.1\\r\\nHost: x\\r\\n")
    body = trickle(b"POST /v1/jobs HTTP/1.1\\r\\nHost: x\\r\\nContent-Type: application/json\\r\\n"
                   b"Content-Length: 1000\\r\\n\\r\\n")
    idle = connect()
    out(header=header, body=body, idle=refused(idle, 15))
    """)
    seconds, got = answer["header"]
    assert got and seconds < 15  # closed, not held for the 15 bytes
    seconds, got = answer["body"]
    assert "did not arrive within" in got and seconds < 15
    assert answer["idle"]  # a connection that never asks is closed too


def test_bodies_have_per_route_limits(users, daemon, world) -> None:
    mine = owned(world / "alice", users["alice"])
    answer = run_as(users["alice"], daemon, f"""
    from openbits import Manager, BitsError
    m = Manager(SOCK, autostart=False)
    s = connect()
    s.sendall(b"POST /v1/jobs HTTP/1.1\\r\\nHost: x\\r\\nContent-Type: application/json\\r\\n"
              b"Content-Length: 1048576\\r\\n\\r\\n")
    big = refused(s, 5)
    job = m.create_job("limits")
    long = "x" * 1900
    job.add_files([(f"http://127.0.0.1:9/{{long}}/{{i}}", {str(world)!r} + f"/alice/{{i}}") for i in range(200)])
    out(big=big, files=len(job.files))
    job.cancel()
    """)
    assert "at most 131072 bytes" in answer["big"]
    assert answer["files"] == 200


def test_incomplete_bodies_do_not_keep_memory(users, daemon) -> None:
    before = rss(daemon)
    attack = start_as(users["mallory"], daemon, f"""
    held = []
    for _ in range({PER_USER}):
        s = connect()
        s.sendall(b"POST /v1/jobs/x/files HTTP/1.1\\r\\nHost: x\\r\\nContent-Type: application/json\\r\\n"
                  b"Content-Length: 4194304\\r\\n\\r\\n" + b"[" * (4194304 - 1))
        held.append(s)
    out(sent=len(held))
    sys.stdin.readline()
    """)
    try:
        assert attack.stdout is not None and attack.stdin is not None
        assert json.loads(attack.stdout.readline()) == {"sent": PER_USER}
        during = rss(daemon)
        attack.stdin.write("\n")
        attack.stdin.flush()
        attack.wait(30)
    finally:
        attack.kill()
    time.sleep(1)
    after = rss(daemon)
    # 64 bodies of 4 MiB would be 256 MiB; the budget per user admits 16 MiB at once.
    assert during - before < 64 << 20, (before, during)
    assert after - before < 32 << 20, (before, after)


# -- 4. churn ----------------------------------------------------------------------------------


def test_churned_final_jobs_stay_within_the_owners_budget(users, daemon, world, make_user) -> None:
    churner = make_user("churner")
    mine = owned(world / "churn", churner)
    answer = run_as(churner, daemon, f"""
    from openbits import Manager, BitsError
    m = Manager(SOCK, autostart=False)
    ids = []
    for n in range({2 * RETAINED}):
        job = m.create_job(f"churn-{{n}}")
        job.add_files([(f"http://127.0.0.1:9/{{i}}", {str(mine)!r} + f"/{{n}}-{{i}}") for i in range(50)])
        job.cancel()
        ids.append(job.id)
    def found(ref):
        try:
            m.get_job(ref).info()
            return True
        except BitsError:
            return False
    out(found=[found(i) for i in ids], live=len(m.jobs()))
    """, timeout=120)
    assert answer["live"] == 0
    assert answer["found"] == [False] * RETAINED + [True] * RETAINED  # the oldest went first
    with sqlite3.connect(f"file:{daemon.state_dir / 'jobs.db'}?mode=ro", uri=True) as db:
        stored = db.execute("SELECT COUNT(DISTINCT job_id) FROM events WHERE owner_uid = ?", (churner.uid,)).fetchone()
    assert stored[0] == RETAINED  # the forgotten jobs' events went with them


# -- 3 and 6. logons ---------------------------------------------------------------------------


def _pam_calls(daemon: DaemonProcess, caller: RealUser) -> list[str]:
    """The daemon's PAM start/end lines for caller, in order."""
    return [line.rsplit(" ", 1)[-1] for line in daemon.log().splitlines()
            if f"PAM check for uid {caller.uid} " in line]


def test_concurrent_guesses_are_counted_before_pam_one_at_a_time(daemon, make_user) -> None:
    guesser, target = make_user("guesser"), make_user("target")
    answers = run_as(guesser, daemon, f"""
    out(answers=logons({target.name!r}, ["wrong-%d" % i for i in range(30)]))
    """)["answers"]
    assert sum("too many failed logons" in a for a in answers) >= 27
    calls = _pam_calls(daemon, guesser)
    assert calls == ["started", "ended"] * 3  # 3 reached PAM, one after the other; 27 never did


def test_a_success_does_not_reset_failures_and_targets_count_too(daemon, make_user) -> None:
    guesser, other, target = make_user("guesser"), make_user("other"), make_user("target")
    answer = run_as(guesser, daemon, f"""
    guess = lambda: post("/v1/logon", {{"username": {target.name!r}, "password": "wrong"}})
    guess(), guess()
    own = post("/v1/logon", {{"username": {guesser.name!r}, "password": {guesser.password!r}}})
    guess()
    again = guess()
    out(own=own[0], again=again[1])
    """)
    assert answer["own"] == 200
    assert "too many failed logons" in answer["again"]  # her own success did not wipe the count
    # Another caller guessing at the same account waits too: failures count per target account.
    other_try = run_as(other, daemon, f"""
    out(text=post("/v1/logon", {{"username": {target.name!r}, "password": "wrong"}})[1])
    """)
    assert "too many failed logons" in other_try["text"]


def test_every_route_that_checks_a_password_shares_the_limit(daemon, make_user) -> None:
    guesser, target = make_user("guesser"), make_user("target")
    answer = run_as(guesser, daemon, f"""
    from openbits import Manager
    job = Manager(SOCK, autostart=False).create_job("shared-limit")
    texts = [post("/v1/logon", {{"username": {target.name!r}, "password": "wrong-%d" % i}})[1] for i in range(3)]
    status, text = post(f"/v1/jobs/{{job.id}}/helper-token",
                        {{"username": {target.name!r}, "password": {target.password!r}}}, method="PUT")
    out(status=status, text=text)
    """)
    assert answer["status"] == 401 or answer["status"] >= 400
    assert "too many failed logons" in answer["text"]


# -- 5. tickets --------------------------------------------------------------------------------


def test_tickets_expire_in_a_minute_and_are_capped_per_user(users, daemon) -> None:
    answer = run_as(users["mallory"], daemon, """
    from openbits import Manager
    job = Manager(SOCK, autostart=False).create_job("tickets")
    answers = [post(f"/v1/jobs/{job.id}/token-ticket", {}) for _ in range(20)]
    issued = [json.loads(text)["ticket"] for status, text in answers if status == 201]
    lifetimes = sorted({json.loads(text)["expires_in"] for status, text in answers if status == 201})
    redeem = lambda ticket: post(f"/v1/jobs/{job.id}/helper-token", {"ticket": ticket}, method="PUT")[0]
    out(issued=len(issued), lifetimes=lifetimes, oldest=[redeem(t) for t in issued[:4]], newest=redeem(issued[-1]),
        kept=[redeem(t) for t in issued[4:-1]])
    """)
    assert answer["issued"] == 20 and answer["lifetimes"] == [60.0]  # a busy owner is never refused a ticket
    assert all(status >= 400 for status in answer["oldest"])  # the 17th to 20th voided the four oldest
    assert answer["newest"] == 200 and answer["kept"] == [200] * 15  # what one user holds: 16 at most


# -- 16, 17. robustness --------------------------------------------------------------------------


def test_events_since_beyond_2_63_is_refused_before_the_stream(users, daemon) -> None:
    answer = run_as(users["alice"], daemon, """
    s = connect()
    s.sendall(b"GET /v1/events?since=18446744073709551616 HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
    out(reply=refused(s, 10))
    """)
    assert answer["reply"].startswith("HTTP/1.1 400") and "below 2^63" in answer["reply"]


def test_malformed_and_aborted_requests_are_one_warning_line(users, daemon) -> None:
    marker = len(daemon.log())
    run_as(users["mallory"], daemon, """
    for raw in (b"GET /v1/jobs HTTP/1.1\\r\\nBad Header\\r\\n\\r\\n", b"GET /v1/jobs HTTP/9.9\\r\\n\\r\\n"):
        s = connect(); s.sendall(raw); refused(s, 5); s.close()
    s = connect()
    s.sendall(b"POST /v1/jobs HTTP/1.1\\r\\nHost: x\\r\\nContent-Type: application/json\\r\\nContent-Length: 100\\r\\n\\r\\n{")
    time.sleep(0.2); s.close()
    time.sleep(0.5)
    out(ok=1)
    """)
    time.sleep(0.5)
    log = daemon.log()[marker:]
    assert "Traceback" not in log and " ERROR " not in log, log
    assert f"WARNING a request of uid {users['mallory'].uid} failed: BadHttpMessage" in log, log


# -- the load test (make bench runs the full one: bench/hostile.py) ---------------------------------


@pytest.mark.slow
def test_ten_users_are_served_while_one_attacks(made, world) -> None:
    """100 clients of ten users for 10 s (issue 16), alone and under attack: no error for them; p99s and peak
    RSS printed (make bench runs it at full size)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_hostile", Path(__file__).parent.parent / "bench" / "hostile.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    load_world = world / "load"
    load_world.mkdir()
    load_world.chmod(0o755)
    result = bench.both(made, load_world, clients=100, seconds=10, idle=2000)
    print(bench.report(result))
    assert result["alone"]["errors"] == 0, result["alone"]["first_error"]
    assert result["attacked"]["errors"] == 0, result["attacked"]["first_error"]
    assert result["alone"]["ops"] > 0 and result["attacked"]["ops"] > 0


# -- 7. socket squatting -------------------------------------------------------------------------

LISTENER = """
import json, socket, sys, time
path = sys.argv[1]
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
import os; os.chmod(path, 0o777)
server.listen(16)
server.settimeout(0.2)
print("ready", flush=True)
got = b""
stop = time.monotonic() + float(sys.argv[2])
while time.monotonic() < stop:
    try:
        conn, _ = server.accept()
    except socket.timeout:
        continue
    conn.settimeout(0.5)
    try:
        got += conn.recv(65536)
    except OSError:
        pass
print(json.dumps({"received": len(got)}), flush=True)
"""


def _squatter(user: RealUser, daemon: DaemonProcess, path: Path, seconds: float) -> subprocess.Popen[str]:
    script = _script(daemon, "")
    script.write_text(LISTENER)
    proc = subprocess.Popen(["/usr/sbin/runuser", "-u", user.name, "--", str(PYTHON), str(script), str(path),
                             str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    if proc.stdout.readline().strip() != "ready":
        raise AssertionError(proc.stderr.read())
    return proc


def _openbitsd_as(user: RealUser, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/usr/sbin/runuser", "-u", user.name, "--", str(PYTHON), "-m", "openbits.daemon",
                           "--user", *args], capture_output=True, text=True, timeout=timeout,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(user.home)})


def test_daemon_refuses_a_socket_folder_others_may_write(users, world) -> None:
    alice, mallory = users["alice"], users["mallory"]
    for owner, needle in ((alice, "writable by others"), (mallory, "is owned by uid")):
        folder = owned(world / f"run-{owner.name}", owner, 0o777)
        result = _openbitsd_as(alice, "--socket", str(folder / "openbits.sock"),
                               "--state-dir", str(alice.home / "state"))
        assert result.returncode != 0 and needle in result.stderr, result.stderr
        assert not (folder / "openbits.sock").exists()


def test_client_refuses_a_squatted_runtime_dir_and_a_foreign_daemon(users, daemon, world) -> None:
    from openbits.locations import answers, system_socket_path

    alice, mallory = users["alice"], users["mallory"]
    if answers(system_socket_path()):
        pytest.skip(f"a system daemon answers on {system_socket_path()}: the client would use it")
    squatted = Path(f"/tmp/openbits-{alice.uid}")
    shutil.rmtree(squatted, ignore_errors=True)
    owned(squatted, mallory, 0o777)
    try:
        listener = _squatter(mallory, daemon, squatted / "openbits.sock", 4)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(alice.home)}
        result = subprocess.run(["/usr/sbin/runuser", "-u", alice.name, "--", str(CLI), "list"], env=env,
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 3 and f"{squatted} is owned by uid {mallory.uid}" in result.stderr
        assert json.loads(listener.communicate(timeout=30)[0].splitlines()[-1]) == {"received": 0}
    finally:
        shutil.rmtree(squatted, ignore_errors=True)
    # A socket named explicitly whose daemon is neither root nor alice never receives a request.
    hers = owned(world / "mallory-run", mallory)
    fake = hers / "fake.sock"
    listener = _squatter(mallory, daemon, fake, 4)
    answer = run_as(alice, daemon, f"""
    os.environ["OPENBITS_SOCKET"] = {str(fake)!r}
    from openbits import Manager, BitsError
    try:
        Manager(autostart=False).create_job("secret")
        out(error="")
    except Exception as exc:
        out(error=str(exc))
    """)
    assert f"runs as uid {mallory.uid}, neither root nor you" in answer["error"]
    assert json.loads(listener.communicate(timeout=30)[0].splitlines()[-1]) == {"received": 0}


# -- 8. auto-start -------------------------------------------------------------------------------


def test_no_auto_start_on_an_explicit_socket(users, world) -> None:
    alice = users["alice"]
    target = world / "nobody.sock"
    result = subprocess.run(["/usr/sbin/runuser", "-u", alice.name, "--", str(CLI), "list"], capture_output=True,
                            text=True, timeout=30, env={"PATH": "/usr/bin:/bin", "HOME": str(alice.home),
                                                        "OPENBITS_SOCKET": str(target)})
    assert result.returncode == 3 and "none is started on demand" in result.stderr
    assert not target.exists()


def test_a_daemon_started_on_demand_exits_when_idle(users) -> None:
    alice = users["alice"]
    run = owned(alice.home / "run", alice, 0o700)
    result = _openbitsd_as(alice, "--socket", str(run / "openbits.sock"), "--state-dir", str(alice.home / "st"),
                           "--exit-when-idle", "1", timeout=60)
    assert result.returncode == 0 and "no connection and no live job for 1 s: exiting" in result.stderr


def test_status_says_which_daemon_answered(users, daemon) -> None:
    answer = json.loads(cli_as(users["alice"], daemon, "status", "--json").stdout)
    assert (answer["mode"], answer["uid"], answer["on_demand"]) == ("system", 0, False)


# -- 9. modes --------------------------------------------------------------------------------------


def test_new_files_follow_the_clients_umask_and_replaced_files_keep_their_mode(users, daemon, world) -> None:
    alice = users["alice"]
    mine = owned(world / "alice-modes", alice)
    source = mine / "source"
    source.write_text("payload\n")
    os.chown(source, alice.uid, alice.identity.gid)
    kept = mine / "kept"
    kept.write_text("old\n")
    os.chown(kept, alice.uid, alice.identity.gid)
    kept.chmod(0o600)
    answer = run_as(alice, daemon, f"""
    from openbits import Manager
    m = Manager(SOCK, autostart=False)
    def fetch(dest, umask):
        os.umask(umask)
        job = m.create_job("modes")
        job.add_file("file://{source}", dest)
        job.resume()
        state = job.wait(30)
        job.complete()
        return state.name
    out(new=fetch({str(mine / "new")!r}, 0o077), kept=fetch({str(kept)!r}, 0o022))
    """)
    assert answer == {"new": "TRANSFERRED", "kept": "TRANSFERRED"}
    assert (mine / "new").stat().st_mode & 0o777 == 0o600  # 0666 & ~077
    assert kept.read_text() == "payload\n" and kept.stat().st_mode & 0o777 == 0o600  # not widened to 0644


# -- 10. the state directory ---------------------------------------------------------------------


def test_state_dir_is_made_private_or_refused(users, world) -> None:
    root = world / "statedir"
    state = root / "state"
    state.mkdir(parents=True)
    state.chmod(0o755)
    (state / "jobs.db").touch(mode=0o644)
    (state / "jobs.db").chmod(0o644)
    daemon = DaemonProcess(root, system=True)
    daemon.state_dir = state
    daemon.start()
    try:
        assert state.stat().st_mode & 0o777 == 0o700
        assert {p.name: p.stat().st_mode & 0o777 for p in state.iterdir() if p.is_file()} == {
            name: 0o600 for name in {p.name for p in state.iterdir() if p.is_file()}}
    finally:
        daemon.stop()
    alice, mallory = users["alice"], users["mallory"]
    theirs = owned(world / "mallory-state", mallory, 0o777)
    run = owned(alice.home / "run10", alice, 0o700)
    result = _openbitsd_as(alice, "--socket", str(run / "s.sock"), "--state-dir", str(theirs))
    assert result.returncode != 0 and f"is owned by uid {mallory.uid}, not by this daemon's" in result.stderr


# -- 11. credentials in URLs -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def web() -> Iterator[Any]:
    from .servers.auth import AuthServer

    server = AuthServer()
    yield server
    server.stop()


def test_user_and_password_in_a_url_become_credentials_and_leave_the_url(users, daemon, world, web) -> None:
    alice = users["alice"]
    password = "pw-" + secrets.token_hex(8)
    web.accounts["urluser"] = password
    mine = owned(world / "alice-url", alice)
    url = web.url("/basic/urluser/u").replace("http://", f"http://urluser:{password}@")
    answer = run_as(alice, daemon, f"""
    from openbits import Manager
    m = Manager(SOCK, autostart=False)
    job = m.create_job("url-credentials")
    job.add_file({url!r}, {str(mine / "u")!r})
    job.resume()
    state = job.wait(30)
    info = job.info()
    job.complete()
    out(state=state.name, url=info.files[0].remote_url, shown=repr(info.model_dump()))
    """)
    assert answer["state"] == "TRANSFERRED"
    assert answer["url"] == web.url("/basic/urluser/u") and password not in answer["shown"]
    stored = b"".join(p.read_bytes() for p in daemon.state_dir.iterdir() if p.is_file())
    assert password.encode() not in stored and password not in daemon.log()


# -- 12. TakeOwnership -------------------------------------------------------------------------------


def test_after_takeownership_no_planted_symlink_is_followed_and_the_old_stream_stops(users, daemon, world) -> None:
    from openbits import Manager

    alice = users["alice"]
    base = owned(world / "alice12", alice)
    inner = owned(base / "d", alice)
    source = world / "source12"
    source.write_text("root's new content\n")
    target = Path(tempfile.mkdtemp(prefix="obt_takeover_", dir="/root"))
    job_id = run_as(alice, daemon, f"""
    from openbits import Manager
    job = Manager(SOCK, autostart=False).create_job("takeover")
    job.add_file("file://{source}", {str(inner / "planted.conf")!r})
    out(id=job.id)
    """)["id"]
    stream = start_as(alice, daemon, f"""
    s = connect()
    s.sendall(b"GET /v1/events?job={job_id} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    s.settimeout(6)
    print("ready", flush=True)
    got = b""
    try:
        while chunk := s.recv(65536):
            got += chunk
    except socket.timeout:
        pass
    out(seen=got.decode(errors="replace"))
    """)
    try:
        assert stream.stdout is not None and stream.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        with Manager(daemon.socket, autostart=False) as root:
            job = root.get_job(job_id)
            job.take_ownership()
            shutil.rmtree(inner)
            os.symlink(target, inner)  # alice swaps her folder for a link into /root
            job.set_properties(description="after-the-takeover")
            job.resume()
            state = job.wait(30)
            error = job.error
        seen = json.loads(stream.communicate(timeout=30)[0].splitlines()[-1])["seen"]
        assert state.name == "ERROR" and error is not None and error.name == "E_ACCESSDENIED"
        assert not list(target.iterdir())
        assert "after-the-takeover" not in seen
    finally:
        stream.kill()
        shutil.rmtree(target, ignore_errors=True)


# -- 13. notify programs -----------------------------------------------------------------------------


def test_notify_output_is_quoted_capped_and_limits_are_a_logins(users, world) -> None:
    """The daemon starts with a soft limit of 1,024 descriptors and raises its own: the program gets 1,024."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    daemon = DaemonProcess(world / "daemon13", system=True,
                           wrap=["/usr/bin/prlimit", f"--nofile=1024:{hard}", "--"]).start()
    try:
        _notify_attack(users, daemon, world)
    finally:
        daemon.stop()


def _notify_attack(users: dict[str, RealUser], daemon: DaemonProcess, world: Path) -> None:
    alice = users["alice"]
    mine = owned(world / "alice13", alice)
    source = world / "source13"
    source.write_text("x\n")
    program = world / "notify13.sh"
    program.write_text("#!/bin/sh\necho \"fd-limit $(ulimit -n)\"\n"
                       "printf '\\n2026-01-01 00:00:00,000 openbits.logon INFO logon as %s by uid 0 succeeded\\n' root\n"
                       "head -c 20000 /dev/zero | tr '\\\\0' y\n")
    program.chmod(0o755)
    name = "notify-" + secrets.token_hex(3)
    run_as(alice, daemon, f"""
    from openbits import Manager
    job = Manager(SOCK, autostart=False).create_job({name!r})
    job.set_notify_cmdline({str(program)!r}, [])
    job.add_file("file://{source}", {str(mine / "n")!r})
    job.resume()
    job.wait(30)
    out(ok=1)
    """)
    deadline = time.monotonic() + 30
    while f"job {name!r}" not in daemon.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    lines = [line for line in daemon.log().splitlines() if f"job {name!r}" in line]
    assert len(lines) == 1 and "notify program" in lines[0] and "[cut at 8192 bytes]" in lines[0]
    assert not any(line.startswith("2026-01-01") for line in daemon.log().splitlines())  # the fake line stays quoted
    assert "fd-limit 1024" in lines[0]  # not the daemon's raised limit


# -- 14. cancel as the writer --------------------------------------------------------------------------


def test_cancel_of_a_local_file_job_cleans_up_as_the_helper(users, daemon, world, faulty) -> None:
    import uuid

    alice, bob = users["alice"], users["bob"]
    drop = owned(world / "bob14", bob, 0o700)
    url = faulty.url(f"{uuid.uuid4().hex}/c.bin?size=64k&stall=5&stall_at=1000")
    answer = run_as(alice, daemon, f"""
    from openbits import Manager, TokenFlags, BitsError
    job = Manager(SOCK, autostart=False).create_job("cancel14")
    opts = job.token_options()
    opts.set_helper_token(username={bob.name!r}, password={bob.password!r})
    opts.set_helper_token_flags(TokenFlags.LOCAL_FILE)
    job.add_file({url!r}, {str(drop / "c.bin")!r})
    job.resume()
    deadline = time.monotonic() + 20
    while job.info().bytes_transferred == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        job.cancel()
        out(error="", state=job.state.name)
    except BitsError as e:
        out(error=e.name, state=job.state.name)
    """)
    assert answer == {"error": "", "state": "CANCELLED"}
    assert not list(drop.iterdir())


# -- 15. long names ----------------------------------------------------------------------------------


def test_temporary_names_fit_name_max_whatever_the_final_name(users, daemon, world) -> None:
    alice = users["alice"]
    mine = owned(world / "alice15", alice)
    source = world / "source15"
    source.write_text("long\n")
    final = mine / ("é" * 127)  # 254 bytes: fits, but its temporary name would not without a cut
    answer = run_as(alice, daemon, f"""
    from openbits import Manager
    job = Manager(SOCK, autostart=False).create_job("long")
    job.add_file("file://{source}", {str(final)!r})
    job.resume()
    state = job.wait(30)
    job.complete()
    out(state=state.name, after=job.state.name)
    """)
    assert answer == {"state": "TRANSFERRED", "after": "ACKNOWLEDGED"}
    assert final.read_text() == "long\n" and [p.name for p in mine.iterdir()] == [final.name]
