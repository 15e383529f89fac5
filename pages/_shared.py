"""Shared UI helpers of the workbench (not a page: app.py does not register it).

Holds the process-wide job registry (``st.cache_resource``: the app's one registry), the runs
root, the selected run, cached readers of the run directory and small widgets every page uses.
No algorithm code: derived data comes from ``turn_core.views`` / ``turn_core.projections``;
session-state keys come from ``pages/_state.py``.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import streamlit as st

from pages import _state as keys
from turn_core import views
from turn_core.errors import InputError
from turn_core.jobs import JobRegistry, recover_interrupted
from turn_core.review import SETTINGS_NAME, ReviewStore, SuspectRule, suspect_rule
from turn_core.rundir import STATES, Run
from turn_core.views import queue as views_queue

# Streamlit treats a folder named pages/ next to the main script as a v1 multipage app until the
# first st.navigation call in the process: a first visit straight to /review would then run
# pages/review.py alone, without the frame. Switch v1 off and rerun through app.py instead.
try:
    from streamlit.runtime.pages_manager import PagesManager as _PM

    if _PM.uses_pages_directory:
        _PM.uses_pages_directory = False
        st.rerun()
except ImportError:  # pragma: no cover - other Streamlit versions
    pass

RUNS_ENV = "TURN_AUDIT_RUNS"
DEFAULTS_ENV = "TURN_AUDIT_DEFAULTS"
_ICONS = {"running": ":green[:material/play_circle:]", "finished": ":green[:material/check_circle:]",
          "failed": ":red[:material/error:]", "cancelled": ":gray[:material/stop_circle:]",
          "interrupted": ":orange[:material/warning:]", "incomplete": ":gray[:material/help:]"}
# One icon per run state rundir knows, plus "incomplete" (status.json unreadable, as read_status
# reports it): a state added there without an icon here fails at import, not on screen.
STATE_ICONS = {state: _ICONS[state] for state in (*STATES, "incomplete")}


# --------------------------------------------------------------------------- process-wide state
def runs_root() -> Path:
    root = Path(os.environ.get(RUNS_ENV) or "runs").expanduser().resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass
    return root


@st.cache_resource(show_spinner=False)
def registry() -> JobRegistry:
    """The one JobRegistry of this server process (kept across reruns, sessions and tabs)."""
    return JobRegistry()


@st.cache_resource(show_spinner=False)
def _recovered(root: str) -> float:
    """Mark runs left 'running' by a dead process as interrupted, once per server and root."""
    recover_interrupted(root)
    return time.time()


def startup() -> None:
    try:
        _recovered(str(runs_root()))
    except OSError as e:
        st.sidebar.warning(f"Could not check for interrupted runs: {e}")


def current_job_snapshot() -> dict | None:
    """The running (or last) job of this server as ``Job.snapshot()``; None before any."""
    job = registry().current()
    return job.snapshot() if job is not None else None


def defaults() -> dict[str, Any]:
    """RunConfig field overrides from TURN_AUDIT_DEFAULTS (JSON), for demos and the browser test."""
    raw = os.environ.get(DEFAULTS_ENV, "").strip()
    if not raw:
        return {}
    try:
        d = json.loads(raw)
        return d if isinstance(d, dict) else {}
    except json.JSONDecodeError:
        return {}


# --------------------------------------------------------------------------- selected run
def select_run(name: str | None) -> None:
    """Ask the frame to select run ``name`` on the next rerun (pages run after the picker)."""
    st.session_state[keys.PENDING_RUN] = name


def run_dir() -> Path | None:
    name = st.session_state.get(keys.RUN)
    if not name:
        return None
    d = runs_root() / name
    return d if d.is_dir() else None


def open_run(require_samples: bool = False) -> Run | None:
    """The selected run, or None with a message explaining what to do."""
    d = run_dir()
    if d is None:
        st.info("No run selected. Start one on **Data & run**, or pick one in the sidebar.")
        return None
    try:
        run = Run(d)
    except Exception as e:  # noqa: BLE001
        st.error(f"Cannot open run {d.name}: {e}")
        return None
    if require_samples and not any((d / n).exists() for n in ("samples.parquet", "samples.csv")):
        state = run.status.get("state")
        if state == "running":
            st.info(f"Run **{d.name}** is still training; this page fills in with the first (provisional) "
                    "suspects once linear probing is done, and with the final ones when it finishes "
                    "(see **Training**).")
        else:
            err = run.status.get("error")
            st.warning(f"Run **{d.name}** is {state} and has no results (samples.csv missing)."
                       + (f" Cause: {err}" if err else ""))
        return None
    return run


def file_stamp(path: Path) -> float:
    try:
        return path.stat().st_mtime_ns / 1e9
    except OSError:
        return 0.0


def table_stamp(run: Run) -> tuple:
    """Changes whenever the run's samples table is rewritten (samples.parquet or samples.csv:
    size and mtime of each there is); a cache key of everything derived from the table."""
    out = []
    for name in ("samples.parquet", "samples.csv"):
        try:
            st_ = (run.dir / name).stat()
        except OSError:
            continue
        out.append((name, st_.st_size, st_.st_mtime_ns))
    return tuple(out)


@st.cache_data(show_spinner=False, max_entries=8)
def _samples(run_dir_s: str, stamp: tuple):
    return Run(run_dir_s).samples()


def samples(run: Run):
    """The whole samples table as a DataFrame, cached until the table changes. A copy per
    call (``st.cache_data``), so the caller may change it; pages that only read a few columns
    use ``columns`` instead, which copies nothing."""
    return _samples(str(run.dir), table_stamp(run))


@st.cache_resource(show_spinner=False, max_entries=8)
def _columns(run_dir_s: str, names: tuple[str, ...] | None, stamp: tuple):
    df = Run(run_dir_s).samples(columns=None if names is None else list(names))
    if df is None or "index" not in df.columns:
        return df
    # Rows by sample index (``df.loc[i]``), kept as a column too: no page builds this per rerun.
    return df.set_index(df["index"].to_numpy(), drop=False).rename_axis(None)


def columns(run: Run, names: list[str] | None):
    """Only the columns ``names`` of the samples table (those it has; None: every column), rows
    labelled by sample index; None until the run wrote its table. Cached until the table
    changes, and shared: ``st.cache_resource`` hands every rerun and session the same frame, so
    at a million rows no rerun pays a copy (``st.cache_data`` would unpickle one each time).
    Never modify it."""
    wanted = None if names is None else tuple(dict.fromkeys(["index", *names]))
    return _columns(str(run.dir), wanted, table_stamp(run))


@st.cache_resource(show_spinner=False, max_entries=16)
def _queue_order(run_dir_s: str, stamp: tuple, table: str, cutoff: float | None, learned_key,
                 _df, _learned):
    return views.suspect_order(_df["suspicion"].to_numpy(float), _df["index"].to_numpy(), cutoff,
                               flagged=views.flagged_mask(_df) if cutoff is None else None, learned=_learned)


def queue_order(run: Run, df, cutoff: float | None, learned: dict | None = None):
    """``views.suspect_order`` of the run's table (``df``: its ``columns``, with suspicion and
    flagged), computed once per (table, provisional/final, cut-off, re-ranking) and then
    shared (``st.cache_resource``): the order never depends on the decisions themselves, only on
    the learning queue's re-ranking (``learned``: ``read_learned``'s dict, keyed by its
    n_decisions and file). A rerun pays only the decisions of the M suspects."""
    learned_key = None
    if learned is not None:
        learned_key = (int(learned["n_decisions"]), file_stamp(run.dir / views_queue.LEARNED_FILE))
    return _queue_order(str(run.dir), table_stamp(run), run.table, None if cutoff is None else float(cutoff),
                        learned_key, df, None if learned is None else learned["suspicion"])


@st.cache_data(show_spinner=False, max_entries=16)
def _error_count(run_dir_s: str, stamp: tuple, probs_stamp: float, _df, classes: tuple) -> float | None:
    return views_queue.error_count(run_dir_s, _df["given_label"].astype(str).to_numpy(), list(classes))


def error_count(run: Run, df, classes: list[str]) -> float | None:
    """The run's count of wrong labels (``views.queue.error_count``), once per table."""
    return _error_count(str(run.dir), table_stamp(run), file_stamp(run.dir / "ensemble_probs.npy"), df,
                        tuple(classes))


@st.cache_data(show_spinner=False, max_entries=5000)
def _thumb_png(run_dir_s: str, index: int, stamp: float, min_side: int) -> bytes | None:
    img = Run(run_dir_s).thumbnail(index)
    return None if img is None else views.png_bytes(img, min_side)


def thumb_png(run: Run, index: int, min_side: int = 96) -> bytes | None:
    return _thumb_png(str(run.dir), int(index), file_stamp(run.dir / "thumbs.npy"), min_side)


@st.cache_resource(show_spinner=False, max_entries=16)
def _review_store(run_dir_s: str, config_stamp: float) -> ReviewStore:
    return ReviewStore(run_dir_s)


def review_store(run: Run) -> ReviewStore:
    """The run's ``ReviewStore``, one per run and config.json (shared: a store is thread-safe),
    so what it learnt for validating decisions (sample count, classes) is learnt once."""
    return _review_store(str(run.dir), file_stamp(run.dir / "config.json"))


def decisions(store: ReviewStore) -> dict:
    """The effective decisions (index → Decision); {} with a message when they are unreadable."""
    try:
        return store.latest()
    except InputError as e:  # a locked or broken review.sqlite: show the page without them
        st.error(f"Cannot read review decisions: {e}")
        return {}


def flash(message_key: str, show) -> None:
    """Show (with ``show``, e.g. st.toast) and forget the message a callback left under
    ``message_key``: callbacks run before the page, so they cannot draw it themselves."""
    msg = st.session_state.pop(message_key, None)
    if msg:
        show(msg)


@st.cache_data(show_spinner=False, max_entries=32)
def _suspect_rule(run_dir_s: str, stamp: tuple, settings_stamp: float, table: str, _df) -> SuspectRule:
    return suspect_rule(Run(run_dir_s), _df)


def suspects(run: Run, df) -> SuspectRule:
    """The run's suspect rule: the cut-off saved on Loss distributions (``review.json``, so it
    survives a reload and holds for every tab), else the run's own flag count. Review, Export
    and Label Studio use the same one. Recomputed when review.json, the table or its kind
    (provisional / final) changes; the flag count's cut-off sorts the whole table, so not per
    rerun."""
    try:
        return _suspect_rule(str(run.dir), table_stamp(run), file_stamp(run.dir / SETTINGS_NAME), run.table, df)
    except InputError as e:   # the folder vanished mid-page: the flag count, said once
        st.warning(f"Cannot read the saved cut-off: {e}")
        return SuspectRule(views.default_cutoff(df), "flag count", "final")


def cutoff_for(run: Run, df) -> float:
    """The suspicion cut-off of this run (``suspects``): saved on Loss distributions, else the
    run's own flag count."""
    return float(suspects(run, df).cutoff)


PROVISIONAL_NOTE = ("**Provisional suspects**, scored from the pretrained features while the model "
                    "fine-tunes. Decisions you make now are kept; when training ends, the queue switches "
                    "to the final scores (this page reloads itself).")


def provisional_banner(run: Run) -> None:
    """Say so when the run's samples table is the provisional one. While the run trains, a
    small fragment watches status.json and reruns the page once the final table has replaced
    it, so the queue switches without the reviewer doing anything."""
    if not run.provisional:
        return
    if run.status.get("state") == "running":
        _watch_provisional(str(run.dir))
    else:
        st.warning("This run stopped before its final scores: these are its **provisional suspects** "
                   "(pretrained features only). Decisions on them are stored as usual.")


@st.fragment(run_every=2.0)
def _watch_provisional(run_dir_s: str) -> None:
    run = Run(run_dir_s)
    if not run.provisional or run.status.get("state") != "running":
        st.rerun()   # the final table is in (or the run stopped): redraw the page on it
    st.info(PROVISIONAL_NOTE, icon=":material/hourglass_top:")


def state_label(state: str | None) -> str:
    return f"{STATE_ICONS.get(state or '', '')} {state or 'unknown'}"


def run_header(run: Run) -> dict:
    st_ = run.status
    state = st_.get("state")
    s = run.settings
    bits = [state_label(state), f"method **{s.get('method', st_.get('method', '?'))}**",
            f"data `{s.get('data', '?')}`"]
    st.caption(" · ".join([f"run **{run.dir.name}**"] + bits))
    return st_


def reviewer_name() -> str:
    return st.session_state.get(keys.REVIEWER) or "anonymous"


def page_preamble(title: str, empty_message: str | None = None, names: list[str] | None = None,
                  shared: bool = False):
    """Title, the selected run with its header, and its samples table — or stop the page.

    The opening every run-reading page shares; ``empty_message`` is shown when the run has no
    samples (the page stops either way). A run still training opens on its provisional table,
    with a banner saying so (``provisional_banner``). ``names``: read only these columns
    (``columns``: shared, never modify it); None: the whole table, the caller's own copy, or
    with ``shared`` the whole table shared like ``columns`` (a page that only reads it)."""
    st.title(title)
    run = open_run(require_samples=True)
    if run is None:
        st.stop()
    run_header(run)
    provisional_banner(run)
    df = samples(run) if names is None and not shared else columns(run, names)
    if df is None or len(df) == 0:
        if empty_message:
            st.warning(empty_message)
        st.stop()
    return run, df
