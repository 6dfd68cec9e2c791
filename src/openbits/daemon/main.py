"""openbitsd: start-up, the serving loop, and clean shutdown.

Order matters: the file broker's zygote is forked first, while the process
has one thread and no event loop; then the store (a writer thread), then the
loop with the API, the scheduler and the housekeeping, each owned by one
TaskGroup so a clean shutdown waits for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import gc
import logging
import os
import signal
import socket
import ssl
import time
from pathlib import Path

from aiohttp import web

from ..schema.models import STREAM_SHUTDOWN
from ..api.app import make_app
from ..api.metrics_routes import serve_tcp
from ..bandwidth import BandwidthPolicy, LinkSensor
from ..bandwidth.sensing import UP
from ..pools import Pools
from ..locations import answers, unsafe_dir
from ..shellcompletion import answer_completion
from ..core.certificates import CertificateService
from ..core.cost import CostMonitor, describe
from .statedir import own_state_dir
from ..api.connections import ConnectionLimits, listen, raise_descriptor_limit
from ..core.changes import JobChanges
from ..core.deliveries import Deliveries
from ..core.metrics import Metrics
from ..core.transitions import Transitions
from ..model.job import Job
from ..core.scheduler import Scheduler
from ..core.service import JobService
from ..core.transfers import Transfers
from ..core.upload_runner import cancel_upload_session
from ..events.bus import EventBus
from ..core.logons import LogonMonitor
from ..core.tokens import TokenService, require_tokens_after_restart, restore_credentials
from ..identity.logon import FALLBACK_SERVICE, PAM_SERVICE, LogonChecker
from ..enums import JobState
from ..identity import FileBroker
from ..identity.sealing import KeyRing
from ..store import SqliteStore
from ..transport.http import HttpTransport
from ..transport.router import Transport
from . import logs, systemd
from .activity import Activity
from .options import Settings, check_config, parser
from ..transport.tls import TlsContexts, TlsSettings

log = logging.getLogger("openbitsd")

#: Seconds a stop waits for requests in flight (a `wait` holds one up to 30 s) before it cuts them off.
SHUTDOWN_GRACE = 2.0

def recover(jobs: list[Job]) -> None:
    """After a crash or restart, jobs that were moving bytes go back to the queue."""
    for job in jobs:
        if job.state in (JobState.CONNECTING, JobState.TRANSFERRING):
            job.state = JobState.QUEUED
    require_tokens_after_restart(jobs)


def take_state_lock(state_dir: Path) -> int:
    """One daemon per state directory: a second one would corrupt the job files."""
    own_state_dir(state_dir)
    fd = os.open(state_dir / "openbitsd.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"openbitsd: another daemon already uses {state_dir}") from None
    return fd


def bind_socket(path: Path, system: bool) -> socket.socket:
    if answers(path):
        raise SystemExit(f"openbitsd: a daemon already answers on {path}")
    if (unsafe := unsafe_dir(path.parent, os.geteuid())) is not None:
        raise SystemExit(f"openbitsd: not listening there: {unsafe}")
    path.parent.mkdir(parents=True, mode=0o755 if system else 0o700, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.fspath(path))
    # Any local user may connect to the system daemon; who they are comes from SO_PEERCRED.
    os.chmod(path, 0o666 if system else 0o600)
    sock.listen(512)
    return sock


async def serve(settings: Settings, broker: FileBroker, pools: Pools, store: SqliteStore, jobs: list[Job],
                keys: KeyRing, inherited: socket.socket | None, notifier: systemd.Notifier,
                limits: ConnectionLimits) -> None:
    """`inherited`: the socket systemd passed (never unlinked here: it is systemd's); else one is bound."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    cost = CostMonitor(settings.current)  # the network's cost state (NetworkManager, else [network])
    logons = LogonMonitor(settings.current, follow=settings.system)  # who is logged on (logind, else [users])

    scheduler: Scheduler | None = None  # built below; a SIGHUP may come first

    def reload() -> None:
        notifier.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        if settings.reload():
            cost.recheck()  # a new [network] section takes effect at once
            logons.recheck()  # and a new [users] section
            if scheduler is not None:
                scheduler.wake()  # and a new [bandwidth] policy
        notifier.send("READY=1")

    loop.add_signal_handler(signal.SIGHUP, reload)

    by_id = {job.id: job for job in jobs}
    tls = TlsContexts(settings.config.tls_ca_file)
    try:
        tls.context(TlsSettings())  # a bad [tls] ca_file stops the start, not every https transfer
    except (OSError, ssl.SSLError) as exc:
        raise SystemExit(f"openbitsd: [tls] ca_file {settings.config.tls_ca_file}: {exc}") from None
    changes, transfers, transport = JobChanges(), Transfers(), Transport(HttpTransport(pools=pools, tls=tls))
    bus = EventBus(store, by_id, settings.current)
    transitions = Transitions(jobs, changes)
    service = JobService(store, broker, settings.current, by_id, bus, changes, transfers,
                         functools.partial(cancel_upload_session, transport), pools.reads)
    # the credentials stored with the jobs, before anything runs (a blocking systemd-creds call, once)
    for job in restore_credentials(jobs, service.tokens, keys):
        await service.commit(job)  # credentials that did not open: the job's error says so
    trace_path = os.environ.get("OPENBITS_BANDWIDTH_TRACE")  # tests/test_bandwidth_controller.py replays these
    trace = open(trace_path, "a", buffering=1) if trace_path else None
    sensors = {"download": LinkSensor(trace=trace),
               "upload": LinkSensor(direction=UP) if settings.config.bandwidth_upload_control else None}
    policy = BandwidthPolicy(lambda: settings.config.bandwidth_limits_now(), sensors["download"],
                             lambda: settings.config.bandwidth_ignore_limits_when_idle,
                             upload_sensor=sensors["upload"])
    scheduler = Scheduler(service, changes, transfers, transport, policy.throttle_for, cost, logons)
    deliveries = Deliveries(service, bus, changes, str(settings.socket))
    gc.freeze()  # the loaded jobs live as long as the daemon: keep them out of every future collection
    # Every API request leaves a few hundred young objects and almost no cycles: collecting the young
    # generation every 10,000 allocations rather than 700 gave the API 3 % more jobs/s.
    gc.set_threshold(10_000, 20, 20)
    gc.enable()
    checker = LogonChecker(pool=pools.pam)
    runner: web.AppRunner | None = None
    metrics = Metrics(service, transitions, policy, sensors, checker, settings.state_dir / "jobs.db",
                      lambda: len(runner.server.connections) if runner is not None and runner.server else 0)

    def about() -> dict[str, object]:
        pam = PAM_SERVICE if os.path.exists(f"/etc/pam.d/{PAM_SERVICE}") else f"{FALLBACK_SERVICE} (/etc/pam.d/" \
            f"{PAM_SERVICE} is missing)"
        listen = settings.config.metrics_listen
        return {"socket": str(settings.socket), "state_dir": str(settings.state_dir), "config_file": settings.config_path,
                "cost": f"{describe(cost.state)} ({cost.source})", "bandwidth": policy.background_rate()[1],
                "pam_service": pam, "metrics": "/v1/metrics" + (f", http://{listen}/metrics" if listen else "")}

    app = make_app(service, TokenService(service, checker, keys), CertificateService(service), deliveries,
                   # `openbits info`: the rate each job is allowed, and why (an owner not logged on, blocked by
                   # cost, the bandwidth policy)
                   functools.partial(logons.explain, rate=functools.partial(cost.explain, rate=policy.explain)),
                   settings.mode, metrics, about, on_demand=settings.exit_when_idle is not None)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE)
    await runner.setup()
    scrape = await serve_tcp(settings.config.metrics_listen, metrics)
    sock = inherited or bind_socket(settings.socket, settings.system)
    activity = Activity(service.jobs)
    server = await listen(runner, sock, limits, settings.current)
    try:
        log.info("openbitsd %s mode, %d jobs, listening on %s%s", settings.mode, len(jobs), settings.socket,
                 " (socket from systemd)" if inherited else "")
        status = activity.line()
        notifier.send("READY=1", f"STATUS={status}")
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(transfers.run(), name="transfers"),
                     group.create_task(scheduler.run(), name="scheduler"),
                     group.create_task(_housekeeping(service), name="housekeeping"),
                     group.create_task(bus.run(), name="events"),
                     group.create_task(deliveries.run(), name="notifications"),
                     group.create_task(systemd.watchdog(notifier), name="watchdog"),
                     group.create_task(systemd.report_status(notifier, activity.line, status), name="status"),
                     group.create_task(metrics.measure_lag(), name="loop-lag")]
            if settings.exit_when_idle is not None:
                tasks.append(group.create_task(_exit_when_idle(settings.exit_when_idle, limits, service, stop),
                                               name="idle-exit"))
            await stop.wait()
            log.info("shutting down")
            notifier.send("STOPPING=1")
            # open event streams end at once, whatever their clients do; other requests get SHUTDOWN_GRACE
            bus.end_streams(f"{STREAM_SHUTDOWN}: openbitsd is stopping")
            for task in tasks:
                task.cancel()
    finally:
        server.close()
        await runner.cleanup()
        if scrape is not None:
            await scrape.cleanup()
        if inherited is None:
            with contextlib.suppress(FileNotFoundError):
                settings.socket.unlink()
        await transport.aclose()
        await store.close()
        await broker.aclose()


async def _exit_when_idle(seconds: float, limits: ConnectionLimits, service: JobService, stop: asyncio.Event) -> None:
    """A daemon started on demand ends once nobody has used it for `seconds` and it has no live job."""
    while True:
        await asyncio.sleep(min(seconds, 5.0))
        if limits.idle_for() >= seconds and not service.live_jobs():
            log.info("no connection and no live job for %g s: exiting (started on demand)", seconds)
            stop.set()
            return


async def _housekeeping(service: JobService) -> None:
    """JobInactivityTimeout and the retention of final jobs."""
    while True:
        await asyncio.sleep(await service.expire())


#: loggers of the protocol libraries (transport/smb.py, identity/gss.py)
QUIET_LIBRARIES = ("smbprotocol", "spnego", "gssapi", "krb5")


def main(argv: list[str] | None = None) -> None:
    answer_completion(parser())
    args = parser().parse_args(argv)
    if args.check_config is not None:
        raise SystemExit(check_config(args))
    logs.configure("openbitsd", args.log_level, args.log_target, args.log_format)
    # Their debug output dumps every packet - logon messages and file contents - and formatting a hex dump
    # of each 1 MiB read slowed an SMB download 30-fold: warnings only, whatever --log-level says.
    for library in QUIET_LIBRARIES:
        logging.getLogger(library).setLevel(logging.WARNING)
    try:
        settings = Settings(args)
    except ValueError as exc:
        raise SystemExit(f"openbitsd: {' '.join(str(exc).split())}") from None
    # Before the zygote forks: neither it nor any program started later sees systemd's variables.
    inherited = systemd.inherited_socket()
    if inherited is not None:
        settings.socket = Path(inherited.getsockname())  # what systemd listens on, whatever --socket said
    notifier = systemd.Notifier()
    os.umask(0o022)
    limits = ConnectionLimits(settings.current, raise_descriptor_limit())
    lock = take_state_lock(settings.state_dir)
    broker = FileBroker.start()  # before any thread or event loop exists
    pools = Pools()  # its threads start with the first work, after the fork
    store = SqliteStore(os.fspath(settings.state_dir / "jobs.db"), reads=pools.store)
    # Loading 100,000 jobs allocates millions of objects and nothing cyclic to free: the collector
    # would rescan them all again and again (a third of the start-up). It resumes in serve().
    gc.disable()
    jobs = store.load_jobs()
    recover(jobs)
    keys = KeyRing(settings.state_dir)  # the key of the credentials stored with the jobs (beside the store)
    try:
        asyncio.run(serve(settings, broker, pools, store, jobs, keys, inherited, notifier, limits))
    finally:
        pools.shutdown()
        os.close(lock)
