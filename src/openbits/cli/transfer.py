"""`openbits transfer` (Start-BitsTransfer, with what curl and wget users expect of a one-shot command).

It creates a FOREGROUND job, adds the files, resumes it, follows its event stream (a bar on a terminal;
one summary line otherwise) and completes it. Ctrl-C cancels the job, also when the daemon is away
at that moment: then a background `openbits cancel --when-back` cancels it once the daemon answers.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import posixpath
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import click
from rich.filesize import decimal

from ..client import DaemonUnavailableError, Job
from ..client.types import error_of
from ..enums import SIZE_UNKNOWN, AuthScheme, AuthTarget, JobPriority, JobState, JobType, ProxyUsage
from ..errors import BitsError, ErrorCode
from ..schema.models import EventInfo, ExchangeInfo, JobInfo
from .app import EXIT_JOB_ERROR, EXIT_TIMEOUT, cli, fail, manager
from .jobs import PRIORITY, SECONDS, CostFlagsParam, job_type_options
from .live import daemon_back, say
from .render import duration, print_json, transfer_progress
from .security import SECURITY_NAMES
from .tokens import SCHEME, parse_flags, password

#: Exit code after Ctrl-C, as a shell reports SIGINT.
_EXIT_INTERRUPTED = 130
#: A word that names a remote file: a scheme and "://" (file:///path included).
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
#: wget's name for a URL whose path names no file.
_INDEX = "index.html"
#: Seconds between looks at the clock while no event comes (--max-time).
_TICK = 1.0
#: Start-BitsTransfer's -ProxyUsage names, and BITS's own (setproxy's)
_PROXY_USAGE = {"SYSTEMDEFAULT": ProxyUsage.PRECONFIG, "NOPROXY": ProxyUsage.NO_PROXY,
                **{usage.name: usage for usage in ProxyUsage}}


def looks_like_url(word: str) -> bool:
    return bool(_URL.match(word))


def remote_file_name(url: str) -> str:
    """The file name a URL's path ends in (percent-decoded), as `curl -O` and wget save it; never a path."""
    name = unquote(posixpath.basename(urlsplit(url).path))
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        return _INDEX
    return name


def pair_up(words: tuple[str, ...], job_type: JobType, output: str | None) -> tuple[list[tuple[str, str]], set[int]]:
    """URL [PATH] ... into (URL, PATH) pairs, and the indexes of those whose PATH came from the URL: a URL
    without a PATH is saved under its file name here.

    Uploads need both, URL first (as AddFile); a word that is no URL where a URL belongs is named, and so
    is the one that looks like the URL, since swapping the two is the common mistake.
    """
    if output is not None:
        if len(words) != 1 or not looks_like_url(words[0]):
            raise click.UsageError("-o/--output names the file of one URL: openbits transfer -o PATH URL")
        return [(words[0], output)], set()
    pairs: list[tuple[str, str]] = []
    derived: set[int] = set()
    index = 0
    while index < len(words):
        url = words[index]
        if not looks_like_url(url):
            hint = next((w for w in words[index + 1:] if looks_like_url(w)), None)
            order = "URL PATH" if job_type == JobType.DOWNLOAD else "URL PATH (the URL first, as AddFile)"
            swapped = f"; {hint!r} looks like the URL: give {order}" if hint else f": give {order}"
            raise click.UsageError(f"{url!r} is not a URL (scheme://...){swapped}")
        following = words[index + 1] if index + 1 < len(words) else None
        if following is not None and not looks_like_url(following):
            pairs.append((url, following))
            index += 2
        elif job_type != JobType.DOWNLOAD:
            raise click.UsageError(f"give the local file to upload after {url!r}: openbits transfer --upload URL PATH")
        else:
            derived.add(len(pairs))
            pairs.append((url, remote_file_name(url)))
            index += 1
    return pairs, derived


def plain_name(name: str | None) -> str | None:
    """A server's Content-Disposition name as a file name here: its last component only, or None."""
    if name is None:
        return None
    name = posixpath.basename(name.replace("\\", "/")).strip()
    return None if name in ("", ".", "..") or "\0" in name else name


def take_server_names(info: JobInfo, derived: set[int], names: dict[int, str], say: Callable[[str], None]
                      ) -> list[str]:
    """Rename each file saved under its URL's name to the name its server's Content-Disposition gave (curl -OJ),
    in the same directory and never over an existing file; return every file's final path."""
    final = [f.local_path for f in info.files]
    for index in sorted(derived & names.keys()):
        wanted = plain_name(names[index])
        if wanted is None or wanted == os.path.basename(final[index]):
            continue
        target = os.path.join(os.path.dirname(final[index]), wanted)
        try:
            os.link(final[index], target)  # fails if the name is taken: nothing is replaced
            os.unlink(final[index])
        except FileExistsError:
            say(f"kept {final[index]}: the server's name for it, {wanted}, is taken")
            continue
        except OSError as error:
            say(f"kept {final[index]}: cannot rename it to {wanted} ({error.strerror})")
            continue
        final[index] = target
    return final


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Let SIGTERM end a synchronous transfer as Ctrl-C does, so the job is cancelled rather than orphaned."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Watch:
    """What `transfer` tells the user while it follows the job: stderr lines and the bar's description."""

    def __init__(self, job: Job, quiet: bool, fail_fast: bool, verbose: bool) -> None:
        self.job, self.quiet, self.fail_fast, self.verbose = job, quiet, fail_fast, verbose
        self._shown_error: tuple[int, float | None] | None = None
        #: the file names the servers' Content-Disposition gave, by file index
        self.names: dict[int, str] = {}

    def exchange(self, info: ExchangeInfo) -> None:
        """-v shows each request and answer as the daemon made them (curl's > and <)."""
        if self.verbose:
            self.say(f"> {info.request}")
            self.say(f"< {info.response}")
        if info.file_name is not None:
            self.names[info.file_index] = info.file_name

    def say(self, line: str) -> None:
        if not self.quiet:
            say(line)

    def lost(self, reason: str) -> None:
        self.say(f"the daemon went away ({reason}); job {self.job.id} goes on when it is back - waiting for it "
                 "(Ctrl-C cancels the job)")

    def back(self) -> None:
        if not self.quiet:
            daemon_back()

    def transient(self) -> str:
        """The job waits to retry: say why and when (once per error), or end the transfer with --fail-fast."""
        info = self.job.info()
        error = error_of(info)
        reason = f"{error.name}: {error.description}" if error else "no reason given"
        if self.fail_fast:
            with contextlib.suppress(BitsError, DaemonUnavailableError):
                self.job.cancel()
            fail(f"{reason} (--fail-fast: cancelled job {self.job.id})", EXIT_JOB_ERROR)
        when = note = ""
        if info.retry_time is not None:
            clock = datetime.fromtimestamp(info.retry_time).strftime("%H:%M:%S")
            when = f"; next try at {clock} (in {duration(max(0.0, info.retry_time - time.time()))})"
            note = f" at {clock}"
        key = (info.error_count, info.retry_time)
        if key != self._shown_error:
            self._shown_error = key
            self.say(f"TRANSIENT_ERROR: {reason}{when}")
        return f"retrying{note}"


def _open_stream(job: Job, watch: _Watch) -> tuple[Iterator[EventInfo | None], EventInfo]:
    """The job's event stream, open before the job is resumed so no HTTP exchange is missed; and its first
    event (the job's history is replayed from seq 0, so one comes at once)."""
    events = manager().events(0, job.id, idle=_TICK, on_lost=watch.lost, on_back=watch.back,
                              on_exchange=watch.exchange)
    for event in events:
        if event is not None:
            return events, event
    raise DaemonUnavailableError("the event stream ended before it began")


def _follow(job: Job, watch: _Watch, events: Iterator[EventInfo | None], first: EventInfo, show_bar: bool,
            deadline: float | None) -> JobInfo:
    """Follow the job's events until it leaves the active states; return the last snapshot.

    The job was resumed before: its history (replayed from seq 0) starts SUSPENDED, so only a stop after it
    was active counts.
    """
    with transfer_progress(show_bar and not watch.quiet) as bar:
        task = bar.add_task(job.last_info.name, total=None)
        was_active = False
        for event in itertools.chain([first], events):
            if deadline is not None and time.monotonic() >= deadline:
                raise _OutOfTime
            if event is None:
                continue
            note = f" [yellow]{watch.transient()}[/]" if event.state == JobState.TRANSIENT_ERROR else ""
            bar.update(task, total=_total(event), completed=event.bytes_transferred, rate=event.transfer_rate,
                       description=f"{event.job_name} {event.files_transferred}/{event.files_total}{note}")
            was_active = was_active or event.state.is_active
            if was_active and not event.state.is_active:
                break
    return job.info()


def _total(event: EventInfo) -> int | None:
    """The bar's total: unknown (the bar shows the bytes so far) while a file's size is."""
    return None if event.bytes_total == SIZE_UNKNOWN else event.bytes_total


class _OutOfTime(Exception):
    """--max-time ran out."""


def summary(info: JobInfo, paths: list[str]) -> str:
    """One line for logs and scripts: what was saved, how many bytes, how long, how fast (the daemon's times)."""
    names = paths[0] if len(paths) == 1 else f"{len(paths)} files"
    seconds = max((info.transfer_completion_time or time.time()) - info.creation_time, 0.001)
    rate = decimal(int(info.bytes_transferred / seconds))
    return f"{names}: {decimal(info.bytes_transferred)} in {seconds:.1f} s ({rate}/s)"


def cancel_when_back(job: Job) -> None:
    """The daemon is away: leave a detached `openbits cancel --when-back JOB` to cancel the job once it answers."""
    socket = manager().socket_path
    command = [sys.executable, "-m", "openbits.cli", "--no-autostart"]
    command += ["--socket", os.fspath(socket)] if socket is not None else []
    subprocess.Popen([*command, "cancel", "--when-back", job.id], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


@dataclass(frozen=True)
class JobSettings:
    """What Start-BitsTransfer's parameters set on the job before it starts; checked before it is created."""

    description: str | None
    retry_delay: int | None
    retry_timeout: int | None
    max_download_time: int | None
    transfer_policy: int | None
    custom_headers: tuple[str, ...]
    dynamic: bool
    security_flags: str | None
    notify_cmdline: str | None
    proxy_usage: str | None
    proxy_list: str | None
    proxy_bypass: str | None
    credential: str | None
    authentication: str
    password_stdin: bool

    def properties(self) -> dict[str, Any]:
        """The job properties to set, in one call (a usage error names the option that is wrong)."""
        changes: dict[str, Any] = {
            "description": self.description, "minimum_retry_delay": self.retry_delay,
            "no_progress_timeout": self.retry_timeout, "max_download_time": self.max_download_time,
            "cost_flags": self.transfer_policy, "custom_headers": list(self.custom_headers) or None,
            "dynamic_content": self.dynamic or None}
        if self.security_flags is not None:
            try:
                changes["security_flags"] = parse_flags(self.security_flags, SECURITY_NAMES)
            except click.BadParameter as exc:
                raise click.BadParameter(exc.message, param_hint="--security-flags") from None
        return {key: value for key, value in changes.items() if value is not None}

    def notify_program(self) -> str | None:
        """--notify-cmdline's program: the first word of BITS's one parameters string."""
        if self.notify_cmdline is None:
            return None
        try:
            words = shlex.split(self.notify_cmdline)
        except ValueError as exc:
            raise click.BadParameter(f"{exc}: quote as a shell would", param_hint="--notify-cmdline") from None
        if not words or not words[0].startswith("/"):
            raise click.BadParameter("give the program's absolute path first, then its arguments: "
                                     "'/usr/bin/prog {JOB}'", param_hint="--notify-cmdline")
        return words[0]

    def check(self) -> tuple[dict[str, Any], str | None, str | None]:
        """Everything a usage error can be found in, before a job exists: (properties, notify program, password)."""
        if (self.proxy_list is not None or self.proxy_bypass is not None) and self.proxy_usage is None:
            raise click.UsageError("--proxy-list and --proxy-bypass go with --proxy-usage OVERRIDE")
        if self.password_stdin and self.credential is None:
            raise click.UsageError("--password-stdin reads the password of --credential USER")
        secret = None if self.credential is None else password(self.password_stdin, f"Password for {self.credential}")
        return self.properties(), self.notify_program(), secret

    def apply(self, job: Job, properties: dict[str, Any], program: str | None, secret: str | None) -> None:
        if properties:
            job.set_properties(**properties)
        if self.proxy_usage is not None:
            bypass = None if self.proxy_bypass in (None, "", "NULL") else self.proxy_bypass
            job.set_proxy_settings(_PROXY_USAGE[self.proxy_usage.upper()], self.proxy_list, bypass)
        if self.credential is not None and secret is not None:
            job.set_credentials(AuthTarget.SERVER, AuthScheme[self.authentication.upper()], self.credential, secret)
        if program is not None and self.notify_cmdline is not None:
            job.set_notify_cmdline(program, self.notify_cmdline)


def start_bits_transfer_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Start-BitsTransfer's parameters that set the job up (-Description, -RetryInterval, -Credential, ...)."""
    options = [
        click.option("--description", help="The job's description (-Description)."),
        click.option("--retry-delay", "--retry-interval", "retry_delay", type=SECONDS, metavar="SECONDS",
                     help="Seconds between retries after a transient error (the job's minimum retry delay; "
                     "-RetryInterval)."),
        click.option("--retry-timeout", type=SECONDS, metavar="SECONDS",
                     help="Give up (ERROR, exit 7) after this long without progress (the job's no-progress "
                     "timeout; -RetryTimeout)."),
        click.option("--max-download-time", type=SECONDS, metavar="SECONDS",
                     help="ERROR after this long transferring (SetMaximumDownloadTime; -MaxDownloadTime)."),
        click.option("--transfer-policy", type=CostFlagsParam(),
                     help="Network cost states to transfer in: ALWAYS, NOT_ROAMING, NO_SURCHARGE, STANDARD, "
                     "UNRESTRICTED or BITS_COST_STATE bits (-TransferPolicy)."),
        click.option("--custom-headers", multiple=True, metavar="'NAME: VALUE'",
                     help="A custom HTTP header; repeat for more (-CustomHeaders)."),
        click.option("--dynamic", is_flag=True, help="Allow dynamic content: no size or validator (-Dynamic)."),
        click.option("--security-flags", metavar="FLAGS",
                     help="HTTP security flags, a number or names as setsecurityflags takes them (-SecurityFlags)."),
        click.option("--notify-cmdline", metavar="'PROGRAM ARGS'",
                     help="Run this when the job is TRANSFERRED or in ERROR: BITS's one string, the absolute "
                     "program first ({JOB}: the GUID; -NotifyCmdLine)."),
        click.option("--proxy-usage", type=click.Choice([*_PROXY_USAGE], case_sensitive=False),
                     help="SystemDefault (PRECONFIG), NoProxy, AutoDetect or Override (-ProxyUsage)."),
        click.option("--proxy-list", help="Override: the proxies, as setproxy --list takes them (-ProxyList)."),
        click.option("--proxy-bypass", help="Override: hosts that go direct (-ProxyBypass)."),
        click.option("--credential", metavar="USER", help="Answer the server's challenges as USER (-Credential); "
                     "the password is prompted for, or read with --password-stdin."),
        click.option("--authentication", type=SCHEME, default="NEGOTIATE", show_default=True,
                     help="The scheme of --credential (-Authentication)."),
        click.option("--password-stdin", is_flag=True, help="Read --credential's password from stdin's first line."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@cli.command(context_settings={"max_content_width": 100})
@job_type_options
@click.argument("words", nargs=-1, required=True, metavar="URL [PATH] [URL [PATH]]...")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Save the one URL as this file.")
@click.option("--name", "--display-name", "name", default="openbits transfer", show_default=True,
              help="Display name of the job (-DisplayName).")
@click.option("--priority", type=PRIORITY, default=JobPriority.FOREGROUND.name, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the final job as JSON instead of a progress bar.")
@click.option("-q", "--quiet", is_flag=True, help="No bar, no summary, no notes: only errors.")
@click.option("-v", "--verbose", is_flag=True,
              help="Show each HTTP request and the status line answering it, as the daemon makes them.")
@click.option("--fail-fast", is_flag=True, help="End at the first transient error (cancelling the job), with it.")
@click.option("--max-time", type=click.FloatRange(0, min_open=True), metavar="SECONDS",
              help="Give up after this long in all (the job is cancelled; exit 7).")
@click.option("--asynchronous", is_flag=True,
              help="Start the job, print its GUID and return (-Asynchronous); complete it later.")
@click.option("--suspended", is_flag=True, help="Create the job suspended, print its GUID and return (-Suspended).")
@start_bits_transfer_options
def transfer(job_type: str, words: tuple[str, ...], output: str | None, name: str, priority: str,
             as_json: bool, quiet: bool, verbose: bool, fail_fast: bool, max_time: float | None,
             asynchronous: bool, suspended: bool, **settings: Any) -> None:
    """Transfer files now, like Start-BitsTransfer: create, add, resume, wait, complete.

    A URL without a PATH is saved under the file name its path ends in, in the current directory
    (index.html when it names none), or under the name the server's Content-Disposition gives (never a
    path elsewhere, never over an existing file). While the job waits to retry after a transient error the reason
    and the next try are shown. On success a summary line is printed when stdout is no terminal.

    With --asynchronous (or --suspended) it prints the job's GUID (its JSON with --json) once the job is
    started (or set up) and returns: `openbits wait JOB && openbits complete JOB` finish it.

    Exit codes: 0 transferred; 4 ERROR (the job is left for inspection, its GUID printed); 7 --max-time
    or --retry-timeout ran out; 130 Ctrl-C or SIGTERM, which cancel the job as Start-BitsTransfer's
    synchronous mode does.
    """
    files, derived = pair_up(words, JobType[job_type], output)
    job_settings = JobSettings(**settings)
    properties, program, secret = job_settings.check()
    if (asynchronous or suspended) and (max_time is not None or fail_fast):
        raise click.UsageError("--max-time and --fail-fast follow a synchronous transfer; not with "
                               "--asynchronous or --suspended")
    started = time.monotonic()
    job = manager().create_job(name, JobType[job_type], priority=JobPriority[priority.upper()])
    watch = _Watch(job, quiet, fail_fast, verbose)
    try:
        with _sigterm_interrupts():
            job.add_files(files)
            job_settings.apply(job, properties, program, secret)
            if asynchronous or suspended:
                info = job.info() if suspended else job.resume()
                if as_json:
                    print_json(info)
                else:
                    click.echo(job.id)
                return
            events, first = _open_stream(job, watch)
            job.resume()
            info = _follow(job, watch, events, first, not as_json, None if max_time is None else started + max_time)
    except KeyboardInterrupt:
        try:
            job.cancel()
        except DaemonUnavailableError:
            cancel_when_back(job)
            fail(f"interrupted: the daemon is away; job {job.id} is cancelled as soon as it is back",
                 _EXIT_INTERRUPTED)
        fail(f"interrupted: cancelled job {job.id}", _EXIT_INTERRUPTED)
    except _OutOfTime:
        job.cancel()
        fail(f"--max-time {max_time:g} s ran out: cancelled job {job.id}", EXIT_TIMEOUT)
    except BaseException:
        with contextlib.suppress(BitsError, DaemonUnavailableError):
            job.cancel()  # the caller only sees the error: a job nobody will hear of again is litter
        raise
    if info.state == JobState.TRANSFERRED:
        info = job.complete()
    paths = take_server_names(info, derived, watch.names, watch.say) if info.state == JobState.ACKNOWLEDGED else []
    if as_json:
        print_json(info)
    if info.state == JobState.ERROR:
        error = error_of(info)
        reason = f"{error.name}: {error.description}" if error else "the job failed"
        code = EXIT_TIMEOUT if error is not None and error.code == ErrorCode.BG_E_NO_PROGRESS else EXIT_JOB_ERROR
        fail(f"{reason} (job {job.id} left for inspection)", code)
    if info.state != JobState.ACKNOWLEDGED:
        fail(f"job {job.id} ended {info.state.name}, not transferred")
    if not (as_json or quiet or sys.stdout.isatty()):
        click.echo(summary(info, paths))
