"""The BITS job state machine (model/job.py) on its own: every transition and every refusal, in memory.

These are the rules the daemon tests reach through the API; here each is one call on a Job, so a change
to the state machine is answered in milliseconds (`make test-fast`).
"""

from __future__ import annotations

import time

import pytest

from openbits.enums import ErrorContext, JobPriority, JobState, JobType
from openbits.errors import BitsError, ErrorCode
from openbits.model.job import Job

URL = "https://example.test/f.bin"
MAX_FILES = 200
ALL_STATES = list(JobState)
FINAL_STATES = [state for state in JobState if state.is_final]
ACTION_STATES = [JobState.QUEUED, JobState.CONNECTING, JobState.TRANSFERRING]


def new_job(job_type: JobType = JobType.DOWNLOAD, files: int = 0) -> Job:
    job = Job.new("job", job_type, 1000, JobPriority.NORMAL, "")
    if files:
        job.add_files([(URL, f"/tmp/out/{i}.bin") for i in range(files)], MAX_FILES)
    return job


def refused(call: object, code: ErrorCode, *args: object) -> BitsError:
    with pytest.raises(BitsError) as info:
        call(*args)  # type: ignore[operator]
    assert info.value.code == code, info.value
    return info.value


def in_state(state: JobState, job_type: JobType = JobType.DOWNLOAD) -> Job:
    job = new_job(job_type, files=1)
    job.state = state
    return job


# ---------------------------------------------------------------- a new job, Resume, Suspend, Cancel


def test_a_new_job_is_suspended_and_empty() -> None:
    job = new_job()
    assert job.state == JobState.SUSPENDED and job.files == [] and job.error is None and job.error_count == 0


def test_resume_of_an_empty_job_is_bg_e_empty() -> None:
    job = new_job()
    error = refused(job.resume, ErrorCode.BG_E_EMPTY)
    assert "add a file" in error.description
    assert job.state == JobState.SUSPENDED


@pytest.mark.parametrize("state", [JobState.SUSPENDED, JobState.ERROR, JobState.TRANSIENT_ERROR])
def test_resume_queues_a_stopped_job_and_clears_its_wait(state: JobState) -> None:
    job = in_state(state)
    job.error = BitsError(ErrorCode.E_FAIL, "before").to_dict()
    job.retry_at = time.time() + 600
    job.last_progress_time = 0.0
    job.resume()
    assert job.state == JobState.QUEUED
    assert job.error is None and job.retry_at == 0.0
    assert job.last_progress_time > 0  # the no-progress clock starts again


def test_resume_of_a_job_whose_files_are_all_done_is_transferred() -> None:
    job = in_state(JobState.SUSPENDED)
    job.files[0].completed = True
    job.resume()
    assert job.state == JobState.TRANSFERRED


@pytest.mark.parametrize("state", [*ACTION_STATES, JobState.TRANSFERRED])
def test_resume_leaves_a_job_that_is_not_stopped_as_it_is(state: JobState) -> None:
    job = in_state(state)
    job.resume()
    assert job.state == state


@pytest.mark.parametrize("state", [s for s in ALL_STATES if not s.is_final])
def test_suspend_and_cancel_work_in_every_state_but_the_final_ones(state: JobState) -> None:
    job = in_state(state)
    job.suspend()
    assert job.state == JobState.SUSPENDED
    job = in_state(state)
    job.cancel()
    assert job.state == JobState.CANCELLED


def test_every_change_of_state_touches_the_modification_time() -> None:
    job = in_state(JobState.SUSPENDED)
    job.modification_time = 0.0
    job.resume()
    assert job.modification_time > 0


# ---------------------------------------------------------------- Complete


@pytest.mark.parametrize("state", [JobState.SUSPENDED, *ACTION_STATES, JobState.TRANSIENT_ERROR])
def test_complete_early_keeps_only_the_whole_files_of_a_download(state: JobState) -> None:
    """Complete before TRANSFERRED (issue 18): the whole files become the user's, the job is ACKNOWLEDGED."""
    job = in_state(state)
    assert job.complete() == []
    assert job.state == JobState.ACKNOWLEDGED


@pytest.mark.parametrize("state", [JobState.SUSPENDED, *ACTION_STATES, JobState.TRANSIENT_ERROR, JobState.ERROR])
def test_complete_of_an_upload_outside_transferred_is_refused(state: JobState) -> None:
    job = in_state(state, JobType.UPLOAD)
    error = refused(job.complete, ErrorCode.BG_E_INVALID_STATE)
    assert state.name in error.description and "TRANSFERRED" in error.description
    assert job.state == state


def test_complete_of_a_transferred_download_acknowledges_it_and_hands_over_its_files() -> None:
    job = in_state(JobState.TRANSFERRED)
    job.files[0].completed = True
    assert job.complete() == job.files
    assert job.state == JobState.ACKNOWLEDGED


def test_complete_of_a_failed_download_keeps_only_the_finished_files() -> None:
    job = new_job(files=2)
    job.files[0].completed = True
    job.state = JobState.ERROR
    assert job.complete() == [job.files[0]]
    assert job.state == JobState.ACKNOWLEDGED


@pytest.mark.parametrize("job_type", [JobType.UPLOAD, JobType.UPLOAD_REPLY])
def test_an_upload_completes_only_when_transferred(job_type: JobType) -> None:
    failed = in_state(JobState.ERROR, job_type)
    refused(failed.complete, ErrorCode.BG_E_INVALID_STATE)
    done = in_state(JobState.TRANSFERRED, job_type)
    done.complete()
    assert done.state == JobState.ACKNOWLEDGED


# ---------------------------------------------------------------- final states


@pytest.mark.parametrize("state", FINAL_STATES)
@pytest.mark.parametrize("call", ["resume", "suspend", "cancel", "complete", "check_modifiable", "add_files",
                                  "check_reply_file_name"])
def test_a_final_state_refuses_every_call(state: JobState, call: str) -> None:
    job = in_state(state, JobType.UPLOAD_REPLY if call == "check_reply_file_name" else JobType.DOWNLOAD)
    args: tuple[object, ...] = ([(URL, "/tmp/out/more.bin")], MAX_FILES) if call == "add_files" else ()
    error = refused(getattr(job, call), ErrorCode.BG_E_INVALID_STATE, *args)
    assert state.name in error.description and error.context == ErrorContext.GENERAL_QUEUE_MANAGER
    assert job.state == state and len(job.files) == 1


# ---------------------------------------------------------------- AddFile


def test_add_files_up_to_the_limit_and_not_one_more() -> None:
    job = new_job()
    job.add_files([(URL, f"/tmp/out/{i}.bin") for i in range(3)], 4)
    job.add_files([(URL, "/tmp/out/3.bin")], 4)
    error = refused(job.add_files, ErrorCode.BG_E_TOO_MANY_FILES_IN_JOB, [(URL, "/tmp/out/4.bin")], 4)
    assert "at most 4 files" in error.description
    assert len(job.files) == 4


def test_files_get_temporary_names_of_their_own_beside_the_destination() -> None:
    job = new_job(files=3)
    temps = [f.temp_path for f in job.files]
    assert len(set(temps)) == 3
    assert all(t.startswith("/tmp/out/.") and t.endswith(".bits-part") for t in temps)
    assert job.temp_paths() == temps


@pytest.mark.parametrize("job_type", [JobType.UPLOAD, JobType.UPLOAD_REPLY])
def test_an_upload_job_carries_exactly_one_file(job_type: JobType) -> None:
    job = new_job(job_type)
    refused(job.add_files, ErrorCode.BG_E_TOO_MANY_FILES, [(URL, "/tmp/a"), (URL, "/tmp/b")], MAX_FILES)
    job.add_files([(URL, "/tmp/a")], MAX_FILES)
    refused(job.add_files, ErrorCode.BG_E_TOO_MANY_FILES, [(URL, "/tmp/b")], MAX_FILES)
    assert len(job.files) == 1


@pytest.mark.parametrize(("job_type", "url", "local", "code", "context"), [
    (JobType.DOWNLOAD, "ftp://example.test/f", "/tmp/f", ErrorCode.BG_E_PROTOCOL_NOT_AVAILABLE, ErrorContext.REMOTE_FILE),
    (JobType.DOWNLOAD, "http:///f", "/tmp/f", ErrorCode.E_INVALIDARG, ErrorContext.REMOTE_FILE),
    (JobType.DOWNLOAD, "file:relative", "/tmp/f", ErrorCode.E_INVALIDARG, ErrorContext.REMOTE_FILE),
    (JobType.DOWNLOAD, URL, "relative/f", ErrorCode.E_INVALIDARG, ErrorContext.LOCAL_FILE),
    (JobType.DOWNLOAD, URL, "/tmp/../etc/f", ErrorCode.E_INVALIDARG, ErrorContext.LOCAL_FILE),
    (JobType.DOWNLOAD, URL, "/tmp/dir/", ErrorCode.E_INVALIDARG, ErrorContext.LOCAL_FILE),
    (JobType.UPLOAD, "file:///srv/f", "/tmp/f", ErrorCode.BG_E_PROTOCOL_NOT_AVAILABLE, ErrorContext.REMOTE_FILE),
])
def test_bad_names_are_refused_and_nothing_is_added(job_type: JobType, url: str, local: str, code: ErrorCode,
                                                    context: ErrorContext) -> None:
    job = new_job(job_type)
    with pytest.raises(BitsError) as info:
        # a good name before the bad one is not added either
        job.add_files(([(URL, "/tmp/good")] if job_type == JobType.DOWNLOAD else []) + [(url, local)], MAX_FILES)
    assert (info.value.code, info.value.context) == (code, context), info.value
    assert job.files == []


def test_adding_files_to_a_transferred_job_needs_a_resume_again() -> None:
    job = in_state(JobState.TRANSFERRED)
    job.files[0].completed = True
    job.add_files([(URL, "/tmp/out/more.bin")], MAX_FILES)
    assert job.state == JobState.SUSPENDED
    job.resume()
    assert job.state == JobState.QUEUED and job.current_file is job.files[1]


# ---------------------------------------------------------------- errors from the transfer


def test_a_transient_error_waits_the_minimum_retry_delay() -> None:
    job = in_state(JobState.TRANSFERRING)
    job.minimum_retry_delay = 60
    before = time.time()
    job.set_error(BitsError(ErrorCode.http(503), "busy", ErrorContext.REMOTE_FILE), transient=True)
    assert job.state == JobState.TRANSIENT_ERROR
    assert before + 60 <= job.retry_at <= time.time() + 60
    assert job.error is not None and job.error["code"] == ErrorCode.http(503)
    assert job.error_count == 1


def test_a_longer_retry_after_of_the_server_wins() -> None:
    job = in_state(JobState.TRANSFERRING)
    job.minimum_retry_delay = 5
    before = time.time()
    job.set_error(BitsError(ErrorCode.http(503), "busy"), transient=True, retry_after=120)
    assert before + 120 <= job.retry_at <= time.time() + 120


def test_a_transient_error_past_the_no_progress_timeout_is_bg_e_no_progress() -> None:
    job = in_state(JobState.TRANSFERRING)
    job.no_progress_timeout = 30
    job.last_progress_time = time.time() - 31
    job.set_error(BitsError(ErrorCode.http(503), "busy", ErrorContext.REMOTE_FILE, 503), transient=True)
    assert job.state == JobState.ERROR
    assert job.error is not None
    assert job.error["code"] == ErrorCode.BG_E_NO_PROGRESS
    assert "no progress for 30 s" in job.error["description"] and "busy" in job.error["description"]
    assert (job.error["context"], job.error["http_status"]) == ("REMOTE_FILE", 503)  # of the last error


def test_a_fatal_error_stops_the_job_for_its_owner() -> None:
    job = in_state(JobState.TRANSFERRING)
    job.set_error(BitsError(ErrorCode.http(404), "gone", ErrorContext.REMOTE_FILE), transient=False)
    assert job.state == JobState.ERROR
    assert job.error is not None and job.error["code"] == ErrorCode.http(404)
    assert job.error_count == 1
    job.resume()  # the owner's answer: try again
    assert job.state == JobState.QUEUED and job.error is None and job.error_count == 1


# ---------------------------------------------------------------- upload-reply


def test_only_upload_reply_jobs_have_a_reply_file() -> None:
    refused(new_job().check_reply_file_name, ErrorCode.E_NOTIMPL)
    job = new_job(JobType.UPLOAD_REPLY)
    job.check_reply_file_name()
    job.reply_bytes_total = 10  # the reply began to arrive
    refused(job.check_reply_file_name, ErrorCode.BG_E_INVALID_STATE)
