"""Jobs of many small files: after the first file proves small, the runner fetches fresh plain-http
files in batches (core/runner.py, `fastget.FastClient.fetch_all`). Whatever a batch cannot take - a
redirect, a file too big for it, a chunked body, a broken connection, an error status - goes the
per-file way, so the results and errors are exactly those of one file at a time.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path

from openbits import ErrorContext, JobState, JobType, Manager
from openbits.core.runner import THROTTLED_BATCH_FILES

from .daemon import DaemonProcess
from .servers.faulty import FaultyServer, sha256
from .waiting import wait_until

_unique = itertools.count()


def _paths(count: int, odd: dict[int, str]) -> list[str]:
    """`count` distinct files of 4 KiB unless `odd` gives a file other query parameters."""
    run = next(_unique)
    return [f"/small/{run}/{i}.bin?{odd.get(i, 'size=4k')}" for i in range(count)]


def test_a_batch_hands_what_it_cannot_take_to_the_per_file_way(manager: Manager, faulty: FaultyServer,
                                                               tmp_path: Path) -> None:
    odd = {5: "size=4k&redirect=1", 9: "size=300k", 14: "size=4k&chunked=1", 20: "size=4k&drop=100&fail=1",
           27: "size=4k&etag=none&lastmod=0", 33: "size=4k&close=1"}  # 33: requests pipelined behind it go again
    paths = _paths(40, odd)
    job = manager.create_job("many small", JobType.DOWNLOAD)
    job.add_files([(faulty.url(p), tmp_path / f"{i}.bin") for i, p in enumerate(paths)])
    job.resume()
    assert job.wait(60) == JobState.TRANSFERRED, job.error
    progress = job.progress
    assert (progress.files_transferred, progress.files_total) == (40, 40)
    assert all(f.completed and f.progress.bytes_transferred == f.progress.bytes_total for f in job.files)
    finished = []
    for event in job.events():  # validated against the wire model by the client
        if event.kind == "file_transferred":
            assert event.file is not None and event.file.completed
            finished.append((event.file_index, event.file.local_path))
        if event.kind == "job_transferred":
            break
    assert finished == [(i, str(tmp_path / f"{i}.bin")) for i in range(40)], "one event per file, in order"
    job.complete()
    assert sorted(os.listdir(tmp_path)) == sorted(f"{i}.bin" for i in range(40)), "no temporary file is left"
    for i, p in enumerate(paths):
        assert hashlib.sha256((tmp_path / f"{i}.bin").read_bytes()).hexdigest() == sha256(p), p


def test_an_error_in_a_batch_stops_the_job_at_that_file(manager: Manager, faulty: FaultyServer,
                                                        tmp_path: Path) -> None:
    paths = _paths(30, {12: "size=4k&status=404"})
    job = manager.create_job("one missing", JobType.DOWNLOAD)
    job.add_files([(faulty.url(p), tmp_path / f"{i}.bin") for i, p in enumerate(paths)])
    job.resume()
    assert job.wait(60) == JobState.ERROR
    error = job.error
    assert error is not None
    assert (error.name, error.context, error.http_status) == ("BG_E_HTTP_ERROR_404", ErrorContext.REMOTE_FILE, 404)
    assert "12.bin" in error.description
    assert [f.completed for f in job.files] == [True] * 12 + [False] * 18, "files complete in order, up to the error"
    job.complete()  # Complete on ERROR keeps the finished files and removes every temporary file
    assert sorted(os.listdir(tmp_path)) == sorted(f"{i}.bin" for i in range(12))


def test_a_batch_job_survives_suspend_and_resume(manager: Manager, faulty: FaultyServer, tmp_path: Path) -> None:
    paths = _paths(200, {i: "size=8k&trickle=5" for i in range(0, 200, 7)})
    job = manager.create_job("suspended midway", JobType.DOWNLOAD)
    job.add_files([(faulty.url(p), tmp_path / f"{i}.bin") for i, p in enumerate(paths)])
    job.resume()
    job.suspend()
    job.resume()
    assert job.wait(60) == JobState.TRANSFERRED, job.error
    job.complete()
    assert len(os.listdir(tmp_path)) == 200
    for i, p in enumerate(paths):
        assert hashlib.sha256((tmp_path / f"{i}.bin").read_bytes()).hexdigest() == sha256(p), p


def test_kill_9_mid_batch_keeps_every_completed_file(daemon: DaemonProcess, faulty: FaultyServer,
                                                     tmp_path: Path) -> None:
    """Files reported completed are on disk and never fetched again; a throttled batch runs no further
    ahead of its cap than the batch in flight; the rest start over after the restart."""
    paths = _paths(200, {})
    with daemon.manager() as manager:
        job = manager.create_job("crash in a batch", JobType.DOWNLOAD)
        job.add_files([(faulty.url(p), tmp_path / f"{i}.bin") for i, p in enumerate(paths)])
        job.set_properties(max_bandwidth=100_000)  # ~24 files/s: caught mid-way
        job.resume()
        done = wait_until(lambda: (n := job.progress.files_transferred) >= 40 and n, 30, "progress", interval=0.02)
        job_id = job.id
    daemon.kill9()
    asked = len({r.path_qs for r in faulty.requests} & set(paths))
    assert asked <= done + 2 * THROTTLED_BATCH_FILES + 1, f"{asked} files asked for at the cap, {done} done"
    daemon.start()
    with daemon.manager() as manager:
        job = manager.get_job(job_id)
        assert all(f.completed for f in job.files[:done])
        job.set_properties(max_bandwidth=0)
        assert job.wait(60) == JobState.TRANSFERRED, job.error
        job.complete()
    for i in range(done):
        assert sum(1 for r in faulty.requests if r.path_qs == paths[i]) == 1, f"file {i} was fetched again"
    for i, p in enumerate(paths):
        assert hashlib.sha256((tmp_path / f"{i}.bin").read_bytes()).hexdigest() == sha256(p), p
