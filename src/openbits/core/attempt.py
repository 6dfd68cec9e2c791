"""One attempt of a job's transfer, as both runners make it: states, errors, time limits, the final commit.

A runner supplies `transfer` (move the bytes of the job's files); the attempt turns its outcome
into BITS's states - TRANSFERRED, TRANSIENT_ERROR with its retry time, or ERROR - and makes that
durable even if the scheduler cancels the turn meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from ..enums import ErrorContext, JobState
from ..errors import BitsError, ErrorCode, TransferError
from ..model.job import Job
from .network import needs_network, network_available
from .service import JobService


async def run_attempt(service: JobService, job: Job, transfer: Callable[[], Awaitable[None]]) -> None:
    started = time.monotonic()
    try:
        budget = job.max_download_time - job.active_seconds if job.max_download_time else None
        if budget is not None and budget <= 0:
            raise _max_download_time_error(job)
        try:
            async with asyncio.timeout(budget):
                await transfer()
        except TimeoutError:
            raise _max_download_time_error(job) from None
    except TransferError as exc:
        if exc.transient and _network_lost(job):
            exc = TransferError(ErrorCode.BG_E_NETWORK_DISCONNECTED,
                                "no network connection; the job continues when one comes back",
                                ErrorContext.GENERAL_TRANSPORT, transient=True)
            job.last_progress_time = time.time()  # waiting for a network is not a lack of progress
        # SetHttpMethod: an error that would be resumable is ERROR, and Resume starts the files again
        job.set_error(exc, transient=exc.transient and not job.own_method, retry_after=exc.retry_after)
    except BitsError as exc:
        job.set_error(exc, transient=False)
    else:
        if job.current_file is not None:  # an on-demand job has what was asked for (RequestFileRanges)
            job.state = JobState.SUSPENDED
        else:
            job.state = JobState.TRANSFERRED
            job.transfer_completion_time = time.time()
        job.error = None
        job.touch()
    finally:
        job.active_seconds += time.monotonic() - started
    # Shielded: the outcome is in memory already (TRANSIENT_ERROR, say), and a scheduling pass that sees
    # it stops this turn; cancelled halfway, the commit left a job in TRANSIENT_ERROR that the scheduler
    # never heard of, and so never retried.
    await asyncio.shield(service.commit(job))


def _network_lost(job: Job) -> bool:
    return not network_available() and any(needs_network(f.remote_url) for f in job.files if not f.completed)


def _max_download_time_error(job: Job) -> BitsError:
    return BitsError(
        ErrorCode.BG_E_MAXDOWNLOAD_TIMEOUT,
        f"the job spent its maximum download time of {job.max_download_time} s; raise it with "
        "setmaxdownloadtime and resume the job",
        ErrorContext.GENERAL_TRANSPORT,
    )
