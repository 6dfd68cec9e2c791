"""Identity, privilege separation, helper tokens and credentials against a root daemon and real users.

Clients run as the test users in subprocesses that really switch uid (runuser), so every identity the
daemon sees comes from SO_PEERCRED. See SECURITY.md for what each test proves.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openbits.identity.programs import start_as

from .daemon import DaemonProcess
from .servers.auth import BODY, AuthServer
from .users import RealUser, RealUsers, owned_folder, require_root

pytestmark = pytest.mark.root

PYTHON = Path(sys.prefix) / "bin" / "python"
CLI = Path(sys.prefix) / "bin" / "openbits"

PRELUDE = """
import json, os, sys, time
import openbits
from openbits import BitsError, JobState, Manager, TokenFlags
from openbits.enums import AuthScheme, AuthTarget
m = Manager(os.environ["OPENBITS_SOCKET"], autostart=False)
import atexit; atexit.register(m.close)
def out(**kw):
    print(json.dumps(kw))
def err(e):
    out(error=e.name, context=e.context.name, description=e.description)
"""


@pytest.fixture(scope="module")
def users() -> Iterator[dict[str, RealUser]]:
    require_root()
    with RealUsers() as made:
        yield {"alice": made.create("alice"), "bob": made.create("bob"), "admin": made.create("admin", groups=["sudo"])}


@pytest.fixture(scope="module")
def world(users: dict[str, RealUser]) -> Iterator[Path]:
    """A 0755 folder under /var/tmp that every test user can reach (pytest's tmp is root's 0700)."""
    base = Path(tempfile.mkdtemp(prefix="obt_sec_", dir="/var/tmp"))
    base.chmod(0o755)
    probe = subprocess.run(["/usr/sbin/runuser", "-u", users["alice"].name, "--", str(PYTHON), "-c", "import openbits"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        shutil.rmtree(base)
        pytest.skip(f"test users cannot run {PYTHON} with openbits (a venv under an unreadable folder?): "
                    f"{probe.stderr.strip()[-300:]}")
    yield base
    shutil.rmtree(base)


@pytest.fixture(scope="module")
def daemon(world: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(world / "daemon", system=True).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def web() -> Iterator[AuthServer]:
    server = AuthServer()
    yield server
    server.stop()


def run_as(user: RealUser, daemon: DaemonProcess, code: str, stdin: str = "") -> dict[str, Any]:
    """Run PRELUDE + code as user; its last stdout line is JSON."""
    script = daemon.root.parent / f"script_{secrets.token_hex(4)}.py"
    script.write_text(PRELUDE + textwrap.dedent(code))
    script.chmod(0o644)
    result = subprocess.run(["/usr/sbin/runuser", "-u", user.name, "--", str(PYTHON), str(script)], input=stdin,
                            capture_output=True, text=True, timeout=60,
                            env={"OPENBITS_SOCKET": str(daemon.socket), "PATH": "/usr/bin:/bin", "HOME": str(user.home)})
    script.unlink()
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def cli_as(user: RealUser, daemon: DaemonProcess, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/usr/sbin/runuser", "-u", user.name, "--", str(CLI), "--socket", str(daemon.socket),
                           "--no-autostart", *args], input=stdin, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(user.home)})


def download_job(url: str, dest: Path, *, helper: str = "", password: str = "", flags: int = 1,
                 complete: bool = True) -> str:
    """Code for run_as: the seed flow, with the helper set from user name and password when given."""
    return f"""
    job = m.create_job("seed")
    opts = job.token_options()
    try:
        if {helper!r}:
            opts.set_helper_token(username={helper!r}, password={password!r})
        opts.set_helper_token_flags({flags})
        job.add_file({url!r}, {str(dest)!r})
        job.resume()
        state = job.wait(30)
        error = job.error
        if {complete!r} and state == JobState.TRANSFERRED:
            job.complete()
        out(state=state.name, id=job.id, error=error and error.name, context=error and error.context.name)
    except BitsError as e:
        err(e)
    """


# -- the seed, both ways -------------------------------------------------------------------


def test_seed_helper_token_from_password(users, world, daemon, web) -> None:
    alice, bob = users["alice"], users["bob"]
    drop = owned_folder(world / "bob_only", bob)
    dest = drop / "seed.bin"
    answer = run_as(alice, daemon, download_job(_plain(web), dest, helper=bob.name, password=bob.password))
    assert answer["state"] == "TRANSFERRED", answer
    assert dest.read_bytes() == BODY and dest.stat().st_uid == bob.uid


def _plain(web: AuthServer) -> str:
    return web.url("/open/plain")


def test_seed_impersonate_as_root_service(users, world, daemon, web) -> None:
    """LogonUser + ImpersonateLoggedOnUser + SetHelperToken + RevertToSelf, from a root process."""
    bob = users["bob"]
    dest = owned_folder(world / "bob_only2", bob) / "imp.bin"
    code = PRELUDE + textwrap.dedent(f"""
    job = m.create_job("root-service")
    opts = job.token_options()
    ident = openbits.logon({bob.name!r}, {bob.password!r}, os.environ["OPENBITS_SOCKET"])
    with openbits.impersonate(ident):
        assert os.geteuid() == ident.uid
        helper = opts.set_helper_token()
    assert os.geteuid() == 0
    opts.set_helper_token_flags(TokenFlags.LOCAL_FILE)
    job.add_file({_plain(web)!r}, {str(dest)!r})
    job.resume()
    state = job.wait(30)
    job.complete()
    out(state=state.name, helper=helper.user)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "OPENBITS_SOCKET": str(daemon.socket)})
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.splitlines()[-1])
    assert answer == {"state": "TRANSFERRED", "helper": bob.name}
    assert dest.stat().st_uid == bob.uid


def test_without_helper_token_access_denied_and_no_file(users, world, daemon, web) -> None:
    alice, bob = users["alice"], users["bob"]
    dest = owned_folder(world / "bob_only3", bob) / "nothing.bin"
    refused = run_as(alice, daemon, download_job(_plain(web), dest, flags=0))
    assert (refused["error"], refused["context"]) == ("E_ACCESSDENIED", "LOCAL_FILE")
    # Accepted with the helper, then helper and flags taken away before the transfer: ERROR, no file.
    answer = run_as(alice, daemon, f"""
    job = m.create_job("no-token")
    opts = job.token_options()
    opts.set_helper_token(username={bob.name!r}, password={bob.password!r})
    opts.set_helper_token_flags(TokenFlags.LOCAL_FILE)
    job.add_file({_plain(web)!r}, {str(dest)!r})
    opts.clear_helper_token()
    assert opts.helper_token_flags() == TokenFlags.LOCAL_FILE  # ClearHelperToken keeps the flags
    opts.set_helper_token_flags(0)
    job.resume()
    state = job.wait(30)
    e = job.error
    out(state=state.name, error=e.name, context=e.context.name)
    """)
    assert answer == {"state": "ERROR", "error": "E_ACCESSDENIED", "context": "LOCAL_FILE"}
    assert not list(dest.parent.iterdir())


def test_wrong_password_is_a_logon_error_and_sets_nothing(users, world, daemon) -> None:
    alice, bob = users["alice"], users["bob"]
    wrong = "wrong-" + secrets.token_hex(8)
    answer = run_as(alice, daemon, f"""
    job = m.create_job("wrong")
    opts = job.token_options()
    try:
        opts.set_helper_token(username={bob.name!r}, password={wrong!r})
    except BitsError as e:
        out(error=e.name, description=e.description, user=opts.helper_token_user())
    """)
    assert answer["error"] == "ERROR_LOGON_FAILURE" and answer["user"] is None
    assert wrong not in answer["description"] and wrong not in daemon.log()


# -- 1. identity and the admin rule --------------------------------------------------------


def test_other_users_jobs_are_not_found_and_admin_only_verbs(users, daemon) -> None:
    alice, bob, admin = users["alice"], users["bob"], users["admin"]
    secret_name = "alice-private-" + secrets.token_hex(4)
    job_id = run_as(alice, daemon, f"out(id=m.create_job({secret_name!r}).id)")["id"]
    for verb in ("info", "resume", "cancel", "takeownership", "gettokenticket", "gettokenflags"):
        result = cli_as(bob, daemon, verb, job_id)
        assert result.returncode == 1 and "BG_E_NOT_FOUND" in result.stderr, (verb, result.stderr)
        assert secret_name not in result.stderr
    assert secret_name not in cli_as(bob, daemon, "info", secret_name).stderr.replace(repr(secret_name), "")
    assert "E_ACCESSDENIED" in cli_as(bob, daemon, "list", "--all-users").stderr
    listed = cli_as(admin, daemon, "list", "--all-users", "--json")
    assert job_id in listed.stdout
    assert cli_as(admin, daemon, "takeownership", job_id).returncode == 0
    assert cli_as(admin, daemon, "getowner", job_id).stdout.strip() == admin.name
    assert "BG_E_NOT_FOUND" in cli_as(alice, daemon, "info", job_id).stderr


# -- 2. privilege separation ---------------------------------------------------------------


def test_owner_cannot_make_the_daemon_write_or_read_as_root(users, world, daemon, web) -> None:
    alice, bob = users["alice"], users["bob"]
    mine = owned_folder(world / "alice_dir", alice, 0o700)
    for target in ("/etc/obt_evil", "/root/obt_evil", str(bob.home / "obt_evil")):
        answer = run_as(alice, daemon, download_job(_plain(web), Path(target), flags=0))
        assert answer["error"] == "E_ACCESSDENIED", (target, answer)
        assert not os.path.lexists(target)
    # A symlinked parent folder: the broker resolves it as alice, who may not write /etc.
    os.symlink("/etc", mine / "etc_link")
    answer = run_as(alice, daemon, download_job(_plain(web), mine / "etc_link" / "obt_evil", flags=0))
    assert answer["error"] == "E_ACCESSDENIED" and not os.path.exists("/etc/obt_evil")
    # A symlink or a hard link planted as the destination is replaced, never written through.
    victim = world / "root_file"
    victim.write_text("root's\n")
    os.symlink(victim, mine / "sym")
    linked = subprocess.run(["/usr/sbin/runuser", "-u", alice.name, "--", "ln", str(victim), str(mine / "hard")],
                            capture_output=True)
    code = PRELUDE + "\n".join(textwrap.dedent(f"""
    job = m.create_job("planted-{name}")
    job.add_file({_plain(web)!r}, {str(mine / name)!r})
    job.resume(); job.wait(30); job.complete()
    """) for name in ("sym", *(["hard"] if linked.returncode == 0 else []))) + "\nout(ok=1)"
    run_as(alice, daemon, code.replace(PRELUDE, ""))
    assert victim.read_text() == "root's\n" and victim.stat().st_uid == 0
    assert (mine / "sym").read_bytes() == BODY and not (mine / "sym").is_symlink()


def test_folder_swapped_for_symlink_before_complete(users, world, daemon, web) -> None:
    alice = users["alice"]
    base = owned_folder(world / "alice_swap", alice, 0o755)
    inner = owned_folder(base / "d", alice)
    answer = run_as(alice, daemon, f"""
    job = m.create_job("swap")
    job.add_file({_plain(web)!r}, {str(inner / "f.bin")!r})
    job.resume()
    out(state=job.wait(30).name, id=job.id)
    """)
    assert answer["state"] == "TRANSFERRED"
    shutil.rmtree(inner)
    os.symlink("/root", inner)
    result = cli_as(alice, daemon, "complete", answer["id"])
    assert result.returncode == 1 and "E_ACCESSDENIED" in result.stderr or "NOT_FOUND" in result.stderr
    assert not list(Path("/root").glob("*f.bin*"))


def test_file_url_reads_as_the_owner(users, world, daemon) -> None:
    alice, bob = users["alice"], users["bob"]
    secret = bob.home / "secret.txt"
    secret.write_text("bob's secret\n")
    os.chown(secret, bob.uid, bob.identity.gid)
    secret.chmod(0o600)
    dest = owned_folder(world / "alice_read", alice, 0o700) / "stolen"
    answer = run_as(alice, daemon, download_job(f"file://{secret}", dest, flags=0))
    assert (answer["state"], answer["error"], answer["context"]) == ("ERROR", "E_ACCESSDENIED", "LOCAL_FILE")
    assert not dest.exists()


# -- 3. the token verbs, tickets -----------------------------------------------------------


def test_cli_token_verbs_and_ticket(users, daemon) -> None:
    alice, bob = users["alice"], users["bob"]
    job_id = cli_as(alice, daemon, "create", "ticketed").stdout.strip()
    ticket = cli_as(alice, daemon, "gettokenticket", job_id).stdout.strip()
    redeemed = cli_as(bob, daemon, "settoken", job_id, "--ticket", ticket)
    assert redeemed.returncode == 0 and redeemed.stdout.split() == [str(bob.uid), bob.name]
    assert cli_as(bob, daemon, "settoken", job_id, "--ticket", ticket).returncode == 1  # one time only
    assert cli_as(alice, daemon, "gettokenuser", job_id).stdout.split() == [str(bob.uid), bob.name]
    assert cli_as(alice, daemon, "settokenflags", job_id, "LOCAL_FILE|NETWORK").returncode == 0
    assert cli_as(alice, daemon, "gettokenflags", job_id).stdout.strip() == "LOCAL_FILE|NETWORK"
    assert cli_as(alice, daemon, "cleartoken", job_id).returncode == 0
    assert cli_as(alice, daemon, "gettokenuser", job_id).stdout == ""
    assert cli_as(alice, daemon, "gettokenflags", job_id).stdout.strip() == "LOCAL_FILE|NETWORK"
    by_password = cli_as(alice, daemon, "settoken", job_id, "--user", bob.name, "--password-stdin",
                         stdin=bob.password + "\n")
    assert by_password.stdout.split() == [str(bob.uid), bob.name]
    assert "E_INVALIDARG" in cli_as(alice, daemon, "settokenflags", job_id, "4").stderr


# -- 4. the documented rules -----------------------------------------------------------------


def test_non_admin_owner_cannot_attach_an_admin_helper(users, daemon) -> None:
    alice, admin = users["alice"], users["admin"]
    job_id = cli_as(alice, daemon, "create", "adminhelper").stdout.strip()
    result = cli_as(alice, daemon, "settoken", job_id, "--user", admin.name, "--password-stdin",
                    stdin=admin.password + "\n")
    assert result.returncode == 1 and "E_ACCESSDENIED" in result.stderr
    ticket = cli_as(alice, daemon, "gettokenticket", job_id).stdout.strip()
    assert "E_ACCESSDENIED" in cli_as(admin, daemon, "settoken", job_id, "--ticket", ticket).stderr


def test_failed_logons_are_rate_limited_and_not_logged(users, daemon) -> None:
    bob, alice = users["bob"], users["alice"]
    job_id = cli_as(bob, daemon, "create", "ratelimit").stdout.strip()
    wrongs = [secrets.token_hex(6) for _ in range(3)]  # FREE_FAILURES: each is checked
    for wrong in wrongs:
        failed = cli_as(bob, daemon, "settoken", job_id, "--user", alice.name, "--password-stdin", stdin=wrong + "\n")
        assert failed.returncode != 0 and "logon failure" in failed.stderr, failed.stderr
    # Then, in one process (no command's start-up between them): wrong ones until one is refused, which is the
    # next unless the machine took FIRST_DELAY (5 s) to get here (the delay doubles with each failure), and
    # at once the right password, which waits as well.
    answer = run_as(bob, daemon, f"""
    import secrets
    opts = m.get_job({job_id!r}).token_options()
    def attempt(password):
        try:
            opts.set_helper_token(username={alice.name!r}, password=password)
            return "accepted"
        except BitsError as e:
            return e.description
    tried = []
    while len(tried) < 5:
        tried.append(secrets.token_hex(6))
        said = attempt(tried[-1])
        if "too many failed logons" in said:
            break
    out(tried=tried, refused=said, right=attempt({alice.password!r}))
    """)
    assert "too many failed logons" in answer["refused"], answer
    assert "too many failed logons" in answer["right"]  # even the right password waits
    log = daemon.log()
    assert "logon as" in log and alice.password not in log
    assert not any(w in log for w in wrongs + answer["tried"])


def test_restart_forgets_helper_tokens_token_required(users, world, daemon, faulty) -> None:
    alice, bob = users["alice"], users["bob"]
    dest = owned_folder(world / "bob_restart", bob) / "r.bin"
    # The first request stalls after 1,000 bytes, so the job is mid-transfer when the daemon dies.
    url = faulty.url(f"{uuid.uuid4().hex}/r.bin?size=64k&stall=30&stall_at=1000&fail=1")
    job_id = run_as(alice, daemon, f"""
    job = m.create_job("restart")
    opts = job.token_options()
    opts.set_helper_token(username={bob.name!r}, password={bob.password!r})
    opts.set_helper_token_flags(TokenFlags.LOCAL_FILE)
    job.add_file({url!r}, {str(dest)!r})
    job.set_properties(minimum_retry_delay=0)
    job.resume()
    while job.state.name != "TRANSFERRING":
        time.sleep(0.02)
    out(id=job.id)
    """)["id"]
    daemon.kill9()
    daemon.start()
    answer = run_as(alice, daemon, f"""
    job = m.get_job({job_id!r})
    info = job.info()
    first = (info.state.name, info.error and info.error.name, info.error and info.error.context.name)
    job.token_options().set_helper_token(username={bob.name!r}, password={bob.password!r})
    job.resume()
    out(first=first, state=job.wait(30).name)
    """)
    assert answer["first"] == ["ERROR", "BG_E_TOKEN_REQUIRED", "LOCAL_FILE"]
    assert answer["state"] == "TRANSFERRED"


# -- 5. NETWORK: ~/.netrc and file:// as the helper ------------------------------------------


def test_network_flag_uses_the_helpers_netrc_and_files(users, world, daemon, web) -> None:
    alice, bob = users["alice"], users["bob"]
    netrc = bob.home / ".netrc"
    web.accounts["bobnet"] = "pw" + bob.name
    netrc.write_text(f"machine 127.0.0.1 login bobnet password {'pw' + bob.name}\n")
    os.chown(netrc, bob.uid, bob.identity.gid)
    netrc.chmod(0o600)
    mine = owned_folder(world / "alice_net", alice, 0o700)
    for scheme in ("basic", "digest"):
        url = web.url(f"/{scheme}/bobnet/n")
        owner_only = run_as(alice, daemon, download_job(url, mine / f"{scheme}0", flags=0))
        assert owner_only["error"] == "BG_E_HTTP_ERROR_401", owner_only  # alice has no netrc entry
        helped = run_as(alice, daemon, download_job(url, mine / scheme, helper=bob.name, password=bob.password,
                                                    flags=2))
        assert helped["state"] == "TRANSFERRED", helped
        assert (mine / scheme).read_bytes() == BODY and (mine / scheme).stat().st_uid == alice.uid
    secret = bob.home / "for_helper.txt"
    secret.write_text("only bob reads this\n")
    os.chown(secret, bob.uid, bob.identity.gid)
    secret.chmod(0o600)
    helped = run_as(alice, daemon, download_job(f"file://{secret}", mine / "copy", helper=bob.name,
                                                password=bob.password, flags=2))
    assert helped["state"] == "TRANSFERRED" and (mine / "copy").read_text() == "only bob reads this\n"


# -- 6. per-job credentials ------------------------------------------------------------------


def test_job_credentials_stay_with_the_origin_and_out_of_sight(users, world, daemon, web) -> None:
    alice = users["alice"]
    other = AuthServer()  # another port: another origin
    try:
        password = "cred-" + secrets.token_hex(8)
        web.accounts["u"] = other.accounts["u"] = password
        mine = owned_folder(world / "alice_cred", alice, 0o700)
        target = other.url("/basic/u/elsewhere")
        answer = run_as(alice, daemon, f"""
        job = m.create_job("creds")
        job.set_credentials(AuthTarget.SERVER, AuthScheme.DIGEST, "u", {password!r})
        job.set_credentials(AuthTarget.SERVER, AuthScheme.BASIC, "u", {password!r})
        job.add_file({web.url('/digest/u/d')!r}, {str(mine / 'd')!r})
        job.resume()
        first = job.wait(30).name
        job.complete()
        job2 = m.create_job("redirected")
        job2.set_credentials(AuthTarget.SERVER, AuthScheme.BASIC, "u", {password!r})
        job2.add_file({web.url('/redirect/u?to=') + target!r}, {str(mine / 'r')!r})
        job2.resume()
        second = job2.wait(30).name
        shown = job2.info().model_dump_json() + "".join(j.info().model_dump_json() for j in m.jobs())
        job2.remove_credentials(AuthTarget.SERVER, AuthScheme.BASIC)
        out(first=first, second=second, leaked={password!r} in shown)
        """)
        assert answer == {"first": "TRANSFERRED", "second": "ERROR", "leaked": False}
        assert (mine / "d").read_bytes() == BODY
        assert all(password not in h for h in other.authorizations["/basic/u/elsewhere"])
        assert cli_as(users["bob"], daemon, "list", "--json").stdout.count(password) == 0
        for path in [*daemon.state_dir.rglob("*"), daemon.log_path]:
            if path.is_file():
                assert password.encode() not in path.read_bytes(), path
                assert users["bob"].password.encode() not in path.read_bytes(), path
    finally:
        other.stop()


# -- 7. programs run as the owner ----------------------------------------------------------


def test_programs_run_as_the_owner_with_a_clean_environment(users, world) -> None:
    alice = users["alice"]
    out = owned_folder(world / "alice_prog", alice, 0o700) / "who"
    os.environ["OBT_LEAK"] = "daemon secret"
    try:
        async def run() -> int:
            proc = await start_as(alice.identity, ["/bin/sh", "-c", f"{{ id -u; id -g; id -G; env; }} > {out}"])
            return await proc.wait()

        assert asyncio.run(run()) == 0
    finally:
        del os.environ["OBT_LEAK"]
    uid, gid, groups, *env = out.read_text().splitlines()
    assert (int(uid), int(gid)) == (alice.uid, alice.identity.gid)
    assert sorted(map(int, groups.split())) == sorted(alice.identity.groups)
    names = {line.partition("=")[0] for line in env}
    assert "OBT_LEAK" not in names and names <= {"HOME", "USER", "LOGNAME", "SHELL", "PATH", "LANG", "PWD", "SHLVL",
                                                 "_"}
