"""TURN Audit — the Streamlit workbench (frame: page config, navigation, run picker).

    streamlit run app.py

Runs live under ``$TURN_AUDIT_RUNS`` (default ``./runs``). Each page is a file in ``pages/``;
shared helpers are in ``pages/_shared.py``. The one background job registry is process-wide
(``st.cache_resource``), so a refresh or a second tab sees the same live run.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

# `streamlit run` puts this file's folder first on sys.path, so `pages` is the folder beside it,
# in a checkout and in an installed turn_audit_app alike.
from pages import _shared as sh
from pages import _state as keys
from turn_core.rundir import list_runs

st.set_page_config(page_title="TURN Audit", page_icon=":material/troubleshoot:", layout="wide")

sh.startup()

# ---------------------------------------------------------------- run picker (sidebar)
runs = list_runs(sh.runs_root())
names = [r.name for r in runs]
by_name = {r.name: r for r in runs}

# A page asked for a run (one it just started: JobRegistry.start wrote its status.json before
# returning, so it is listed already; "" selects none).
pending = st.session_state.pop(keys.PENDING_RUN, None)
if pending is not None and (pending in by_name or pending == ""):
    st.session_state[keys.RUN] = pending or None
elif st.session_state.get(keys.RUN) not in by_name:
    q = st.query_params.get("run")
    st.session_state[keys.RUN] = q if q in by_name else (names[0] if names else None)

with st.sidebar:
    st.markdown("### :material/troubleshoot: TURN Audit")
    if names:
        st.selectbox("Run", names, key=keys.RUN,
                     format_func=lambda n: f"{n} · {by_name[n].state}",
                     help="Every run under the runs folder, newest first. "
                          "Runs started from the CLI appear here too.")
    else:
        st.caption("No runs yet.")
    if keys.REVIEWER_WIDGET not in st.session_state:
        st.session_state[keys.REVIEWER_WIDGET] = st.session_state.get(keys.REVIEWER, "")

    def _keep_reviewer() -> None:
        st.session_state[keys.REVIEWER] = st.session_state[keys.REVIEWER_WIDGET].strip()

    st.text_input("Reviewer name", key=keys.REVIEWER_WIDGET, placeholder="anonymous", on_change=_keep_reviewer,
                  help="Stored with every review decision.")
    job = sh.current_job_snapshot()
    if job and job.get("state") == "running":
        st.info(f"Training: {Path(str(job.get('run_dir', ''))).name}")
    st.caption(f"Runs folder: `{sh.runs_root()}`")

if st.session_state.get(keys.RUN):
    if st.query_params.get("run") != st.session_state[keys.RUN]:
        st.query_params["run"] = st.session_state[keys.RUN]
elif "run" in st.query_params:
    del st.query_params["run"]

# ---------------------------------------------------------------- navigation
PAGES = [
    st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("pages/data_run.py", title="Data & run", icon=":material/folder_open:"),
    st.Page("pages/training.py", title="Training", icon=":material/monitoring:"),
    st.Page("pages/losses.py", title="Loss distributions", icon=":material/bar_chart:"),
    st.Page("pages/clusters.py", title="Feature clusters", icon=":material/scatter_plot:"),
    st.Page("pages/review.py", title="Review", icon=":material/fact_check:"),
    st.Page("pages/export.py", title="Export", icon=":material/download:"),
]
st.navigation(PAGES).run()
