"""One description of a job's properties, and every side that follows it (model/properties.py).

In-process: no daemon. A property declared with prop() must reach the wire model, the PATCH
body, the store, the event comparison, the Python client and `openbits info` without another edit.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from rich.console import Console

from openbits.cli.render import _SHOWN, job_panel
from openbits.client.sync import Job as ClientJob
from openbits.client.sync import _Setting
from openbits.enums import LENGTH_TO_EOF, JobPriority, JobType, ProxyUsage
from openbits.events.bus import _Seen, _Totals
from openbits.model.job import JOB_PROPERTIES, Job, job_from_record, job_to_record
from openbits.model.jobfile import JobFile
from openbits.schema.models import JobInfo, JobProperties
from openbits.schema.views import job_info, job_json
from openbits.store import SqliteStore


def _job() -> Job:
    job = Job.new("props", JobType.DOWNLOAD, 1000, JobPriority.LOW, "a description")
    job.custom_headers = ["X-A: 1"]
    job.proxy_usage = ProxyUsage.NO_PROXY
    job.max_bandwidth = 12_000
    return job


def test_every_wire_property_is_in_job_info_and_every_settable_one_in_the_patch_body() -> None:
    assert {p.name for p in JOB_PROPERTIES if p.how.wire} <= set(JobInfo.model_fields)
    assert {p.name for p in JOB_PROPERTIES if p.how.settable} == set(JobProperties.model_fields)
    assert not {p.name for p in JOB_PROPERTIES if not p.how.wire} & set(JobInfo.model_fields)


def test_job_info_carries_each_property_by_its_wire_form() -> None:
    job = _job()
    wire = job_info(job, lambda j: (0, "")).model_dump(mode="json")
    assert wire["priority"] == "LOW" and wire["proxy_usage"] == "NO_PROXY"
    assert wire["custom_headers"] == ["X-A: 1"] and wire["max_bandwidth"] == 12_000
    assert JobInfo.model_validate(wire).priority == JobPriority.LOW  # what the client reads back


def test_the_store_keeps_every_property(tmp_path: Path) -> None:
    job = _job()
    record = job_to_record(job)
    again = job_from_record(record, [])
    for p in JOB_PROPERTIES:
        assert getattr(again, p.name) == getattr(job, p.name), p.name
    assert type(again.proxy_usage) is ProxyUsage

    async def save() -> None:
        store = SqliteStore(str(tmp_path / "jobs.db"))
        await store.save_job(job)
        await store.close()

    asyncio.run(save())
    store = SqliteStore(str(tmp_path / "jobs.db"))
    loaded = {j.id: j for j in store.load_jobs()}[job.id]
    asyncio.run(store.close())
    assert all(getattr(loaded, p.name) == getattr(job, p.name) for p in JOB_PROPERTIES)


def test_a_change_of_a_notifying_property_is_seen_by_the_event_bus() -> None:
    job = _job()
    totals = _Totals(job)
    for p in JOB_PROPERTIES:
        before = _Seen.of(job, totals)
        value = getattr(job, p.name)
        changed = (["X-B: 2"] if p.is_list else f"{value}-changed" if isinstance(value, str) or value is None
                   else type(value)(1 - int(value)) if isinstance(value, bool) else value + 1)
        setattr(job, p.name, changed)
        assert (_Seen.of(job, totals) != before) == p.how.notifies, p.name
        setattr(job, p.name, value)
    job.custom_headers.append("X-C: 3")  # changed in place
    assert _Seen.of(job, _Totals(job)) != before


def test_the_client_has_an_attribute_for_each_client_property() -> None:
    for p in JOB_PROPERTIES:
        has = isinstance(vars(ClientJob).get(p.name), _Setting)
        assert has == p.how.client_attribute, p.name


def test_info_shows_every_labelled_property() -> None:
    assert {p.how.shown_as for p in JOB_PROPERTIES} <= set(_SHOWN)
    console = Console(width=200, record=True)
    console.print(job_panel(job_info(_job(), lambda j: (0, "")), None))
    text = console.export_text()
    for p in JOB_PROPERTIES:
        if p.how.label:
            assert p.how.label in text, p.how.label
    assert "12.0 kB/s" in text and "X-A: 1" in text and "LOW" in text


def test_the_answer_written_with_its_files_by_orjson_is_the_wire_model_s_document() -> None:
    """job_json writes the files without models; the document must be JobInfo's, file fields included."""
    job = _job()
    job.files = [
        JobFile("http://h/a", "/d/a", "/d/.a.1.bits-part", 4096, 4096, 4096, True, {"size": 4096},
                ["Server: nginx", "ETag: \"1\""], checksums=["sha256:" + "0" * 64], validation_state=True),
        JobFile("http://h/b", "/d/b", "/d/.b.2.bits-part", ranges=[[0, 100], [2000, LENGTH_TO_EOF]],
                mirrors=["http://h/b", "http://m/b"]),
        JobFile("http://h/c", "/d/c", "/d/.c.3.bits-part", filled=[[0, 65536]], requested=[[65536, 10]]),
    ]
    explain = lambda j: (0, "")  # noqa: E731
    written = json.loads(job_json(job, explain))
    assert written == json.loads(job_info(job, explain).model_dump_json())
    assert written["files"][0]["response_headers"] is None  # only GET of the job shows them
    with_headers = json.loads(job_json(job, explain, headers=True))
    assert with_headers == json.loads(job_info(job, explain, headers=True).model_dump_json())
    assert with_headers["files"][0]["response_headers"] == ["Server: nginx", "ETag: \"1\""]
    assert JobInfo.model_validate(written).files[2].filled_ranges[0].length == 65536
