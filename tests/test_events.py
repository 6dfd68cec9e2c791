"""Events and notifications against a real daemon: order, durability across kill -9, reconnection, callbacks,
the notify command line, DISABLE and the minimum notification interval."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

from openbits import AsyncManager, JobState, Manager, NotifyFlags
from openbits.schema.models import EventInfo

from .daemon import DaemonProcess
from .waiting import wait_until


def _history(manager: Manager, job_id: str, since: int = 0) -> list[EventInfo]:
    return [e for e in manager.events(since, job_id, follow_live=False) if e is not None]


def _source(tmp_path: Path, body: bytes = b"payload\n") -> str:
    src = tmp_path / "src.bin"
    src.write_bytes(body)
    return src.as_uri()


class Recorder:
    """A callback interface that records its calls; `fail` makes the named method raise (E_FAIL) that many times."""

    def __init__(self, fail: dict[str, int] | None = None, complete: bool = True) -> None:
        self.calls: list[tuple[str, object]] = []
        self.fail = dict(fail or {})
        self.complete = complete
        self.done = threading.Event()

    def _note(self, name: str, detail: object = None) -> None:
        self.calls.append((name, detail))
        if self.fail.get(name, 0) > 0:
            self.fail[name] -= 1
            raise RuntimeError(f"{name} fails on purpose")

    def job_transferred(self, job) -> None:  # type: ignore[no-untyped-def]
        self._note("job_transferred")
        if self.complete:
            job.complete()
        self.done.set()

    def job_error(self, job, error) -> None:  # type: ignore[no-untyped-def]
        self._note("job_error", error.name)
        job.cancel()
        self.done.set()

    def job_modification(self, job, reserved) -> None:  # type: ignore[no-untyped-def]
        self._note("job_modification")

    def file_transferred(self, job, file) -> None:  # type: ignore[no-untyped-def]
        self._note("file_transferred", file.local_path)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


def test_seed_pattern_sync_and_event_order_of_a_full_life(manager: Manager, tmp_path: Path) -> None:
    callbacks = Recorder()
    job = manager.create_job("seed")
    job.set_notify_interface(callbacks)
    assert job.notify_flags == NotifyFlags.JOB_TRANSFERRED | NotifyFlags.JOB_ERROR  # BITS's default
    job.notify_flags = NotifyFlags.JOB_TRANSFERRED | NotifyFlags.JOB_ERROR | NotifyFlags.FILE_TRANSFERRED
    job.add_file(_source(tmp_path), tmp_path / "a")
    job.resume()
    if not callbacks.done.wait(15 * 60):  # the seed: a quit signal with a 15-minute limit, cancel on timeout
        job.cancel()
    assert callbacks.names() == ["file_transferred", "job_transferred"]
    assert (tmp_path / "a").read_bytes() == b"payload\n"
    wait_until(lambda: _history(manager, job.id)[-1].state == JobState.ACKNOWLEDGED)
    history = _history(manager, job.id)
    assert [e.seq for e in history] == sorted({e.seq for e in history})
    kinds = [(e.kind, e.state.name) for e in history]
    assert kinds[0] == ("job_modification", "SUSPENDED")
    assert ("job_modification", "QUEUED") in kinds
    life = [k for k in kinds if k[0] != "job_modification" or k[1] in ("QUEUED", "ACKNOWLEDGED")]
    assert life == [("job_modification", "QUEUED"), ("file_transferred", "TRANSFERRING"),
                    ("job_transferred", "TRANSFERRED"), ("job_modification", "ACKNOWLEDGED")], kinds
    assert [e.notify for e in history if e.kind != "job_modification"] == [True, True]


async def test_seed_pattern_asyncio_stream_and_awaitable_callbacks(daemon: DaemonProcess, tmp_path: Path) -> None:
    async with AsyncManager(daemon.socket, autostart=False) as manager:
        seen: list[str] = []
        quit_signal = asyncio.Event()

        class Notify:
            async def job_transferred(self, job) -> None:  # type: ignore[no-untyped-def]
                seen.append((await job.complete()).state.name)
                quit_signal.set()

            async def job_error(self, job, error) -> None:  # type: ignore[no-untyped-def]
                await job.cancel()
                quit_signal.set()

        job = await manager.create_job("seed-async")
        await job.set_notify_interface(Notify())
        await job.add_file(_source(tmp_path), tmp_path / "b")
        await job.resume()
        try:
            async with asyncio.timeout(15 * 60):
                await quit_signal.wait()
        except TimeoutError:
            await job.cancel()
        assert seen == ["ACKNOWLEDGED"]

        other = await manager.create_job("stream")
        await other.add_file(_source(tmp_path), tmp_path / "c")
        await other.resume()
        async with asyncio.timeout(30):
            async for event in other.events():
                if event.kind == "job_transferred":
                    await other.complete()
                elif event.kind == "job_error":
                    await other.cancel()
        assert event.state == JobState.ACKNOWLEDGED and (tmp_path / "c").exists()


def test_no_loss_across_kill9_and_a_callback_registered_before_the_crash_fires(daemon: DaemonProcess,
                                                                               tmp_path: Path) -> None:
    callbacks = Recorder()
    with daemon.manager() as manager:
        job = manager.create_job("crash")
        job.minimum_notification_interval_ms = 0  # every change its own event, durable with the change
        for i in range(30):
            job.description = f"change {i}"
        job.add_file(_source(tmp_path), tmp_path / "d")
        job.set_notify_interface(callbacks)
        before = _history(manager, job.id)
        daemon.kill9()
        daemon.start()
        after = _history(manager, job.id)
        assert [e.model_dump() for e in after] == [e.model_dump() for e in before]
        assert sum(e.kind == "job_modification" for e in after) >= 31  # created + every acknowledged change
        with daemon.manager() as other:
            other.get_job(job.id).resume()
        assert callbacks.done.wait(20), callbacks.calls
        assert callbacks.names() == ["job_transferred"]
        assert job.state == JobState.ACKNOWLEDGED
        assert max(e.seq for e in _history(manager, job.id)) > max(e.seq for e in before)  # seq keeps rising


def test_reconnect_with_a_sequence_number_gets_exactly_what_was_missed(manager: Manager, tmp_path: Path) -> None:
    job = manager.create_job("resume-me")
    job.minimum_notification_interval_ms = 0
    for i in range(10):
        job.description = str(i)
    everything = _history(manager, job.id)
    middle = everything[4].seq
    assert [e.seq for e in _history(manager, job.id, since=middle)] == [e.seq for e in everything[5:]]
    live = manager.events(since=middle, job=job.id)
    assert [next(live).seq for _ in everything[5:]] == [e.seq for e in everything[5:]]  # replay, then live
    job.description = "new"
    assert next(live).kind == "job_modification"
    live.close()


def test_a_raising_callback_runs_the_command_line_once(manager: Manager, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    callbacks = Recorder(fail={"job_transferred": 99}, complete=False)
    job = manager.create_job("fallback")
    job.minimum_retry_delay = 1
    job.set_notify_cmdline("/bin/sh", ["-c", f"echo ran >> {ran}"])
    job.set_notify_interface(callbacks)
    job.add_file(_source(tmp_path), tmp_path / "e")
    job.resume()
    wait_until(ran.exists)
    time.sleep(2.5)  # exit 0 handled the notification: neither runs again
    assert ran.read_text() == "ran\n" and callbacks.names() == ["job_transferred"]
    assert job.state == JobState.TRANSFERRED
    job.complete()


def test_the_bitsadmin_command_line_gets_the_job_id_and_reaches_its_daemon(daemon: DaemonProcess,
                                                                           tmp_path: Path) -> None:
    """bitsadmin's form: PARAMETERS is one string whose first word is the program; the program's
    `openbits complete "$1"` reaches the daemon that ran it (OPENBITS_SOCKET), never starting another."""
    seen = tmp_path / "seen"
    program = tmp_path / "on-transferred"
    program.write_text(f'#!/bin/sh\necho "$1 $OPENBITS_JOB $2" > {seen}\n'
                       f'exec {sys.executable} -m openbits.cli --no-autostart complete "$1"\n')
    program.chmod(0o755)
    command = [sys.executable, "-m", "openbits.cli", "--socket", str(daemon.socket), "--no-autostart"]
    job = subprocess.run([*command, "create", "cmdline"], capture_output=True, text=True, check=True,
                         env=daemon.env).stdout.strip()
    for args in (["addfile", job, _source(tmp_path), str(tmp_path / "got")],
                 ["setnotifycmdline", job, str(program), f"{program.name} {{JOB}} 'two words'"], ["resume", job]):
        subprocess.run([*command, *args], capture_output=True, text=True, check=True, env=daemon.env)
    with daemon.manager() as manager:
        assert manager.get_job(job).notify_cmdline == [str(program), "{JOB}", "two words"]
        wait_until(lambda: manager.get_job(job).state == JobState.ACKNOWLEDGED)
    assert seen.read_text() == f"{job} {job} two words\n"
    assert (tmp_path / "got").read_bytes() == b"payload\n"


def test_a_failed_callback_without_command_line_is_called_again_after_the_retry_delay(manager: Manager,
                                                                                     tmp_path: Path) -> None:
    callbacks = Recorder(fail={"job_transferred": 1})
    job = manager.create_job("again")
    job.minimum_retry_delay = 1
    job.set_notify_interface(callbacks)
    job.add_file(_source(tmp_path), tmp_path / "f")
    job.resume()
    assert callbacks.done.wait(15)
    assert callbacks.names() == ["job_transferred", "job_transferred"]
    notes = [e for e in _history(manager, job.id) if e.kind == "job_transferred"]
    assert [e.redelivery for e in notes] == [False, True]


def test_disable_silences_everything_and_a_command_line_set_afterwards_runs(manager: Manager, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    callbacks = Recorder(complete=False)
    job = manager.create_job("quiet")
    job.notify_flags = NotifyFlags.DISABLE | NotifyFlags.JOB_TRANSFERRED | NotifyFlags.JOB_MODIFICATION
    job.set_notify_interface(callbacks)
    job.add_file(_source(tmp_path), tmp_path / "g")
    job.resume()
    assert job.wait(15) == JobState.TRANSFERRED  # polling needs no stream (and nobody was told)
    job.set_notify_interface(None)
    job.set_notify_cmdline("/bin/sh", ["-c", f"echo ran >> {ran}"])
    time.sleep(1.5)
    assert callbacks.calls == [] and not ran.exists()
    assert all(not e.notify for e in _history(manager, job.id))
    job.notify_flags = NotifyFlags.JOB_TRANSFERRED  # the event already happened: the command line still runs
    wait_until(ran.exists)
    assert job.info().state == JobState.TRANSFERRED


def test_the_minimum_notification_interval_throttles_modifications(manager: Manager) -> None:
    job = manager.create_job("throttled")
    job.minimum_notification_interval_ms = 1000
    start = _history(manager, job.id)[-1].seq
    for i in range(20):
        job.description = f"d{i}"
    time.sleep(1.5)  # the held-back change comes at the end of the interval
    throttled = _history(manager, job.id, since=start)
    assert 1 <= len(throttled) <= 2 and all(e.kind == "job_modification" for e in throttled)
    assert [e.seq for e in throttled] and job.info().description == "d19"
    job.minimum_notification_interval_ms = 0
    start = _history(manager, job.id)[-1].seq
    for i in range(20):
        job.description = f"e{i}"
    assert len(_history(manager, job.id, since=start)) == 20


def test_the_stream_refuses_bad_requests_with_4xx(manager: Manager) -> None:
    job = manager.create_job("done")
    job.cancel()

    def status(query: str) -> int:
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                              "--unix-socket", str(manager.socket_path), f"http://openbits/v1/events?{query}"],
                             capture_output=True, text=True, timeout=30).stdout
        return int(out)

    assert status("since=-1") == 400
    assert status("since=x") == 400
    assert status("timeout=nan") == 400
    assert status("callbacks=true") == 400
    assert status("job=nonexistent") == 404
    assert status(f"job={job.id}&callbacks=true") == 409  # SetNotifyInterface on a final job: BG_E_INVALID_STATE
    assert status("since=0&timeout=0") == 200
