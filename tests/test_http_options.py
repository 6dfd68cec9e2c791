"""IBackgroundCopyJobHttpOptions2/3 through a real daemon: the HTTP method a job sends."""

from __future__ import annotations

from pathlib import Path

import pytest

from openbits import BitsError, JobPriority, JobState, JobType, Manager

from .servers import faulty as faulty_server
from .servers.faulty import FaultyServer
from .test_cli import Cli, cli  # noqa: F401  (the fixture)


def test_a_job_sends_its_http_method_stays_foreground_and_restarts_on_errors(
        manager: Manager, faulty: FaultyServer, tmp_path: Path) -> None:
    path_qs = "method/post.bin?size=300k&drop=100000&fail=1"
    job = manager.create_job("post", JobType.DOWNLOAD)
    job.add_file(faulty.url(path_qs), tmp_path / "post.bin")
    assert job.http_method == "GET"
    job.http_method = "POST"
    assert (job.http_method, job.priority) == ("POST", JobPriority.FOREGROUND)
    with pytest.raises(BitsError) as refused:
        job.priority = JobPriority.LOW
    assert refused.value.name == "BG_E_INVALID_STATE" and "FOREGROUND" in refused.value.description
    job.resume()
    # the dropped connection would be a transient error; with its own method the job waits in ERROR
    assert job.wait(30) == JobState.ERROR
    assert job.error is not None and job.error.name == "ERROR_INTERNET_CONNECTION_RESET"
    with pytest.raises(BitsError) as started:
        job.http_method = "PUT"
    assert "before the first Resume" in started.value.description
    job.resume()
    assert job.wait(30) == JobState.TRANSFERRED
    job.complete()
    assert (tmp_path / "post.bin").read_bytes() == faulty_server.content(path_qs)
    sent = [r for r in faulty.requests if r.path_qs == "/" + path_qs]
    assert [r.method for r in sent] == ["POST", "POST"] and sent[1].range is None  # from 0 again, no range


@pytest.mark.parametrize("method, why", [("GE T", "one word"), ("CONNECT", "no body"), ("", "one word")])
def test_a_method_that_cannot_download_is_refused(manager: Manager, method: str, why: str) -> None:
    job = manager.create_job("bad method", JobType.DOWNLOAD)
    with pytest.raises(BitsError) as refused:
        job.http_method = method
    assert refused.value.name == "E_INVALIDARG" and why in refused.value.description
    assert job.http_method == "GET" and job.priority == JobPriority.NORMAL


def test_dynamic_content_and_uploads_take_no_http_method(manager: Manager) -> None:
    job = manager.create_job("dynamic", JobType.DOWNLOAD)
    job.dynamic_content = True
    with pytest.raises(BitsError, match="DYNAMIC_CONTENT"):
        job.http_method = "POST"
    with pytest.raises(BitsError) as upload:
        manager.create_job("upload", JobType.UPLOAD).http_method = "PUT"
    assert upload.value.name == "E_NOTIMPL"


def test_sethttpmethod_and_gethttpmethod(cli: Cli) -> None:
    job = cli.ok("create", "verbs").strip()
    assert cli.ok("gethttpmethod", job) == "GET\n"
    cli.ok("sethttpmethod", job, "PROPFIND")
    assert cli.ok("gethttpmethod", job) == "PROPFIND\n"
    assert cli.ok("getpriority", job) == "FOREGROUND\n"
    assert "HTTP method" in cli.ok("info", job)


def test_write_only_custom_headers_are_sent_and_never_shown(manager: Manager, faulty: FaultyServer, cli: Cli,
                                                              tmp_path: Path) -> None:
    job = manager.create_job("secret", JobType.DOWNLOAD)
    job.custom_headers = ["Authorization: Bearer s3cret"]
    job.add_file(faulty.url("secret.bin?size=1k"), tmp_path / "secret.bin")
    cli.ok("makecustomheaderswriteonly", job.id)
    assert job.custom_headers == [] and job.custom_headers_write_only
    shown = cli("getcustomheaders", job.id)
    assert shown.returncode == 1 and "write-only" in shown.stderr and "s3cret" not in shown.stdout + shown.stderr
    assert "s3cret" not in cli.ok("info", "--json", job.id)
    with pytest.raises(BitsError, match="cannot be undone"):
        job.custom_headers_write_only = False
    job.resume()
    assert job.wait(30) == JobState.TRANSFERRED
    sent = [r for r in faulty.requests if r.path_qs == "/secret.bin?size=1k"]
    assert sent and sent[-1].headers["Authorization"] == "Bearer s3cret"
