"""The daemon's thread pools: one bounded pool per kind of blocking work, created and shut down by its owner.

Separate pools so that one kind of work - one user's, often - never queues another's: a burst
of PAM logons does not delay the fdatasync of downloads, and a slow disk does not starve the
loop's default executor, where DNS lookups run.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


def _pool(workers: int, name: str) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"openbits-{name}")


@dataclass(frozen=True)
class Pools:
    #: fdatasync of downloaded bytes (transport/durable.py, transport/syncbatch.py)
    sync: ThreadPoolExecutor = field(default_factory=lambda: _pool(8, "sync"))
    #: splice(2) of large bodies socket -> file (transport/splice.py)
    splice: ThreadPoolExecutor = field(default_factory=lambda: _pool(4, "splice"))
    #: reads of local files: file:// sources, upload fragments, reply data
    reads: ThreadPoolExecutor = field(default_factory=lambda: _pool(4, "reads"))
    #: hashing downloads as they arrive (core/digests.py): one thread per file being verified
    digests: ThreadPoolExecutor = field(default_factory=lambda: _pool(4, "digests"))
    #: PAM conversations (identity/logon.py): slow by design on a wrong password
    pam: ThreadPoolExecutor = field(default_factory=lambda: _pool(4, "pam"))
    #: queries of the store that read (event replays)
    store: ThreadPoolExecutor = field(default_factory=lambda: _pool(2, "store"))
    #: SMB transfers (transport/smb.py): smbprotocol's calls block
    smb: ThreadPoolExecutor = field(default_factory=lambda: _pool(4, "smb"))

    def shutdown(self) -> None:
        """Wait for the work each pool has, then end its threads."""
        for pool in (self.sync, self.splice, self.reads, self.digests, self.pam, self.store, self.smb):
            pool.shutdown(wait=True, cancel_futures=True)
