"""The daemon's core in the test's own process: the real objects, built the way daemon/main.py's serve() does.

    async with Core.built(tmp_path, broker, max_jobs_per_user=2) as core:
        job = await core.service.create(core.me, "a job", JobType.DOWNLOAD, JobPriority.NORMAL, "")

No socket, no API, no daemon process: the service, the store (SQLite in tmp_path), the event bus, the
job changes and the transfers are the daemon's own, so a test sees what the daemon would do, in
milliseconds. `Core.scheduler` adds the scheduler (see tests/test_scheduler.py for its runners).
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from openbits.core.changes import JobChanges
from openbits.core.cost import CostMonitor
from openbits.core.logons import LogonMonitor
from openbits.core.service import JobService
from openbits.core.transfers import Transfers
from openbits.core.upload_runner import cancel_upload_session
from openbits.events.bus import EventBus
from openbits.identity import FileBroker, Identity
from openbits.model.config import Config
from openbits.model.job import Job
from openbits.pools import Pools
from openbits.store import SqliteStore
from openbits.transport.http import HttpTransport
from openbits.transport.router import Transport

#: "nobody" (Debian's uid 65534): another user, and no administrator
OTHER_UID = 65534


@dataclass
class Core:
    #: the state directory: the job database, and whatever else a test keeps there
    state: Path
    store: SqliteStore
    service: JobService
    changes: JobChanges
    transfers: Transfers
    transport: Transport
    #: the configuration in force; `configure()` replaces it, as a SIGHUP would
    config: Config
    #: the test's own user: the owner of the jobs it makes
    me: Identity = field(default_factory=lambda: Identity.from_uid(os.geteuid()))
    other: Identity = field(default_factory=lambda: Identity.from_uid(OTHER_UID))
    root: Identity = field(default_factory=lambda: Identity.from_uid(0))

    @classmethod
    @asynccontextmanager
    async def built(cls, state: Path, broker: FileBroker, jobs: Sequence[Job] = (), **config: Any) -> AsyncIterator[Core]:
        """`config`: Config fields (max_jobs_per_user=2, ...). The transfers run for the whole block."""
        pools = Pools()
        store = SqliteStore(os.fspath(state / "jobs.db"), reads=pools.store)
        by_id = {job.id: job for job in jobs}
        changes, transfers, transport = JobChanges(), Transfers(), Transport(HttpTransport(pools=pools))
        core: Core

        def current() -> Config:
            return core.config

        bus = EventBus(store, by_id, current)
        service = JobService(store, broker, current, by_id, bus, changes, transfers,
                             functools.partial(cancel_upload_session, transport), pools.reads)
        core = cls(state, store, service, changes, transfers, transport, Config(**config))
        running = asyncio.create_task(transfers.run(), name="transfers")
        try:
            yield core
        finally:
            running.cancel()
            await asyncio.wait([running])
            await transport.aclose()
            await store.close()
            pools.shutdown()

    def configure(self, **changes: Any) -> None:
        self.config = replace(self.config, **changes)

    def cost(self) -> CostMonitor:
        """The cost state from the configuration alone: a bus address where no bus is (as tests/test_cost.py)."""
        return CostMonitor(lambda: self.config, bus_address=f"unix:path={self.state / 'no-bus'}")

    def logons(self) -> LogonMonitor:
        """Who is logged on from the configuration alone (require_logon is off by default): everyone."""
        return LogonMonitor(lambda: self.config, bus_address=f"unix:path={self.state / 'no-bus'}")
