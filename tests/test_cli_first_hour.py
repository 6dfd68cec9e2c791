"""Issue 20: what a new user (and a curl, wget or aria2 user) meets in the first hour at the command line.

Every test runs the `openbits` command (or openbitsd, openbits-server) as a user would, against a real
daemon and real servers, and checks the exit code and the exact line shown.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbits.enums import JobState, NotifyFlags
from openbits.errors import ErrorCode

from .cli import Cli, one_line_error
from .daemon import DaemonProcess
from .servers.faulty import FaultyServer, content
from .servers.nginx import NginxServer

#: The summary line of a transfer whose stdout is no terminal.
SUMMARY = re.compile(r"^(?P<name>.+): (?P<bytes>[\d.]+ [kMG]?B) in \d+\.\d s \([\d.]+ [kMG]?B/s\)$")


@pytest.fixture
def cli(daemon: DaemonProcess) -> Cli:
    return Cli(daemon.socket, daemon.env)


@pytest.fixture
def served(nginx: NginxServer) -> Iterator[tuple[str, bytes]]:
    """A 100 kB file on nginx: (URL, content)."""
    path = nginx.root / f"{uuid.uuid4().hex}.bin"
    path.write_bytes(os.urandom(100_000))
    yield nginx.url(path.name), path.read_bytes()
    path.unlink()


def _state(cli: Cli, job: str) -> str:
    return cli.ok("getstate", job).strip()


def _until(cli: Cli, job: str, states: set[str], limit: float = 30) -> str:
    """Wait for the job (which may not exist yet) to be in one of `states`."""
    deadline = time.monotonic() + limit
    while (state := cli("getstate", job).stdout.strip()) not in states:
        assert time.monotonic() < deadline, f"{job} stayed {state}"
        time.sleep(0.2)
    return state


# -- 4. wait: an exit code for each end -------------------------------------------------------------


def test_wait_exit_codes(cli: Cli, served: tuple[str, bytes], nginx: NginxServer, silent_server: str,
                         tmp_path: Path) -> None:
    url, _ = served
    cases = {"ok": (url, 0, "TRANSFERRED"), "missing": (nginx.url("missing.bin"), 4, "ERROR")}
    for name, (remote, code, state) in cases.items():
        job = cli.ok("create", f"wait-{name}-{uuid.uuid4().hex[:6]}").strip()
        cli.ok("addfile", job, remote, str(tmp_path / name))
        cli.ok("resume", job)
        result = cli("wait", job, "--timeout", "60")
        assert (result.returncode, result.stdout) == (code, f"{state}\n"), result.stderr
        if code:
            assert result.stderr.startswith("openbits: BG_E_HTTP_ERROR_404 (0x80190194) in REMOTE_FILE (file 0, http: ")
        cli.ok("cancel", job)
        cancelled = cli("wait", job)
        assert (cancelled.returncode, cancelled.stdout) == (5, "CANCELLED\n")
    job = cli.ok("create", f"wait-slow-{uuid.uuid4().hex[:6]}").strip()
    cli.ok("addfile", job, silent_server, str(tmp_path / "never"))
    cli.ok("resume", job)
    timed_out = cli("wait", job, "--timeout", "0.5")
    assert timed_out.returncode == 7 and timed_out.stdout.strip() in ("QUEUED", "CONNECTING"), timed_out
    cli.ok("cancel", job)


# -- 6. one line, never a traceback ------------------------------------------------------------------


def test_unwritable_home_is_one_line(tmp_path: Path) -> None:
    """A home the account cannot write (nobody's /nonexistent): the user daemon cannot start, said in one line."""
    home = tmp_path / "home-is-a-file"
    home.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "OPENBITS_"))}
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(tmp_path / "run"))
    if os.path.exists("/run/openbits/openbits.sock"):
        pytest.skip("a system daemon answers here; the user daemon would not be started")
    result = subprocess.run([sys.executable, "-m", "openbits.cli", "list"], capture_output=True, text=True,
                            env=env, timeout=60)
    one_line_error(result, 3, f"openbits: Not a directory ({home}/.local/state/openbits): check that path's "
                              "permissions, or set XDG_STATE_HOME")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None, reason="runuser as nobody needs root")
def test_nobody_lists_without_a_traceback(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o777)
    os.chmod(run, 0o777)
    command = ["runuser", "-u", "nobody", "--", "env", f"XDG_RUNTIME_DIR={run}", "HOME=/nonexistent",
               sys.executable, "-m", "openbits.cli", "list"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd="/")
    if "Permission denied" in result.stderr and sys.executable in result.stderr:
        pytest.skip("nobody cannot run this interpreter")
    assert result.returncode == 3, result
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("openbits: "), result.stderr


def test_server_port_in_use_and_missing_root(tmp_path: Path) -> None:
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    server = [sys.executable, "-m", "openbits.server", "--listen"]
    try:
        result = subprocess.run([*server, f"127.0.0.1:{port}", "--root", str(tmp_path)], capture_output=True,
                                text=True, timeout=60)
    finally:
        taken.close()
    one_line_error(result, 1, f"openbits-server: cannot listen on 127.0.0.1:{port}: Address already in use; "
                              "choose another --listen HOST:PORT")
    typo = tmp_path / "typo"
    result = subprocess.run([*server, "127.0.0.1:0", "--root", str(typo)], capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (1, f"openbits-server: --root {typo} does not exist; check the "
                                                     "path, or add --create-root to create it\n")
    assert not typo.exists()
    created = subprocess.Popen([*server, "127.0.0.1:0", "--root", str(typo), "--create-root"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert created.stdout is not None and "listening on 127.0.0.1:" in created.stdout.readline()
        assert typo.is_dir()
    finally:
        created.send_signal(signal.SIGTERM)
        created.wait(30)


# -- 12. versions, units, durations, names ----------------------------------------------------------


def test_versions() -> None:
    from openbits.version import __version__

    for program, module in (("openbits", "openbits.cli"), ("openbitsd", "openbits.daemon"),
                            ("openbits-server", "openbits.server")):
        result = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True)
        assert (result.returncode, result.stdout) == (0, f"{program} {__version__}\n"), result


def test_bandwidth_units_and_durations(cli: Cli) -> None:
    job = cli.ok("create", f"units-{uuid.uuid4().hex[:6]}").strip()
    for given, stored in (("20M", 20_000_000), ("800kbit/s", 100_000), ("2MiB/s", 2 * 1024 * 1024), ("0", 0)):
        cli.ok("setmaxbandwidth", job, given)
        assert cli.ok("getmaxbandwidth", job) == f"{stored}\n"
    bad = cli("setmaxbandwidth", job, "fast")
    assert bad.returncode == 2 and "'fast' is not a rate; write bytes per second like 1048576, '10M' or " \
                                   "'800kbit/s'" in bad.stderr
    cli.ok("setminretrydelay", job, "90")
    shown = cli.ok("info", job)
    assert re.search(r"Retry delay\s+1 minute 30 seconds\s", shown), shown
    assert re.search(r"No-progress timeout\s+14 days\s", shown), shown
    cli.ok("cancel", job)


def test_enums_print_by_name() -> None:
    assert (str(JobState.TRANSFERRED), f"{JobState.ERROR}", JobState.TRANSFERRED == 6) == (
        "JobState.TRANSFERRED", "JobState.ERROR", True)
    assert str(NotifyFlags(3)) == "NotifyFlags.JOB_TRANSFERRED|JOB_ERROR" and NotifyFlags(3) == 3
    assert f"{ErrorCode.E_FAIL:08X}" == "80004005" and sorted([JobState.ERROR, JobState.QUEUED]) == [0, 4]


# -- 9, 10, 13. transfer like curl -O / -o, a summary, --quiet, the argument order --------------------


def test_transfer_saves_under_the_url_name(cli: Cli, served: tuple[str, bytes], tmp_path: Path) -> None:
    url, content = served
    name = url.rsplit("/", 1)[1]
    result = cli("transfer", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    match = SUMMARY.match(result.stdout.strip())
    assert match and (match["name"], match["bytes"]) == (str(tmp_path / name), "100.0 kB"), result.stdout
    assert (tmp_path / name).read_bytes() == content
    output = tmp_path / "chosen.bin"
    quiet = cli("transfer", "-q", "-o", str(output), url)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    assert output.read_bytes() == content


def test_transfer_argument_order(cli: Cli) -> None:
    swapped = cli("transfer", "--upload", "./backup.tar", "http://127.0.0.1:9/uploads/backup.tar")
    assert swapped.returncode == 2
    assert ("Error: './backup.tar' is not a URL (scheme://...); 'http://127.0.0.1:9/uploads/backup.tar' looks "
            "like the URL: give URL PATH (the URL first, as AddFile)") in swapped.stderr
    missing = cli("transfer", "--upload", "http://127.0.0.1:9/uploads/backup.tar")
    assert missing.returncode == 2 and "give the local file to upload after" in missing.stderr
    two = cli("transfer", "-o", "x", "http://127.0.0.1:9/a", "http://127.0.0.1:9/b")
    assert two.returncode == 2 and "-o/--output names the file of one URL" in two.stderr


# -- 7. why a transfer waits; giving up as a one-shot command does -----------------------------------


def test_transfer_shows_the_transient_error_and_gives_up(cli: Cli, faulty: FaultyServer, tmp_path: Path) -> None:
    url = faulty.url(f"/busy-{uuid.uuid4().hex[:6]}?status=503")
    fast = cli("transfer", "--fail-fast", url, str(tmp_path / "a"))
    one_line_error(fast, 4, "openbits: BG_E_HTTP_ERROR_503: The server answered ")
    assert fast.stderr.rstrip().endswith(")") and "(--fail-fast: cancelled job " in fast.stderr
    job = fast.stderr.rsplit(" ", 1)[1].rstrip(")\n")
    assert _state(cli, job) == "CANCELLED"

    timed = cli("transfer", "--max-time", "3", url, str(tmp_path / "b"))
    assert timed.returncode == 7, timed.stderr
    lines = timed.stderr.strip().splitlines()
    assert re.fullmatch(r"openbits: TRANSIENT_ERROR: BG_E_HTTP_ERROR_503: The server answered .*; next try at "
                        r"\d\d:\d\d:\d\d \(in (9|10) minutes?( \d+ seconds?)?\)", lines[0]), lines
    assert re.fullmatch(r"openbits: --max-time 3 s ran out: cancelled job [0-9A-F-]{36}", lines[-1]), lines

    retry = cli("transfer", "--retry-delay", "1", "--retry-timeout", "2", url, str(tmp_path / "c"))
    assert retry.returncode == 7, retry.stderr
    last = retry.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"openbits: BG_E_NO_PROGRESS: no progress for 2 s \(last error: The server answered .*\) "
                        r"\(job [0-9A-F-]{36} left for inspection\)", last), last


# -- 3. the daemon stops while clients follow it ----------------------------------------------------


def test_sigterm_ends_streams_and_ctrl_c_while_away_cancels_later(daemon: DaemonProcess, cli: Cli,
                                                                   silent_server: str, tmp_path: Path) -> None:
    name = f"away-{uuid.uuid4().hex[:8]}"
    transfer = cli.popen("transfer", "--name", name, silent_server, str(tmp_path / "never.bin"))
    monitor = cli.popen("events")
    _until(cli, name, {"CONNECTING", "TRANSFERRING", "TRANSIENT_ERROR"})
    job = json.loads(cli.ok("info", name, "--json"))["id"]
    assert daemon.stop() == 0  # within the fixture's 20 s, whatever the two clients do
    assert "openbitsd" in daemon.log() and "shutting down" in daemon.log()
    assert transfer.stderr is not None and monitor.stderr is not None
    assert transfer.stderr.readline() == (f"openbits: the daemon went away (openbitsd is stopping); job {job} goes "
                                          "on when it is back - waiting for it (Ctrl-C cancels the job)\n")
    assert monitor.stderr.readline() == ("openbits: the daemon went away (openbitsd is stopping); waiting for it "
                                         "to come back (Ctrl-C ends)\n")
    transfer.send_signal(signal.SIGINT)
    _, rest = transfer.communicate(timeout=30)
    assert transfer.returncode == 130, rest
    assert rest == f"openbits: interrupted: the daemon is away; job {job} is cancelled as soon as it is back\n"
    daemon.start()
    assert _until(cli, job, {"CANCELLED"}) == "CANCELLED"
    monitor.send_signal(signal.SIGINT)
    monitor.communicate(timeout=30)


# -- 1. a destination that is no regular file is never replaced ---------------------------------------


def test_destination_that_is_no_regular_file(cli: Cli, served: tuple[str, bytes], tmp_path: Path) -> None:
    url, _ = served
    fifo, sock, folder = tmp_path / "fifo", tmp_path / "sock", tmp_path / "folder"
    os.mkfifo(fifo)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock))
    folder.mkdir()
    cases = [(fifo, "FIFO"), (sock, "socket"), (folder, "folder")]
    if os.geteuid() == 0:  # others may not create files in /dev at all, which is refused before this
        cases.append((Path("/dev/null"), "character device"))
    try:
        for path, kind in cases:
            result = cli("transfer", url, str(path))
            one_line_error(result, 1, f"openbits: E_INVALIDARG: {path} is an existing {kind}, which openbits "
                                      "never replaces; name a regular file (to discard a download, save it and "
                                      "delete it)")
        assert Path("/dev/null").is_char_device() and fifo.is_fifo() and folder.is_dir()
    finally:
        listener.close()


# -- 5. remote names are checked whole at AddFile ------------------------------------------------------


@pytest.mark.parametrize(("url", "why"), [
    ("http://[::1", "is not a valid URL (Invalid IPv6 URL); an IPv6 address goes in brackets: http://[::1]:8080/x"),
    ("http://127.0.0.1:99999/x", "has the port '99999'; a port is a number from 1 to 65535"),
    ("http://::1/x", "has no host (an IPv6 address goes in brackets: http://[::1]/x)"),
    ("http://exa mple.org/x", "has ' ' at position 11; percent-encode it (a space is %20; other characters as "
                              "UTF-8 bytes, as BITS asks)"),
    ("http://[fe80::zz]/x", "is not a valid URL ('fe80::zz' does not appear to be an IPv4 or IPv6 address); an "
                            "IPv6 address goes in brackets: http://[::1]:8080/x"),
    ("ftp://127.0.0.1/x", None),
])
def test_malformed_remote_names(cli: Cli, tmp_path: Path, url: str, why: str | None) -> None:
    job = cli.ok("create", f"urls-{uuid.uuid4().hex[:6]}").strip()
    listing = tmp_path / "files.txt"
    listing.write_text("".join(f"http://127.0.0.1:9/{n} {tmp_path / n}\n" for n in "abcde") + f"'{url}' {tmp_path}/f\n")
    for result in (cli("addfile", job, url, str(tmp_path / "f")), cli("addfileset", job, str(listing))):
        shown = (f"E_INVALIDARG: remote name {url!r} {why}" if why else
                 f"BG_E_PROTOCOL_NOT_AVAILABLE: remote name {url!r} uses scheme 'ftp'; openbits transfers http, "
                 "https, file and smb (or \\\\server\\share\\path)")
        assert (result.returncode, result.stderr) == (1, f"openbits: {shown}\n")
    assert cli.ok("getfilestotal", job) == "0\n"  # AddFileSet: all or none
    cli.ok("cancel", job)


# -- 2. progress as the bytes arrive, not only as they become durable ----------------------------------


def test_progress_events_between_durable_offsets(cli: Cli, faulty: FaultyServer, tmp_path: Path) -> None:
    """2 MiB at ~800 kB/s: far less than a durable step, so every progress event between the start and the end
    comes from bytes that arrived (the bus sends one at most every 0.5 s, or the job's notification interval)."""
    url = faulty.url(f"/slow-{uuid.uuid4().hex[:6]}?size=2m&trickle=5")
    done = cli("transfer", "--json", url, str(tmp_path / "slow.bin"))
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)["id"]
    events = [json.loads(line) for line in cli.ok("events", "--job", job, "--no-follow").splitlines()]
    total = 2 * 1024 * 1024
    between = [e for e in events if e["kind"] == "job_modification" and 0 < e["bytes_transferred"] < total]
    assert between and all(e["state"] == "TRANSFERRING" and e["bytes_total"] == total for e in between), events


# -- 11. the daemon's own rate and the time left, per job and per file -------------------------------------


def test_rate_and_time_left(cli: Cli, faulty: FaultyServer, tmp_path: Path) -> None:
    job = cli.ok("create", f"rate-{uuid.uuid4().hex[:6]}").strip()
    cli.ok("addfile", job, faulty.url(f"/rate-{uuid.uuid4().hex[:6]}?size=8m&trickle=5"), str(tmp_path / "r"))
    cli.ok("setpriority", job, "FOREGROUND")
    cli.ok("resume", job)
    deadline = time.monotonic() + 30
    while not (info := json.loads(cli.ok("info", job, "--json")))["transfer_rate"]:
        assert time.monotonic() < deadline and info["state"] in ("QUEUED", "CONNECTING", "TRANSFERRING"), info
        time.sleep(0.2)
    assert info["state"] == "TRANSFERRING" and info["files"][0]["transfer_rate"] > 0, info
    shown = cli.ok("info", job)
    assert re.search(r"Rate\s+[\d.]+ [kM]B/s\s", shown) and re.search(r"Time left\s+\d+ (second|minute)", shown), shown
    listed = cli.ok("list").splitlines()
    assert listed[0].split()[-2:] == ["RATE", "LEFT"], listed
    row = next(line for line in listed if job in line)
    assert re.search(r"[\d.]+ [kM]B/s\s+\d+ (second|minute)", row), row
    cli.ok("cancel", job)


# -- 9, 10. the server's name for the file; -v from the daemon's own requests --------------------------


def test_content_disposition_and_verbose(cli: Cli, faulty: FaultyServer, tmp_path: Path) -> None:
    path = f"/cd-{uuid.uuid4().hex[:6]}"
    query = "?size=10k&disposition=../../etc/report%202026.csv"
    result = cli("transfer", "-v", faulty.url(path + query), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    url = faulty.url(path + query)
    assert result.stderr.splitlines() == [f"openbits: > GET {url}", "openbits: < HTTP/1.1 200 OK"], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report 2026.csv"]  # its last component, here
    match = SUMMARY.match(result.stdout.strip())
    assert match and match["name"] == str(tmp_path / "report 2026.csv"), result.stdout
    assert (tmp_path / "report 2026.csv").read_bytes() == content(path + query)
    again = cli("transfer", faulty.url(path + query), cwd=tmp_path)  # the name is taken: the URL's name stays
    assert again.returncode == 0 and again.stderr == (f"openbits: kept {tmp_path / path[1:]}: the server's name for "
                                                      "it, report 2026.csv, is taken\n"), again.stderr


def test_verbose_shows_the_requests_of_a_batch_of_small_files(cli: Cli, faulty: FaultyServer,
                                                               tmp_path: Path) -> None:
    paths = [f"/small-{uuid.uuid4().hex[:6]}-{n}?size=100" for n in range(6)]  # the first proves them small
    args = [part for p in paths for part in (faulty.url(p), str(tmp_path / p[1:].partition("?")[0]))]
    result = cli("transfer", "-v", *args)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert sorted(line for line in lines if line.startswith("openbits: > ")) == sorted(
        f"openbits: > GET {faulty.url(p)}" for p in paths), result.stderr
    assert [line for line in lines if line.startswith("openbits: < ")] == ["openbits: < HTTP/1.1 200 OK"] * 6
    assert [(tmp_path / p[1:].partition("?")[0]).read_bytes() for p in paths] == [content(p) for p in paths]


def test_verbose_shows_each_redirect_hop(cli: Cli, faulty: FaultyServer, tmp_path: Path) -> None:
    path = f"/hops-{uuid.uuid4().hex[:6]}"
    result = cli("transfer", "-v", faulty.url(f"{path}?size=10k&redirect=2"), str(tmp_path / "hops.bin"))
    assert result.returncode == 0, result.stderr
    hops = [faulty.url(f"{path}?size=10k&redirect={n}") for n in (2, 1, 0)]
    assert result.stderr.splitlines() == [f"openbits: > GET {hops[0]}", "openbits: < HTTP/1.1 302 Found",
                                          f"openbits: > GET {hops[1]}", "openbits: < HTTP/1.1 302 Found",
                                          f"openbits: > GET {hops[2]}", "openbits: < HTTP/1.1 200 OK"], result.stderr
    assert (tmp_path / "hops.bin").read_bytes() == content(f"{path}?size=10k&redirect=0")
