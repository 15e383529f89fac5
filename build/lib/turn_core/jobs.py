"""The app's job registry: at most one background run per process, with progress and cancel.

Streamlit re-runs page scripts on every click, so a training run cannot live inside a script:
``JobRegistry.start`` runs it on a daemon thread and the pages poll ``Job.snapshot()``. The
thread never touches the UI. Whatever happens inside the run, the thread ends with the job in
a final state (finished / failed / cancelled), a one-line ``error`` for people, the traceback
of an unexpected exception in ``RUN_DIR/run.log``, and a final ``status.json`` (written here if
the runner did not get to write one itself).

The app keeps one registry per server process (``st.cache_resource`` in pages/_shared.py): a
second ``start`` while a run is going raises ``BusyError``. ``start`` writes ``status.json``
("running", this process's pid) before it returns, so the run is on disk — and in the run
picker — at once. Progress events go to ``events.jsonl`` (the pages read them there); a job
keeps only the latest event per phase. Runs left "running" by a process that died (server
restart, kill -9) are marked ``interrupted`` by ``recover_interrupted`` at app start, and
``restart_config`` gives the settings to start such a run again.
"""
from __future__ import annotations

import json
import re
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import Cancelled, InputError, TurnAuditError
from .progress import CancelToken
from .rundir import STATES, RunWriter, is_run_dir, mark_interrupted_if_dead, read_status
from .settings import check_names

# A job of this process ends finished, failed or cancelled; "interrupted" is what a run left
# "running" by a dead process becomes, which a live job never is.
JOB_STATES = tuple(s for s in STATES if s != "interrupted")
MAX_ERROR_CHARS = 500

Runner = Callable[..., Any]  # runner(config, progress=fn, cancel=token) -> run dir


class BusyError(TurnAuditError):
    """A run is already going in this process (or in the requested run directory)."""


@dataclass
class Job:
    """One background run. Fields change while it runs: read them through ``snapshot()``.

    ``state``: one of JOB_STATES; ``started`` / ``ended``: unix times (``ended`` None while
    running); ``error``: one line for people (None unless failed/cancelled); ``last_event``:
    the latest progress event (see turn_core.progress); ``phases``: latest event per phase;
    ``n_events``: events seen. The events themselves are in ``RUN_DIR/events.jsonl``.
    """

    id: str
    run_dir: Path
    config: RunConfig
    state: str = "running"
    started: float = field(default_factory=time.time)
    ended: float | None = None
    error: str | None = None
    last_event: dict | None = None
    phases: dict = field(default_factory=dict)
    n_events: int = 0
    cancel_token: CancelToken = field(default_factory=CancelToken)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def on_event(self, event: dict) -> None:
        """Progress callback handed to the runner (called on the run's thread)."""
        ev = dict(event)
        with self._lock:
            self.last_event = ev
            self.n_events += 1
            if "phase" in ev:
                self.phases[ev["phase"]] = ev

    def snapshot(self) -> dict:
        """A consistent copy of the job's state, safe to read from any thread::

            {"id", "run_dir" (str), "state", "started", "ended", "elapsed" (s), "error",
             "last_event", "phases" ({phase: latest event}), "n_events" (total seen),
             "cancel_requested"}
        """
        with self._lock:
            snap = {
                "id": self.id, "run_dir": str(self.run_dir), "state": self.state,
                "started": self.started, "ended": self.ended,
                "elapsed": (self.ended or time.time()) - self.started, "error": self.error,
                "last_event": dict(self.last_event) if self.last_event else None,
                "phases": {k: dict(v) for k, v in self.phases.items()},
                "n_events": self.n_events, "cancel_requested": self.cancel_token.cancelled,
            }
        return snap

    def _finish(self, state: str, error: str | None, run_dir: Path | None = None) -> None:
        with self._lock:
            self.state = state
            self.error = error
            self.ended = time.time()
            if run_dir is not None:
                self.run_dir = run_dir
        self._done.set()


class JobRegistry:
    """At most one background run at a time; remembers the last one after it ends."""

    def __init__(self, runner: Runner | None = None):
        # The default runner is imported on first start: the pipeline pulls in torch.
        self._runner = runner
        self._lock = threading.Lock()
        self._job: Job | None = None
        self._thread: threading.Thread | None = None

    def start(self, config: RunConfig | dict) -> Job:
        """Start ``config`` on a daemon thread and return its job at once, with
        ``RUN_DIR/status.json`` already saying "running" (this process's pid).

        Raises ``InputError`` for invalid settings or unknown registry names
        (``settings.check_names``) and ``BusyError`` when a run is already going here or in
        ``config.out`` (e.g. started by another process).
        """
        if isinstance(config, dict):
            config = RunConfig.from_dict(config)
        check_names(config)
        out = Path(config.out)
        with self._lock:
            if self._job is not None and self._job.running:
                raise BusyError(f"a run is already in progress: {self._job.run_dir}")
            if is_run_dir(out) and read_status(out).get("state") == "running":
                raise BusyError(f"a run is already in progress: {out}")
            job = Job(id=uuid.uuid4().hex[:12], run_dir=out, config=config)
            _mark_running(out, config.method)
            runner = self._runner or _default_runner()
            thread = threading.Thread(target=_run_job, args=(job, runner), daemon=True,
                                      name=f"turn-run-{job.id}")
            self._job, self._thread = job, thread
            thread.start()
        return job

    def current(self) -> Job | None:
        """The running job, or the last one (None before the first start)."""
        with self._lock:
            return self._job

    def cancel(self) -> bool:
        """Ask the running job to stop (it ends within a batch as ``cancelled``).
        Returns False when nothing is running."""
        job = self.current()
        if job is None or not job.running:
            return False
        job.cancel_token.cancel()
        return True

    def wait(self, timeout: float | None = None) -> Job | None:
        """Block until the current job ends or ``timeout`` seconds pass; returns the job."""
        with self._lock:
            job, thread = self._job, self._thread
        if thread is not None:
            thread.join(timeout)
        return job


def _mark_running(run_dir: Path, method: str) -> None:
    """Write status.json "running" with this pid before the thread starts: the run picker then
    lists the run the moment ``start`` returns (the runner rewrites the status as it goes)."""
    writer = RunWriter(run_dir)
    try:
        writer.set_status("running", method=method, error=None)
    finally:
        writer.close()


def _default_runner() -> Runner:
    from .pipeline import run

    return run


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= MAX_ERROR_CHARS else line[:MAX_ERROR_CHARS - 1] + "…"


def _run_job(job: Job, runner: Runner) -> None:
    """Body of the job thread: run, then settle state, status.json and run.log whatever happened."""
    run_dir: Path | None = None
    trace: str | None = None
    try:
        result = runner(job.config, progress=job.on_event, cancel=job.cancel_token)
        run_dir = Path(result) if result is not None else None
        state, error = "finished", None
    except Cancelled as e:
        state, error = "cancelled", _one_line(str(e) or "cancelled")
    except TurnAuditError as e:            # InputError included: the message is for people
        state, error = "failed", _one_line(str(e) or type(e).__name__)
    except BaseException as e:  # noqa: BLE001 - a bug: keep the traceback for the log
        msg = _one_line(str(e))
        state, error = "failed", f"{type(e).__name__}: {msg}" if msg else type(e).__name__
        trace = traceback.format_exc()
    try:
        _settle_run_dir(run_dir or job.run_dir, state, error, trace)
    except Exception:  # noqa: BLE001, S110 - the folder may be unwritable; the job state still tells the UI
        pass
    job._finish(state, error, run_dir)


def _settle_run_dir(run_dir: Path, state: str, error: str | None, trace: str | None) -> None:
    """Write the final status.json (and the traceback) when the runner did not."""
    try:
        recorded = json.loads((run_dir / "status.json").read_text(encoding="utf-8")).get("state")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded not in (None, "running"):
        return  # the runner recorded its own outcome (the pipeline also logs its tracebacks)
    if trace:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "run.log", "a", encoding="utf-8") as f:
            f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + trace + "\n")
    writer = RunWriter(run_dir)
    try:
        writer.set_status(state, error=error)
    finally:
        writer.close()


# --------------------------------------------------------------------------- after a restart
def recover_interrupted(runs_root: str | Path) -> list[Path]:
    """Mark every run under ``runs_root`` whose process died while "running" as interrupted
    (status.json rewritten). Returns the run directories changed. Call once at app start."""
    root = Path(runs_root)
    if not root.is_dir():
        return []
    changed = []
    for d in sorted(root.iterdir()):
        if d.is_dir() and is_run_dir(d) and mark_interrupted_if_dead(d):
            changed.append(d)
    return changed


def restart_config(run_dir: str | Path) -> RunConfig:
    """The settings of ``run_dir`` (from its config.json) with a fresh output folder beside it:
    ``<name>-restart``, then ``-restart2``, ... (a restart of a restart does not stack
    suffixes). Raises ``InputError`` when the run has no readable config.json."""
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    try:
        config = RunConfig.from_json(path)
    except FileNotFoundError:
        raise InputError(f"{run_dir} has no config.json: its settings are unknown") from None
    except (ValueError, TypeError, AttributeError) as e:
        raise InputError(f"{path} is unreadable: {e}") from None
    base = re.sub(r"-restart\d*$", "", run_dir.name) + "-restart"
    k = 1
    while True:
        candidate = run_dir.parent / (base if k == 1 else f"{base}{k}")
        if not candidate.exists():
            break
        k += 1
    config.out = str(candidate)
    return config


__all__ = [
    "JOB_STATES",
    "BusyError",
    "Job",
    "JobRegistry",
    "recover_interrupted",
    "restart_config",
]
