"""Export: corrected labels, the cleaned manifest, Label Studio tasks; a new run on the result."""
from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from pages import _shared as sh
from turn_core import export as ex
from turn_core import views
from turn_core.errors import InputError
from turn_core.rundir import Run

SHOW_ROWS = 2_000   # rows of the corrected table drawn in the browser (the files hold them all)

st.title("Export")
run = sh.open_run(require_samples=True)
if run is None:
    st.stop()
sh.run_header(run)
sh.provisional_banner(run)
store = sh.review_store(run)
try:
    n_rev = store.count_reviewed()
except InputError as e:
    st.error(str(e))
    st.stop()
df = sh.columns(run, ["suspicion", "flagged"])   # what the suspect rule needs, nothing more
rule = sh.suspects(run, df)
n_suspects = int(rule.mask(df).sum())
st.markdown(f"**{n_rev} images reviewed** of {len(df)} · unreviewed images keep their given label. "
            f"**{n_suspects} suspects**: {rule.describe()} — the Review queue; `is_label_issue` is 1 for "
            "an unreviewed suspect.")


@st.cache_resource(show_spinner=False, max_entries=2)
def _table_run(run_dir_s: str, stamp: tuple) -> Run:
    """A ``Run`` kept per samples table: it caches the columns the exports read, so a new
    decision re-applies the decisions without reading the table again."""
    return Run(run_dir_s)


@st.cache_resource(show_spinner=False, max_entries=2)
def _tables(run_dir_s: str, key: str, _run: Run, _rule) -> dict:
    """The corrected table and what is counted from it, once per ``export.download_key``
    (decisions, suspect rule, table file): not per rerun. Shared: never modify it."""
    corrected = ex.corrected_labels(_run, _rule)
    out = {"corrected": corrected, "changes": None, "outcome": None, "errors": {}}
    for what, fn in (("changes", ex.changes_per_class), ("outcome", ex.review_outcome)):
        try:
            out[what] = fn(_run, corrected)
        except Exception as e:  # noqa: BLE001 - shown next to the table that is missing
            out["errors"][what] = str(e)
    return out


try:
    table_run = _table_run(str(run.dir), sh.table_stamp(run))
    key = ex.download_key(run, rule)
    tables = _tables(str(run.dir), json.dumps(key, sort_keys=True), table_run, rule)
except InputError as e:
    st.error(str(e))
    st.stop()
corrected = tables["corrected"]
exports_dir = run.dir / "exports"


def _file(name: str, copy_to: Path | None = None):
    """The download's bytes, made when the button is clicked (Streamlit calls this then, in
    another thread), from the file ``export.download_file`` keeps: written again only when the
    decisions, the cut-off or the table changed since it was last written, never per rerun.
    ``copy_to``: a copy also goes there, in the same call. Every download button ignores the
    click for reruns (``on_click="ignore"``): a rerun started by the click re-registers the
    button's deferred file, and the browser's request for the old one can then come too late,
    so the download is silently lost (seen in the browser tests)."""
    def data() -> bytes:
        same = ex.download_key(run, rule) == key   # else the table shown is older than the file
        return ex.download_file(table_run, name, rule, corrected=corrected if same else None,
                                copy_to=copy_to).read_bytes()
    return data


# ------------------------------------------------------------------ corrected labels
st.subheader("Corrected labels")
st.caption("Columns: `path, given_label, suggested_label, final_label, decision, suspicion, is_label_issue`. "
           "`suspicion` lies in [0, 1]: **higher = more likely mislabeled**. `final_label` is empty for "
           "excluded images. `is_label_issue` is 1 when the label is wrong: 1 for a suspect (suspicion ≥ the "
           "cut-off above) until someone reviewed the image, then the reviewer's answer.")
c1, c2 = st.columns([2, 3])
c1.download_button("Download corrected_labels.csv", _file("corrected", exports_dir / "corrected_labels.csv"),
                   file_name=f"corrected_labels-{run.dir.name}.csv",
                   mime="text/csv", type="primary", key="dl_corrected", on_click="ignore")
c2.caption(f"Also written to `{exports_dir / 'corrected_labels.csv'}` when you download, or with "
           "**Write every export to disk** below.")
show_changed = st.toggle("Show only changed rows and suspects", value=True, key="ex_changed")
view = corrected[((corrected["decision"] != "unreviewed") | (corrected["is_label_issue"] == 1)).to_numpy()] \
    if show_changed else corrected
st.dataframe(view.head(SHOW_ROWS), hide_index=True, width="stretch", height=260)
if len(view) > SHOW_ROWS:
    st.caption(f"Showing the first {SHOW_ROWS:,} of {len(view):,} rows; the download holds every image.")

# ------------------------------------------------------------------ changes & outcome
left, right = st.columns(2)
with left:
    st.subheader("Changes per class")
    changes = tables["changes"]
    if changes is None:
        st.caption(f"Not available: {tables['errors'].get('changes')}")
    else:
        if len(changes) > views.GRID_MAX_CLASSES:   # many classes: the most changed first, searchable
            changes = changes.assign(_n=changes["n_changed_to_other"] + changes["n_changed_from_other"]
                                     + changes["n_excluded"]).sort_values("_n", ascending=False,
                                                                          kind="stable").drop(columns="_n")
            changes, n_match = views.search_rows(changes, st.text_input("Find a class", key="ex_class_find"))
            st.caption(f"{len(changes)} of {n_match} classes, most changed first")
        st.dataframe(changes, hide_index=True, width="stretch")
with right:
    st.subheader("What the review achieved")
    out = tables["outcome"]
    if "outcome" in tables["errors"]:
        st.caption(f"Not available: {tables['errors']['outcome']}")
    elif out is None:
        st.caption("Needs the true labels (the demo, or a manifest with a true_label column).")
    else:
        m = st.columns(3)
        m[0].metric("Errors fixed", out["errors_fixed"])
        m[1].metric("Errors introduced", out["errors_introduced"])
        m[2].metric("Errors remaining", out["errors_remaining"], delta=out["errors_remaining"] - out["errors_before"],
                    delta_color="inverse")
        st.caption(f"{out['errors_before']} wrong labels before review · {out['errors_excluded']} wrong and "
                   f"{out['clean_excluded']} right labels excluded · {out['n_reviewed']} images reviewed.")

# ------------------------------------------------------------------ manifest & Label Studio
# A plain download does not rerun the page (on_click="ignore"): a rerun under way would replace
# the other buttons while the reviewer reaches for the next one.
st.subheader("Cleaned manifest and Label Studio")
c1, c2, c3 = st.columns(3)
c1.download_button("Download cleaned manifest (CSV)", _file("manifest"),
                   file_name=f"cleaned-{run.dir.name}.csv", mime="text/csv", key="dl_manifest", on_click="ignore",
                   help="path,label — excluded images dropped, corrected labels applied; "
                        "paths relative to the dataset folder. Reads back into turn_core unchanged.")
c2.download_button(f"Download Label Studio tasks ({n_suspects} suspects)", _file("label_studio"),
                   file_name=f"label_studio_tasks-{run.dir.name}.json", mime="application/json",
                   key="dl_ls", on_click="ignore", help="Predictions with a `score` for each suspect, most suspicious first.")
c2.download_button("Download Label Studio config (XML)", ex.label_studio_config(run.classes).encode("utf-8"),
                   file_name="label_studio_config.xml", mime="application/xml", key="dl_ls_cfg",
                   on_click="ignore")
if c3.button("Write every export to disk", key="ex_write_all"):
    try:
        paths = ex.export_all(run.dir)
        st.success("Written:\n" + "\n".join(f"- `{p}`" for p in paths.values()))
    except Exception as e:  # noqa: BLE001
        st.error(f"Could not write the exports: {e}")

# ------------------------------------------------------------------ new run on the cleaned data
st.subheader("Train again on the cleaned labels")
st.caption("Writes the cleaned manifest next to the dataset and starts a new run on it with the same settings.")
job = sh.current_job_snapshot()
busy = bool(job and job.get("state") == "running")
if busy:
    st.warning("A run is training on this server; one run at a time.")
if st.button("Start a new run on the cleaned manifest", disabled=busy, key="ex_rerun"):
    try:
        cfg = ex.cleaned_run_config(run.dir, sh.runs_root())
        sh.registry().start(cfg)
    except InputError as e:
        st.error(str(e))
    except Exception as e:  # noqa: BLE001 - BusyError and the unexpected: one line for people
        st.error(f"Could not start: {type(e).__name__}: {e}")
    else:
        name = Path(cfg.out).name
        st.success(f"Manifest written to `{cfg.data}`; run {name} started.")
        sh.select_run(name)
        st.switch_page("pages/training.py")
