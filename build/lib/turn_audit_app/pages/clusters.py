"""Feature clusters: t-SNE / UMAP of the features before and after fine-tuning, side by side."""
from __future__ import annotations

import plotly.express as px
import streamlit as st

from pages import _shared as sh
from pages import _state as keys
from turn_core import views
from turn_core.projections import PROJECTIONS, cached, projection
from turn_core.review import record_decision

run, df = sh.page_preamble("Feature clusters")
if run.features("pre") is None:
    st.warning("This run saved no features (save_features was off), so there is nothing to project.")
    st.stop()

name = run.dir.name
truth = views.has_truth(df)
c1, c2, c3 = st.columns([2, 3, 3])
kind = c1.radio("Projection", list(PROJECTIONS), key="cl_method", horizontal=True,
                format_func=PROJECTIONS.get)
colour_opts = {"given_label": "given label", "predicted_label": "predicted label", "flagged": "flagged",
               "suggested_label": "suggested label"}
if truth:
    colour_opts["truth"] = "truly noisy / clean"
    colour_opts[views.TRUE_LABEL] = "true label"
colour = c2.selectbox("Colour by", list(colour_opts), format_func=colour_opts.get, key="cl_colour")
n = len(df)
if n > 500:
    opts = sorted({p for p in (500, 1000, 2000, 3000, 5000, 10000) if p < n} | {min(n, 3000)}
                  | ({n} if n <= 10000 else set()))
    max_points = int(c3.select_slider("Points drawn (subsample of large runs)", options=opts,
                                      value=min(n, 3000), key="cl_points"))
else:
    max_points = 3000
    c3.caption(f"All {n} images drawn.")
st.caption("Each dot is an image. Before fine-tuning the pretrained features group the classes loosely; "
           "after TURN's fine-tuning on the clean set they separate, and wrongly labelled images sit "
           "inside the cluster of their true class. Select a dot (click, box or lasso) to see it.")

plot_df = df.copy()
plot_df["flagged"] = plot_df["flagged"].map({1: "flagged", 0: "kept"}).fillna("kept")
if truth:
    plot_df["truth"] = ["noisy" if v else "clean" for v in views.truth_mask(df)]
    true_labels = views.true_labels(df)
    if true_labels is not None:  # runs written before the rename call the column clean_label
        plot_df[views.TRUE_LABEL] = true_labels
    else:
        colour_opts.pop(views.TRUE_LABEL)


@st.cache_data(show_spinner=False, max_entries=16)
def get_projection(run_dir: str, which: str, kind: str, max_points: int, stamp: float):
    return projection(run_dir, which=which, kind=kind, max_points=max_points, seed=0)


selected: list[int] = []
cols = st.columns(2)
for col, which, title in ((cols[0], "pre", "Before fine-tuning (pretrained)"),
                          (cols[1], "post", "After fine-tuning")):
    with col:
        st.markdown(f"**{title}**")
        if run.features(which) is None:
            st.caption("Not available: this method does not fine-tune the backbone.")
            continue
        hit = cached(run.dir, which, kind, max_points, 0)
        try:
            if hit is None:
                with st.spinner(f"Computing {PROJECTIONS[kind]} of {min(n, max_points)} points "
                                f"(once per run; UMAP's first fit compiles for ~15 s)…"):
                    idx, xy = get_projection(str(run.dir), which, kind, max_points,
                                             sh.file_stamp(run.dir / f"features_{which}.npy"))
            else:
                idx, xy = hit
        except Exception as e:  # noqa: BLE001
            st.error(f"Could not compute the projection: {type(e).__name__}: {e}")
            continue
        sub = plot_df.iloc[idx].copy()
        sub["x"], sub["y"] = xy[:, 0], xy[:, 1]
        fig = px.scatter(sub, x="x", y="y", color=colour, custom_data=["index"],
                         hover_data={"index": True, "given_label": True, "suggested_label": True,
                                     "suspicion": ":.2f", "x": False, "y": False},
                         category_orders={colour: sorted(map(str, sub[colour].unique()))}, height=480)
        fig.update_traces(marker=dict(size=5, opacity=0.8))
        fig.update_layout(margin=dict(l=10, r=10, t=10, b=10), xaxis_title=None, yaxis_title=None,
                          legend=dict(orientation="h", y=-0.05), dragmode="select")
        fig.update_xaxes(showticklabels=False)
        fig.update_yaxes(showticklabels=False)
        ev = st.plotly_chart(fig, width="stretch", key=f"cl_{which}_{kind}_{name}", on_select="rerun",
                             selection_mode=("points", "box", "lasso"))
        try:
            pts = ev.selection.points if ev is not None else []
        except AttributeError:
            pts = (ev or {}).get("selection", {}).get("points", [])
        for p in pts or []:
            cd = p.get("customdata") if isinstance(p, dict) else None
            if cd:
                selected.append(int(cd[0]))

st.divider()
if not selected:
    st.caption("Nothing selected.")
    st.stop()
selected = list(dict.fromkeys(selected))
st.subheader(f"Selected: {len(selected)} image{'s' if len(selected) != 1 else ''}")
store = sh.review_store(run)


def _decide(index: int, decision: str, given: str, suggested: str) -> None:
    done = record_decision(store, index, decision, given=given, suggested=suggested,
                           reviewer=sh.reviewer_name())
    st.session_state[keys.REVIEW_TOAST if done.ok else keys.REVIEW_ERROR] = done.message


sh.flash(keys.REVIEW_TOAST, st.toast)
sh.flash(keys.REVIEW_ERROR, st.error)
dec = sh.decisions(store)
by_index = df.set_index("index", drop=False)
for i in selected[:12]:
    row = by_index.loc[i]
    a, b, c = st.columns([1, 3, 3])
    png = sh.thumb_png(run, i, 128)
    if png:
        a.image(png, width="stretch")
    b.markdown(f"**#{i}** `{row['path']}`  \ngiven **{row['given_label']}** · suggested "
               f"**{row['suggested_label']}** · suspicion {float(row['suspicion']):.2f}")
    d = dec.get(i)
    if d is not None:
        b.caption(f"Decision: {d.decision}" + (f" → {d.final_label}" if d.final_label else ""))
    x1, x2, x3 = c.columns(3)
    for col, decision, label, key in ((x1, "accept", "Accept", "cl_acc"), (x2, "keep", "Keep", "cl_keep"),
                                      (x3, "exclude", "Exclude", "cl_exc")):
        col.button(label, key=f"{key}_{i}", on_click=_decide,
                   args=(i, decision, str(row["given_label"]), str(row["suggested_label"])))
if len(selected) > 12:
    st.caption(f"… and {len(selected) - 12} more; narrow the selection to see them.")
