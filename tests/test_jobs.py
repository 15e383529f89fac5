"""turn_core.jobs: one background run per process, progress, cancel, failures, recovery."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fakerun import make_fake_run

from turn_core.config import RunConfig
from turn_core.errors import InputError
from turn_core.jobs import JOB_STATES, BusyError, JobRegistry, recover_interrupted, restart_config
from turn_core.progress import check
from turn_core.rundir import STATES, Run, RunWriter, list_runs, read_status


def batch_runner(n_batches=20, delay=0.005, gate: threading.Event | None = None):
    """A stand-in for pipeline.run: writes status like the pipeline, loops over batches."""

    def run(config, progress=None, cancel=None):
        out = Path(config.out)
        w = RunWriter(out)
        w.set_status("running", method=config.method)
        try:
            for step in range(1, n_batches + 1):
                if gate is not None:
                    gate.wait(5)
                check(cancel)
                time.sleep(delay)
                progress(w.event("lp", "step", step=step, steps=n_batches, loss=1.0 / step))
            w.set_status("finished", method=config.method)
        except BaseException as e:
            w.set_status("cancelled" if type(e).__name__ == "Cancelled" else "failed", error=str(e))
            raise
        finally:
            w.close()
        return out

    return run


def crashing_runner(config, progress=None, cancel=None):
    """Dies before writing any status, with a multi-line message."""
    progress({"phase": "cache", "kind": "start", "t": time.time()})
    raise ValueError("shape mismatch\n  (3, 4) vs (4, 3)")


def _cfg(tmp_path, name="run") -> RunConfig:
    return RunConfig(out=str(tmp_path / name))


def test_start_progress_finished(tmp_path):
    gate = threading.Event()
    reg = JobRegistry(runner=batch_runner(n_batches=10, gate=gate))
    assert reg.current() is None
    job = reg.start(_cfg(tmp_path))
    assert reg.current() is job and job.snapshot()["state"] == "running"
    gate.set()
    # progress shows up while/after running
    deadline = time.time() + 5
    while job.snapshot()["n_events"] == 0 and time.time() < deadline:
        time.sleep(0.005)
    assert job.snapshot()["last_event"]["phase"] == "lp"
    assert reg.wait(10) is job
    snap = job.snapshot()
    assert snap["state"] == "finished" and snap["error"] is None
    assert snap["n_events"] == 10 and "events" not in snap  # the events stay on disk only
    steps = [e["step"] for e in Run(tmp_path / "run").events() if e.get("kind") == "step"]
    assert steps == list(range(1, 11))
    assert snap["phases"]["lp"]["step"] == 10
    assert snap["ended"] >= snap["started"] and snap["run_dir"] == str(tmp_path / "run")
    assert read_status(tmp_path / "run")["state"] == "finished"
    assert reg.cancel() is False  # nothing running


def test_start_writes_running_status_before_returning(tmp_path):
    gate = threading.Event()
    reg = JobRegistry(runner=batch_runner(n_batches=2, gate=gate))
    reg.start(_cfg(tmp_path))
    try:
        status = read_status(tmp_path / "run")  # no waiting: the folder is there already
        assert status["state"] == "running" and status["pid"] == os.getpid()
        assert [r.name for r in list_runs(tmp_path)] == ["run"]
    finally:
        gate.set()
        reg.wait(5)


def test_unknown_registry_name_refused_at_start(tmp_path):
    reg = JobRegistry(runner=batch_runner())
    with pytest.raises(InputError, match="--flag-rule 'nope'"):
        reg.start(RunConfig(out=str(tmp_path / "run"), flag_rule="nope"))
    assert reg.current() is None and not (tmp_path / "run").exists()


def test_job_states_follow_rundir_states():
    assert set(JOB_STATES) == set(STATES) - {"interrupted"}


def test_cancel_stops_the_run(tmp_path):
    reg = JobRegistry(runner=batch_runner(n_batches=10_000, delay=0.002))
    job = reg.start(_cfg(tmp_path))
    while job.snapshot()["n_events"] < 3:
        time.sleep(0.002)
    t0 = time.time()
    assert reg.cancel() is True
    reg.wait(5)
    assert time.time() - t0 < 2
    snap = job.snapshot()
    assert snap["state"] == "cancelled" and snap["cancel_requested"]
    assert snap["n_events"] < 10_000
    assert read_status(tmp_path / "run")["state"] == "cancelled"


def test_crash_gives_one_line_error_traceback_and_status(tmp_path):
    reg = JobRegistry(runner=crashing_runner)
    job = reg.start(_cfg(tmp_path))
    reg.wait(5)
    snap = job.snapshot()
    assert snap["state"] == "failed"
    assert snap["error"] == "ValueError: shape mismatch (3, 4) vs (4, 3)"
    assert "\n" not in snap["error"]
    log = (tmp_path / "run" / "run.log").read_text()
    assert "Traceback" in log and "crashing_runner" in log and "ValueError" in log
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and status["error"] == snap["error"]
    # after a failure a new run may start
    reg._runner = batch_runner(n_batches=2)
    again = reg.start(_cfg(tmp_path, "again"))
    assert reg.wait(5) is again and again.snapshot()["state"] == "finished"


def test_input_error_message_kept_as_is(tmp_path):
    def bad_input(config, progress=None, cancel=None):
        raise InputError("labels.csv row 3: empty label for 'a.png'")

    reg = JobRegistry(runner=bad_input)
    job = reg.start(_cfg(tmp_path))
    reg.wait(5)
    assert job.snapshot()["error"] == "labels.csv row 3: empty label for 'a.png'"
    assert job.snapshot()["state"] == "failed"
    assert read_status(tmp_path / "run")["state"] == "failed"
    assert not (tmp_path / "run" / "run.log").exists()  # a user error is not a bug


def test_runner_status_is_not_overwritten(tmp_path):
    # the runner recorded its own failure: the job does not rewrite it or log twice
    def pipeline_like(config, progress=None, cancel=None):
        w = RunWriter(config.out)
        w.set_status("failed", error="own message")
        (Path(config.out) / "run.log").write_text("own traceback\n")
        w.close()
        raise RuntimeError("boom")

    reg = JobRegistry(runner=pipeline_like)
    job = reg.start(_cfg(tmp_path))
    reg.wait(5)
    assert job.snapshot()["error"] == "RuntimeError: boom"
    assert read_status(tmp_path / "run")["error"] == "own message"
    assert (tmp_path / "run" / "run.log").read_text() == "own traceback\n"


def test_busy_while_running(tmp_path):
    gate = threading.Event()
    reg = JobRegistry(runner=batch_runner(n_batches=3, gate=gate))
    job = reg.start(_cfg(tmp_path))
    with pytest.raises(BusyError, match=f"a run is already in progress: {tmp_path / 'run'}"):
        reg.start(_cfg(tmp_path, "second"))
    gate.set()
    reg.wait(5)
    assert job.snapshot()["state"] == "finished"
    second = reg.start(_cfg(tmp_path, "second"))  # free again
    reg.wait(5)
    assert second.snapshot()["state"] == "finished" and reg.current() is second


def test_busy_when_out_dir_is_running_elsewhere(tmp_path):
    w = RunWriter(tmp_path / "run")
    w.set_status("running")  # our own (alive) pid: as if another registry were running it
    w.close()
    with pytest.raises(BusyError):
        JobRegistry(runner=batch_runner()).start(_cfg(tmp_path))


def test_invalid_config_raises_at_start(tmp_path):
    reg = JobRegistry(runner=batch_runner())
    with pytest.raises(InputError, match="tau"):
        reg.start(RunConfig(out=str(tmp_path / "run"), tau=3.0))
    assert reg.current() is None


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_recover_interrupted(tmp_path):
    runs = tmp_path / "runs"
    dead = make_fake_run(runs / "dead", n=10, state="running")
    alive = make_fake_run(runs / "alive", n=10, state="running")
    done = make_fake_run(runs / "done", n=10)
    st = json.loads((dead / "status.json").read_text())
    st["pid"] = _dead_pid()
    (dead / "status.json").write_text(json.dumps(st))
    (runs / "not-a-run").mkdir()

    assert recover_interrupted(runs) == [dead]
    assert json.loads((dead / "status.json").read_text())["state"] == "interrupted"
    assert json.loads((alive / "status.json").read_text())["state"] == "running"
    assert json.loads((done / "status.json").read_text())["state"] == "finished"
    assert recover_interrupted(runs) == []  # idempotent
    assert recover_interrupted(tmp_path / "missing") == []


def test_restart_config(tmp_path):
    run = make_fake_run(tmp_path / "runs" / "r1", n=10, fft_epochs=3)
    cfg = restart_config(run)
    assert cfg.fft_epochs == 3
    assert cfg.out == str(tmp_path / "runs" / "r1-restart")
    Path(cfg.out).mkdir()
    assert restart_config(run).out == str(tmp_path / "runs" / "r1-restart2")
    # restarting a restart does not stack suffixes
    (Path(cfg.out) / "config.json").write_text((run / "config.json").read_text())
    assert restart_config(cfg.out).out == str(tmp_path / "runs" / "r1-restart2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="config.json"):
        restart_config(tmp_path / "empty")
