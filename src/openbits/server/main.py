"""`openbits-server [serve] --root DIR [--create-root] --listen HOST:PORT [--config FILE]`; `openbits-server gc --config FILE`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from ..locations import split_host_port
from ..shellcompletion import answer_completion
from ..version import __version__
from .acks import AckError
from .app import make_upload_app, open_storages
from .settings import ServerSettings, load_settings
from .wire import BitsAppRunner

log = logging.getLogger("openbits.server")


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets: [::1]:8080)."""
    try:
        host, port = split_host_port(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return host or "0.0.0.0", port


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openbits-server", description="Serve the BITS upload protocol.")
    parser.add_argument("command", nargs="?", choices=("serve", "gc"), default="serve",
                        help="serve (the default), or gc: remove expired sessions and orphans once, then exit")
    parser.add_argument("--root", metavar="DIR", help='directory served as the virtual directory "/" (it must exist)')
    parser.add_argument("--create-root", action="store_true", help="create --root DIR if it does not exist")
    parser.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 8080), help="HOST:PORT (default 127.0.0.1:8080)")
    parser.add_argument("--config", metavar="FILE", help="TOML file of virtual directories and their settings")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--version", action="version", version=f"openbits-server {__version__}")
    return parser


#: Seconds a stop waits for requests in flight. aiohttp stops reading bodies when it stops, so a fragment
#: still arriving never finished and held the stop for aiohttp's default 60 s; cut off, its client goes on
#: from the range the session has on disk.
SHUTDOWN_GRACE = 5.0


async def serve(settings: ServerSettings, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM; print the bound address so scripts can use port 0."""
    runner = BitsAppRunner(make_upload_app(settings), shutdown_timeout=SHUTDOWN_GRACE)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        sys.exit(f"openbits-server: cannot listen on {host}:{port}: {reason}; "
                 "choose another --listen HOST:PORT (port 0 picks a free one) or stop what uses it")
    for address in runner.addresses:
        print(f"openbits-server listening on {address[0]}:{address[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


async def collect(settings: ServerSettings) -> int:
    """One clean-up pass over every virtual directory's store (what each node also runs periodically)."""
    async with contextlib.AsyncExitStack() as stack:
        return sum([await store.cleanup() for store in (await open_storages(settings, stack)).values()])


def _check_root(root: Path, create: bool) -> None:
    """A typo in --root must not become a new empty directory that silently takes the uploads."""
    if root.is_dir():
        return
    if root.exists():
        sys.exit(f"openbits-server: --root {root} is not a directory")
    if not create:
        sys.exit(f"openbits-server: --root {root} does not exist; check the path, or add --create-root to create it")
    try:
        root.mkdir(parents=True, mode=0o750)
    except OSError as exc:
        sys.exit(f"openbits-server: cannot create --root {root}: {exc.strerror or exc}")


def main(argv: list[str] | None = None) -> None:
    answer_completion(_parser())
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not (args.config or args.root):
        sys.exit("openbits-server: give --root DIR or --config FILE")
    if args.root:
        _check_root(Path(args.root), args.create_root)
    try:
        settings = load_settings(args.config, root=args.root) if args.config else ServerSettings.for_root(args.root)
    except (OSError, ValueError) as exc:  # tomllib.TOMLDecodeError is a ValueError
        sys.exit(f"openbits-server: {exc}")
    if args.command == "gc":
        try:
            removed = asyncio.run(collect(settings))
        except AckError as exc:
            sys.exit(f"openbits-server gc: {exc}")
        print(f"openbits-server gc: removed {removed} expired sessions and abandoned multipart uploads")
        return
    host, port = args.listen
    asyncio.run(serve(settings, host, port))
