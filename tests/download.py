"""One download job from start to end, as the tests of servers and proxies run it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from openbits import BitsError, Job, JobState, Manager


def download(m: Manager, url: str, dest: Path, body: bytes, prepare: Callable[[Job], object] = lambda job: None,
             timeout: float = 30) -> tuple[JobState, BitsError | None, str]:
    """A job `prepare`d, then run: its state and error when it settles, and its file's remote name then. A
    TRANSFERRED job is completed and its file must hold `body`; any other is cancelled."""
    job = m.create_job("download")
    prepare(job)
    job.add_file(url, str(dest))
    job.resume()
    state = job.wait(timeout)
    error, remote = job.error, job.files[0].remote_url
    if state == JobState.TRANSFERRED:
        job.complete()
        assert dest.read_bytes() == body
    else:
        job.cancel()
    return state, error, remote
