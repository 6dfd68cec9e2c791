"""Transfer errors through the real daemon: what retries, what stops, and why (handling-errors.md)."""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path

import pytest

from openbits import ErrorContext, Job, JobState, JobType, Manager

from .servers.faulty import FaultyServer, sha256
from .waiting import wait_state, wait_until


def unique(path_qs: str) -> str:
    """A URL path no other test uses, so the session-wide server's request log is ours alone."""
    return f"{uuid.uuid4().hex}/{path_qs}"


def run_job(manager: Manager, url: str, dest: Path, **properties: object) -> Job:
    job = manager.create_job("retry test", JobType.DOWNLOAD)
    job.add_file(url, dest)
    job.set_properties(minimum_retry_delay=1, **properties)
    job.resume()
    return job


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def requests_for(faulty: FaultyServer, path_qs: str) -> list:  # type: ignore[type-arg]
    return [r for r in faulty.requests if r.path_qs.lstrip("/").startswith(path_qs.split("?")[0])]


@pytest.mark.parametrize("status", [500, 503, 408, 429])
def test_transient_status_retries_after_minimum_delay(manager: Manager, faulty: FaultyServer, tmp_path: Path,
                                                      status: int) -> None:
    path = unique(f"f.bin?size=10k&status={status}&fail=1")
    job = run_job(manager, faulty.url(path), tmp_path / "f.bin")
    wait_state(job, JobState.TRANSIENT_ERROR)
    error = job.error
    assert error is not None and error.name == f"BG_E_HTTP_ERROR_{status}" and error.http_status == status
    assert job.wait(30) == JobState.TRANSFERRED
    assert job.info().error_count == 1
    job.complete()
    assert sha256_file(tmp_path / "f.bin") == sha256(path)


def test_retry_after_longer_than_minimum_delay_is_honoured(manager: Manager, faulty: FaultyServer,
                                                           tmp_path: Path) -> None:
    path = unique("f.bin?size=10k&status=503&retry_after=3&fail=1")
    job = run_job(manager, faulty.url(path), tmp_path / "f.bin")
    wait_state(job, JobState.TRANSIENT_ERROR)
    failed_at = time.monotonic()
    assert job.wait(30) == JobState.TRANSFERRED
    assert time.monotonic() - failed_at >= 2.5, "retried before the server's Retry-After"
    assert len(requests_for(faulty, path)) == 2


@pytest.mark.parametrize(("query", "name", "http_status"), [
    ("status=404", "BG_E_HTTP_ERROR_404", 404),
    ("status=410", "BG_E_HTTP_ERROR_410", 410),
    ("status=401", "BG_E_HTTP_ERROR_401", 401),
    ("redirect=loop", "ERROR_HTTP_REDIRECT_FAILED", None),
])
def test_permanent_errors_go_to_error(manager: Manager, faulty: FaultyServer, tmp_path: Path, query: str,
                                      name: str, http_status: int | None) -> None:
    job = run_job(manager, faulty.url(unique(f"f.bin?{query}")), tmp_path / "f.bin")
    assert job.wait(30) == JobState.ERROR
    error = job.error
    assert error is not None
    assert (error.name, error.context, error.http_status) == (name, ErrorContext.REMOTE_FILE, http_status)
    assert "f.bin" in error.description


def test_connection_refused_is_transient(manager: Manager, tmp_path: Path) -> None:
    job = run_job(manager, "http://127.0.0.1:9/nothing-listens", tmp_path / "f.bin")
    wait_state(job, JobState.TRANSIENT_ERROR)
    error = job.error
    assert error is not None and error.context == ErrorContext.GENERAL_TRANSPORT
    job.cancel()


def test_dropped_connection_resumes_with_a_range_request(manager: Manager, faulty: FaultyServer,
                                                         tmp_path: Path) -> None:
    path = unique("f.bin?size=24m&drop=20000000&fail=1")
    job = run_job(manager, faulty.url(path), tmp_path / "f.bin")
    assert job.wait(60) == JobState.TRANSFERRED
    first, second = requests_for(faulty, path)
    assert first.range is None
    assert second.range is not None and second.range.startswith("bytes=") and second.range != "bytes=0-"
    assert second.if_range, "a resumed request is validated with If-Range"
    job.complete()
    assert sha256_file(tmp_path / "f.bin") == sha256(path)


def test_changed_remote_file_restarts_from_zero(manager: Manager, faulty: FaultyServer, tmp_path: Path) -> None:
    path = unique("f.bin?size=24m&drop=20000000&changing=1&fail=1")
    job = run_job(manager, faulty.url(path), tmp_path / "f.bin")
    assert job.wait(60) == JobState.TRANSFERRED
    second = requests_for(faulty, path)[1]
    assert second.status == 200, "If-Range with the old validator gets the whole new file"
    job.complete()
    assert sha256_file(tmp_path / "f.bin") == sha256(path)


@pytest.mark.parametrize("query", ["ranges=0&drop=300000&fail=1", "chunked=1&drop=300000&fail=1",
                                   "bad_range=1&drop=300000&fail=1", "etag=none&lastmod=0&drop=300000&fail=1"])
def test_unresumable_responses_restart_and_finish(manager: Manager, faulty: FaultyServer, tmp_path: Path,
                                                  query: str) -> None:
    path = unique(f"f.bin?size=1m&{query}")
    job = run_job(manager, faulty.url(path), tmp_path / "f.bin")
    assert job.wait(60) == JobState.TRANSFERRED, job.error
    job.complete()
    assert sha256_file(tmp_path / "f.bin") == sha256(path)


def test_dynamic_content_without_size(manager: Manager, faulty: FaultyServer, tmp_path: Path) -> None:
    path = unique("f.bin?size=300k&chunked=1&ranges=0")
    job = run_job(manager, faulty.url(path), tmp_path / "f.bin", dynamic_content=True)
    assert job.wait(30) == JobState.TRANSFERRED
    assert job.progress.bytes_total == 300 * 1024
    job.complete()
    assert sha256_file(tmp_path / "f.bin") == sha256(path)


def test_no_progress_timeout_turns_transient_into_error(manager: Manager, faulty: FaultyServer,
                                                        tmp_path: Path) -> None:
    job = run_job(manager, faulty.url(unique("f.bin?status=503")), tmp_path / "f.bin", no_progress_timeout=2)
    assert job.wait(30) == JobState.ERROR
    error = job.error
    assert error is not None and error.name == "BG_E_NO_PROGRESS" and error.http_status == 503


def test_max_download_time(manager: Manager, faulty: FaultyServer, tmp_path: Path) -> None:
    job = run_job(manager, faulty.url(unique("f.bin?size=1m&trickle=50")), tmp_path / "f.bin", max_download_time=1)
    assert job.wait(30) == JobState.ERROR
    error = job.error
    assert error is not None and error.name == "BG_E_MAXDOWNLOAD_TIMEOUT"


def test_custom_headers_sent_on_every_request(manager: Manager, faulty: FaultyServer, tmp_path: Path) -> None:
    path = unique("f.bin?size=10k&status=503&fail=1")
    job = run_job(manager, faulty.url(path), tmp_path / "f.bin", custom_headers=["X-Openbits-Test: yes"])
    assert job.wait(30) == JobState.TRANSFERRED
    sent = requests_for(faulty, path)
    assert len(sent) == 2 and all(r.headers.get("X-Openbits-Test") == "yes" for r in sent)



def test_unknown_size_is_shown_as_unknown_until_known(manager: Manager, faulty: FaultyServer,
                                                      tmp_path: Path) -> None:
    path = unique("f.bin?size=200k&chunked=1&trickle=20")
    job = run_job(manager, faulty.url(path), tmp_path / "f.bin")

    def started() -> bool:
        assert job.state not in (JobState.ERROR, JobState.TRANSFERRED)
        return job.progress.bytes_transferred > 0

    wait_until(started, 60, "the first bytes", interval=0.02)
    assert job.progress.bytes_total == -1 and job.files[0].progress.bytes_total == -1
    assert job.wait(60) == JobState.TRANSFERRED
    assert job.progress.bytes_total == 200 * 1024
