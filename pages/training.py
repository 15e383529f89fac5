"""Training: the live state of a run (app- or CLI-started), read from its run directory."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from pages import _shared as sh
from pages import _state as keys
from turn_core import views
from turn_core.rundir import Run

st.title("Training")


def target_dir() -> Path | None:
    d = sh.run_dir()
    if d is not None:
        return d
    job = sh.current_job_snapshot()
    if job and job.get("run_dir"):
        p = Path(str(job["run_dir"]))
        return p if p.is_dir() else None
    return None


d = target_dir()
if d is None:  # a started run is never missing here: JobRegistry.start writes its folder first
    st.info("No run selected. Start one on **Data & run**, or pick one in the sidebar.")
    st.stop()


def is_our_job(run_dir: Path) -> dict | None:
    job = sh.current_job_snapshot()
    if job and job.get("run_dir") and Path(str(job["run_dir"])).resolve() == run_dir.resolve():
        return job
    return None


def tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def progress(run_dir: Path, final: bool = False) -> dict:
    """``views.progress_summary`` of the run's events so far, through this session's
    ``views.EventTail``: a poll parses only the lines appended since the last one and folds them
    into the summary, never the whole events.jsonl again."""
    key = keys.event_tail(str(run_dir))
    tail = st.session_state.get(key)
    if not isinstance(tail, views.EventTail):
        tail = st.session_state[key] = views.EventTail(run_dir / "events.jsonl")
    tail.read(final=final)
    return tail.summary()


def render(run_dir: Path) -> str:
    run = Run(run_dir)
    status = run.status
    state = status.get("state")
    job = is_our_job(run_dir)
    if job and job.get("state") == "failed" and state != "failed":
        state, status = "failed", dict(status, error=job.get("error"))
    st.markdown(f"**Run {run_dir.name}** · {sh.state_label(state)} · method "
                f"**{run.settings.get('method', status.get('method', '?'))}**")
    p = progress(run_dir, final=state != "running")

    if state == "running":
        c = st.columns(5)
        c[0].metric("Phase", p["phase_name"])
        c[1].metric("Epoch", f"{p['epoch']}/{p['epochs']}" if p["epochs"] else (p["epoch"] or "–"))
        c[2].metric("Step", f"{p['step']}/{p['steps']}" if p["steps"] else "–")
        ips = p["images_per_s"]
        c[3].metric("Images/s", f"{ips:,.0f}" if isinstance(ips, (int, float)) else "–")
        c[4].metric("ETA (phase)", views.fmt_seconds(p["eta_s"]))
        if p["fraction"] is not None:
            st.progress(p["fraction"], text=f"{p['phase_name']}: {p['fraction']:.0%}")
        if status.get("provisional"):
            st.info("The first suspects are ready (provisional: pretrained features). Review them now; "
                    "your decisions are kept when the final scores replace them.")
            st.page_link("pages/review.py", label="Review the provisional suspects", icon=":material/fact_check:")
        if job:
            if st.button("Cancel run", key="cancel_run", type="secondary",
                         help="Stops within one batch; the run is kept as 'cancelled'."):
                sh.registry().cancel()
                st.toast("Cancelling…")
        else:
            st.caption(f"Started outside this server (pid {status.get('pid')} on {status.get('host')}): "
                       "stop it where it runs.")
    elif state == "finished":
        st.success("Finished. Next: **Loss distributions** to see why, **Review** to fix labels.")
        t = p.get("timings") or []
        total = [x["seconds"] for x in t if x.get("phase") == "done" and x.get("seconds")]
        if total:
            st.caption(f"Total time {views.fmt_seconds(total[-1])}")
    elif state in ("failed", "interrupted", "cancelled", "incomplete"):
        err = (status.get("error") or "no cause recorded").splitlines()[0]
        msg = f"{state.capitalize()}: {err}"
        if state == "failed":
            st.error(msg + f" — see run.log in `{run_dir}`")
            log = tail(run.log_path())
            if log:
                with st.expander("Last lines of run.log"):
                    st.code(log, language="text")
        else:
            st.warning(msg)
    for w in p["warnings"][-5:]:
        if w:
            st.warning(w)
    return state


def render_charts(run_dir: Path) -> None:
    import pandas as pd
    import plotly.express as px

    p = progress(run_dir)

    left, right = st.columns(2)
    with left:
        st.markdown("**Training loss**")
        rows = views.loss_curve_rows(p)
        fig = None
        if rows:
            fig = px.line(pd.DataFrame(rows), x="x", y="loss", facet_col="panel", labels={"x": "epoch"},
                          height=300)
            fig.update_xaxes(matches=None)
            fig.update_yaxes(matches=None, showticklabels=True)
            fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
        if fig is not None:
            fig.update_layout(margin=dict(l=10, r=10, t=30, b=10))
            st.plotly_chart(fig, width="stretch", key="loss_curve")
        else:
            st.caption("No loss reported yet.")
    with right:
        st.markdown("**Clean samples per class (FFT epochs)**")
        n_classes = len({r["class"] for r in p["clean"]})
        if p["clean"] and n_classes > views.GRID_MAX_CLASSES:
            # one line per class is unreadable at 1,000 classes: the fewest / median / most
            spread = pd.DataFrame(views.per_class_spread(p["kept"] or p["clean"], "kept" if p["kept"] else "clean"))
            fig = px.line(spread, x="epoch", y=spread.columns[-1], color="class", markers=True, height=300,
                          labels={spread.columns[-1]: "samples", "class": f"over {n_classes:,} classes"})
            fig.update_layout(margin=dict(l=10, r=10, t=10, b=10))
            st.plotly_chart(fig, width="stretch", key="clean_curve")
            drawn = pd.DataFrame(p["clean"]).groupby("epoch")["clean"].min()
            st.caption(f"Samples per class {'kept (passed τ)' if p['kept'] else 'in the clean set'}, the fewest, "
                       "median and most over the classes · drawn per class (n) by epoch: "
                       + ", ".join(f"{e}: {int(n)}" for e, n in drawn.items()))
        elif p["clean"]:
            df = pd.DataFrame(p["clean"])
            if p["kept"]:
                # kept = passed the GMM's τ; TURN then draws n = the smallest kept count from each
                # class, so the drawn counts are one line and the kept ones show why n is what it is.
                kept = pd.DataFrame(p["kept"])
                drawn = df.groupby("epoch", as_index=False)["clean"].min().assign(**{"class": "drawn per class (n)"})
                fig = px.line(pd.concat([kept.rename(columns={"kept": "clean"}), drawn]), x="epoch", y="clean",
                              color="class", markers=True, height=300, labels={"clean": "samples"})
                fig.for_each_trace(lambda t: t.update(line=dict(dash="dash", width=3))
                                   if t.name == "drawn per class (n)" else None)
            else:
                fig = px.line(df, x="epoch", y="clean", color="class", markers=True, height=300)
            fig.update_layout(margin=dict(l=10, r=10, t=10, b=10))
            st.plotly_chart(fig, width="stretch", key="clean_curve")
            taus = sorted({t["tau"] for t in p["tau"]})
            if taus:
                st.caption("Lines: samples per class whose clean posterior passed τ (kept); dashed: "
                           "how many TURN drew from each. τ per epoch: "
                           + ", ".join(f"{t['epoch']}: {t['tau']}" for t in p["tau"]))
            with st.expander("Table"):
                st.dataframe(df.pivot_table(index="epoch", columns="class", values="clean", aggfunc="last"),
                             width="stretch")
        else:
            st.caption("Filled in during full fine-tuning (TURN's GMM-selected clean set).")


# While a run goes, the status polls every second and the charts every 5 s: building plotly
# figures holds the GIL, and the training thread in this same process needs it.
@st.fragment(run_every=1.0)
def live_status(run_dir: Path) -> None:
    state = render(run_dir)
    if state != "running":
        st.rerun()  # the run ended: redraw the whole page without the timers


@st.fragment(run_every=5.0)
def live_charts(run_dir: Path) -> None:
    render_charts(run_dir)


first = Run(d).status.get("state")
if first == "running":
    live_status(d)
    live_charts(d)
else:
    render(d)
    render_charts(d)
