"""Overview: every run with its status and headline metrics; the selected run's summary."""
from __future__ import annotations

import math

import streamlit as st

from pages import _shared as sh
from pages import _state as keys
from turn_core import views
from turn_core.errors import InputError
from turn_core.rundir import delete_run, list_runs

st.title("Overview")

runs = list_runs(sh.runs_root())
if not runs:
    st.info("No runs yet. A first audit takes a couple of minutes on the built-in demo "
            "(MNIST digits with 20 % of the labels flipped on purpose).")
    st.page_link("pages/data_run.py", label="Start with the demo on **Data & run**", icon=":material/folder_open:")
    st.stop()

st.subheader("Runs")
st.dataframe(views.runs_table(runs), hide_index=True, width="stretch")

with st.expander("Delete a run"):
    job = sh.current_job_snapshot()
    busy = [job["run_dir"]] if job and job.get("state") == "running" else []
    victim = st.selectbox("Run to delete", [r.name for r in runs], key=keys.DELETE_PICK)
    sure = st.checkbox(f"Yes, delete {victim} and its review decisions for good", key=keys.DELETE_SURE)
    if st.button("Delete run", disabled=not sure, key="delete_btn"):
        try:
            delete_run(sh.runs_root(), victim, busy=busy)
        except (InputError, OSError) as e:
            st.error(f"Not deleted: {e}")
        else:
            st.session_state.pop(keys.DELETE_SURE, None)
            if st.session_state.get(keys.RUN) == victim:
                sh.select_run("")
            st.toast(f"Deleted {victim}")
            st.rerun()

st.divider()
run = sh.open_run()
if run is None:
    st.stop()
st.subheader(f"Run {run.dir.name}")
status = sh.run_header(run)
if status.get("state") in ("failed", "interrupted", "incomplete", "cancelled") and status.get("error"):
    st.error(f"{status['state'].capitalize()}: {status['error']} — see run.log in {run.dir}")

# Only the columns this page counts from (shared between reruns, never copied).
COLUMNS = ["given_label", "suggested_label", "flagged", "suspicion", "is_noisy"]
df = sh.columns(run, COLUMNS) if sh.table_stamp(run) else None
if df is None:
    st.info("No results yet: the first suspects appear after linear probing, the final table when training "
            "finishes.")
    st.stop()

metrics = run.metrics
det = views.detection_summary(df, metrics)
cols = st.columns(5)
cols[0].metric("Images", f"{len(df):,}")
cols[1].metric("Flagged", f"{int(views.flagged_mask(df).sum()):,}")
acc = metrics.get("test_accuracy")
cols[2].metric("Test accuracy", f"{acc:.1%}" if isinstance(acc, (int, float)) and not math.isnan(acc) else "–",
               help="Accuracy of the final model on the held-out test set (when the dataset has one).")
if det:
    cols[3].metric("Detection F1", f"{det.get('f1', float('nan')):.3f}",
                   help="Flags vs. the known truth (demo / injected noise).")
    au = det.get("auroc")
    cols[4].metric("AUROC", f"{au:.3f}" if isinstance(au, (int, float)) and not math.isnan(au) else "–",
                   help="How well the suspicion score ranks wrong labels above right ones.")
    st.caption(f"Precision {det.get('precision', 0):.3f} · recall {det.get('recall', 0):.3f} · "
               f"{det.get('n_noisy', '?')} truly wrong labels among {det.get('n', len(df))} images.")
else:
    cols[3].metric("Detection F1", "–", help="Needs the true labels (demo or injected noise).")


@st.cache_data(show_spinner=False, max_entries=8)
def _per_class(run_dir_s: str, stamp: tuple, _df) -> dict:
    """The per-class tables, once per table (a million rows take a moment to group)."""
    return {"k": views.n_classes(_df), "pairs": views.changed_pairs(_df), "noise": views.noise_per_class(_df)}


tables = _per_class(str(run.dir), sh.table_stamp(run), df)
many = tables["k"] > views.GRID_MAX_CLASSES   # a K × K grid stops being readable: pairs and search
left, right = st.columns(2)
with left:
    if not many:
        st.markdown("**Given → suggested label** (rows: given label)")
        st.dataframe(views.confusion_table(df), width="stretch")
    else:
        st.markdown(f"**Given → suggested label**: the most frequent changes ({tables['k']:,} classes)")
        find = st.text_input("Find a class (given or suggested)", key="ov_pair_find")
        pairs, n = views.search_rows(tables["pairs"], find, ("given_label", "suggested_label"))
        st.dataframe(pairs, hide_index=True, width="stretch")
        st.caption(f"{len(pairs)} of {n:,} pairs whose suggested label differs from the given one, "
                   "most frequent first")
with right:
    st.markdown("**Estimated noise rate per class** (share of each class flagged)")
    t = tables["noise"]
    if many:
        t = t.sort_values(["estimated_noise_rate", "class"], ascending=[False, True], kind="stable")
        t, n = views.search_rows(t, st.text_input("Find a class", key="ov_class_find"))
        st.caption(f"{len(t)} of {n:,} classes, noisiest first")
    fmt = {"estimated_noise_rate": st.column_config.ProgressColumn(
        "estimated noise", format="percent", min_value=0.0, max_value=1.0)}
    if "true_noise_rate" in t.columns:
        fmt["true_noise_rate"] = st.column_config.ProgressColumn(
            "true noise", format="percent", min_value=0.0, max_value=1.0)
    st.dataframe(t, hide_index=True, width="stretch", column_config=fmt)
