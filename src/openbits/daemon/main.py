"""openbitsd: start-up, the serving loop, and clean shutdown.

Order matters: the file broker's zygote is forked first, while the process
has one thread and no event loop; then the store (a writer thread), then the
loop with the API, the scheduler and the housekeeping, each owned by one
TaskGroup so a clean shutdown waits for all of them.
"""

from __future__ import annotations

import argparse
import datetime
import asyncio
import contextlib
import fcntl
import functools
import gc
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from aiohttp import web

from ..api.app import make_app
from ..bandwidth import BandwidthPolicy, LinkSensor
from ..bandwidth.sensing import UP
from ..pools import Pools
from ..locations import answers, system_socket_path, user_socket_path, user_state_dir
from ..core.cost import CostMonitor
from ..core.changes import JobChanges
from ..core.deliveries import Deliveries
from ..model.job import Job
from ..core.scheduler import Scheduler
from ..core.service import JobService
from ..core.transfers import Transfers
from ..core.upload_runner import cancel_upload_session
from ..events.bus import EventBus
from ..core.tokens import TokenService, require_tokens_after_restart
from ..identity.logon import LogonChecker
from ..enums import JobState
from ..identity import FileBroker
from ..store import SqliteStore
from ..transport.http import HttpTransport
from ..transport.router import Transport
from ..model.config import Config

log = logging.getLogger("openbitsd")

SYSTEM_STATE_DIR = Path("/var/lib/openbits")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="openbitsd", description="openbits daemon (BITS for Linux)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--system", action="store_true", help="serve every local user (root only)")
    mode.add_argument("--user", action="store_true", help="serve the calling user only")
    parser.add_argument("--socket", type=Path, help="Unix socket path")
    parser.add_argument("--state-dir", type=Path, help="directory of the job database")
    parser.add_argument("--config", help="TOML configuration file (reloaded on SIGHUP)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser.parse_args(argv)


class Settings:
    """The resolved command line plus the live configuration (replaced on SIGHUP)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.system = args.system or (not args.user and os.geteuid() == 0)
        if self.system and os.geteuid() != 0:
            raise SystemExit("openbitsd: --system needs root; run `openbitsd --user` for a per-user daemon")
        self.mode = "system" if self.system else "user"
        self.socket = args.socket or (system_socket_path() if self.system else user_socket_path())
        self.state_dir = args.state_dir or (SYSTEM_STATE_DIR if self.system else user_state_dir())
        self.config_path: str | None = args.config
        self.config = Config.load(self.config_path)

    def current(self) -> Config:
        """The configuration in force now (SIGHUP replaces it)."""
        return self.config

    def reload(self) -> None:
        try:
            self.config = Config.load(self.config_path)
        except ValueError as exc:
            log.error("configuration not reloaded, the old one stays: %s", exc)
        else:
            log.info("configuration reloaded from %s", self.config_path)


def recover(jobs: list[Job]) -> None:
    """After a crash or restart, jobs that were moving bytes go back to the queue."""
    for job in jobs:
        if job.state in (JobState.CONNECTING, JobState.TRANSFERRING):
            job.state = JobState.QUEUED
    require_tokens_after_restart(jobs)


def take_state_lock(state_dir: Path) -> int:
    """One daemon per state directory: a second one would corrupt the job files."""
    state_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
    fd = os.open(state_dir / "openbitsd.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"openbitsd: another daemon already uses {state_dir}") from None
    return fd


def bind_socket(path: Path, system: bool) -> socket.socket:
    if answers(path):
        raise SystemExit(f"openbitsd: a daemon already answers on {path}")
    path.parent.mkdir(parents=True, mode=0o755 if system else 0o700, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.fspath(path))
    # Any local user may connect to the system daemon; who they are comes from SO_PEERCRED.
    os.chmod(path, 0o666 if system else 0o600)
    sock.listen(512)
    return sock


async def serve(settings: Settings, broker: FileBroker, pools: Pools, store: SqliteStore, jobs: list[Job]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    cost = CostMonitor(settings.current)  # the network's cost state (NetworkManager, else [network])

    def reload() -> None:
        settings.reload()
        cost.recheck()  # a new [network] section takes effect at once

    loop.add_signal_handler(signal.SIGHUP, reload)

    by_id = {job.id: job for job in jobs}
    changes, transfers, transport = JobChanges(), Transfers(), Transport(HttpTransport(pools=pools))
    bus = EventBus(store, by_id, settings.current)
    service = JobService(store, broker, settings.current, by_id, bus, changes, transfers,
                         functools.partial(cancel_upload_session, transport), pools.reads)
    trace_path = os.environ.get("OPENBITS_BANDWIDTH_TRACE")  # tests/test_bandwidth_controller.py replays these
    trace = open(trace_path, "a", buffering=1) if trace_path else None
    policy = BandwidthPolicy(lambda: _background_limit(settings.config), LinkSensor(trace=trace),
                             lambda: settings.config.bandwidth_ignore_limits_when_idle,
                             upload_sensor=LinkSensor(direction=UP) if settings.config.bandwidth_upload_control
                             else None)
    scheduler = Scheduler(service, changes, transfers, transport, policy.throttle_for, cost)
    deliveries = Deliveries(service, bus, changes, str(settings.socket))
    gc.freeze()  # the loaded jobs live as long as the daemon: keep them out of every future collection
    # Every API request leaves a few hundred young objects and almost no cycles: collecting the young
    # generation every 10,000 allocations rather than 700 gave the API 3 % more jobs/s.
    gc.set_threshold(10_000, 20, 20)
    gc.enable()
    app = make_app(service, TokenService(service, LogonChecker(pool=pools.pam)), deliveries,
                   # `openbits info`: the rate each job is allowed, and why (blocked by cost first)
                   functools.partial(cost.explain, rate=policy.explain), settings.mode)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = bind_socket(settings.socket, settings.system)
    await web.SockSite(runner, sock).start()
    log.info("openbitsd %s mode, %d jobs, listening on %s", settings.mode, len(jobs), settings.socket)
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(transfers.run(), name="transfers"),
                     group.create_task(scheduler.run(), name="scheduler"),
                     group.create_task(_housekeeping(service), name="housekeeping"),
                     group.create_task(bus.run(), name="events"),
                     group.create_task(deliveries.run(), name="notifications")]
            await stop.wait()
            log.info("shutting down")
            for task in tasks:
                task.cancel()
    finally:
        await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            settings.socket.unlink()
        await transport.aclose()
        await store.close()
        await broker.aclose()


def _background_limit(config: Config) -> int:
    now = datetime.datetime.now()
    return config.background_limit(now.weekday(), now.hour * 60 + now.minute)


async def _housekeeping(service: JobService) -> None:
    """JobInactivityTimeout and the retention of final jobs."""
    while True:
        await asyncio.sleep(await service.expire())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = Settings(args)
    except ValueError as exc:
        raise SystemExit(f"openbitsd: {exc}") from None
    os.umask(0o022)
    lock = take_state_lock(settings.state_dir)
    broker = FileBroker.start()  # before any thread or event loop exists
    pools = Pools()  # its threads start with the first work, after the fork
    store = SqliteStore(os.fspath(settings.state_dir / "jobs.db"), reads=pools.store)
    # Loading 100,000 jobs allocates millions of objects and nothing cyclic to free: the collector
    # would rescan them all again and again (a third of the start-up). It resumes in serve().
    gc.disable()
    jobs = store.load_jobs()
    recover(jobs)
    try:
        asyncio.run(serve(settings, broker, pools, store, jobs))
    finally:
        pools.shutdown()
        os.close(lock)
