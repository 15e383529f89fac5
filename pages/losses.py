"""Loss distributions: per-sample CE loss per epoch with the run's GMM, and the suspicion cut-off."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from pages import _shared as sh
from pages import _state as keys
from turn_core import views
from turn_core.errors import InputError
from turn_core.review import save_cutoff

run, df = sh.page_preamble("Loss distributions", "This run has no samples.", shared=True)  # read only

cols = views.loss_columns(df)
truth = views.has_truth(df)
classes = run.classes or sorted(df["given_label"].unique())
gmm = run.gmm

# ------------------------------------------------------------------ histogram
st.subheader("Per-sample loss")
st.caption("TURN fits a two-component Gaussian mixture to these losses: samples the clean (low-loss) "
           "component explains with posterior ≥ τ are kept for fine-tuning; the rest are left out.")
if not cols:
    st.info("This run wrote no loss columns.")
else:
    c1, c2, c3 = st.columns([3, 2, 2])
    labels = [lab for lab, _ in cols]
    pick = c1.select_slider("Epoch", options=labels, value=labels[-1], key="loss_epoch") if len(labels) > 1 \
        else labels[0]
    col = dict(cols)[pick]
    cls = c2.selectbox("Class", ["All classes"] + list(classes), key="loss_class")
    split_opts = {"flagged": "kept / flagged"}
    if truth:
        split_opts["truth"] = "truly clean / noisy"
    split = c3.radio("Split bars by", list(split_opts), format_func=split_opts.get, key="loss_split",
                     horizontal=True)
    sub = df if cls == "All classes" else df[df["given_label"] == cls]
    values = sub[col].to_numpy(float)
    if len(values) == 0:
        st.info("No sample of this class.")
    else:
        hist = views.histogram(values, bins=40, groups=views.loss_groups(sub, split))
        colors = {"kept": "#4c78a8", "flagged": "#e45756", "truly clean": "#54a24b", "truly noisy": "#f58518"}
        fig = go.Figure()
        for name, counts in hist["counts"].items():
            fig.add_bar(x=hist["centers"], y=counts, name=name, width=hist["width"],
                        marker_color=colors.get(name), opacity=0.85)
        fit = views.gmm_for_class(views.gmm_for_column(gmm, col), list(classes),
                                  None if cls == "All classes" else cls)
        if fit:
            x = np.linspace(hist["edges"][0], hist["edges"][-1], 300)
            for name, y in views.gmm_curves(fit, x, len(values), hist["width"]).items():
                fig.add_scatter(x=x, y=y, mode="lines", name=f"GMM {name}",
                                line=dict(dash="dot" if "noisy" in name else "solid", width=2))
            xt = views.gmm_tau_loss(fit, float(hist["edges"][0]), float(hist["edges"][-1]))
            if xt is not None:
                fig.add_vline(x=xt, line_dash="dash", line_color="black",
                              annotation_text=f"clean posterior = τ ({fit.get('tau', run.settings.get('tau'))})")
        elif gmm and cls != "All classes":
            st.caption("The run fitted one GMM over all classes (the paper's setting): it is drawn "
                       "on the 'All classes' view.")
        fig.update_layout(barmode="stack", height=380, xaxis_title=f"cross-entropy loss ({pick})",
                          yaxis_title="images", margin=dict(l=10, r=10, t=30, b=10),
                          legend=dict(orientation="h", y=1.1))
        st.plotly_chart(fig, width="stretch", key="loss_hist")

# ------------------------------------------------------------------ cut-off
st.subheader("Suspicion cut-off")
st.caption("Images with suspicion ≥ the cut-off are the suspects: the Review queue, Export's `is_label_issue` "
           "and the Label Studio tasks. It starts where it picks as many images as the run flagged (its own "
           "rule); moved, it is saved with the run at once (`review.json`), so it survives a reload.")
rule = sh.suspects(run, df)
default = views.default_cutoff(df)
wkey = keys.cutoff_widget(run.dir.name)
_MESSAGE = "_loss_msg"             # an error a cut-off callback left for the page to show
shown = keys.cutoff(run.dir.name)   # the cut-off the slider was last set to from the run folder
if st.session_state.get(shown) != rule.cutoff or wkey not in st.session_state:
    # first visit, a reload, another tab moved it, or the final table replaced the provisional one
    st.session_state[wkey] = float(round(rule.cutoff, 4))
    st.session_state[shown] = rule.cutoff


def _save(value: float | None) -> None:
    try:
        save_cutoff(run.dir, value, table=run.table)
    except InputError as e:
        st.session_state[_MESSAGE] = f"Cut-off not saved: {e}"
        return
    st.session_state[shown] = float(value if value is not None else default)
    st.session_state[wkey] = float(round(st.session_state[shown], 4))


def _store() -> None:
    _save(float(st.session_state[wkey]))


def _reset() -> None:
    _save(None)


sh.flash(_MESSAGE, st.error)
c1, c2 = st.columns([4, 1])
c1.slider("Cut-off on the suspicion score", 0.0, 1.0, step=0.001, key=wkey, on_change=_store,
          format="%.3f")
c2.button("Reset to the run's rule", on_click=_reset, key="cutoff_reset")
rule = sh.suspects(run, df)
st.caption(f"Suspects now: {rule.describe()}."
           + (" A cut-off set on the provisional scores is not carried over to the final ones."
              if run.provisional else ""))
stats = views.cutoff_stats(df, rule.cutoff)
m = st.columns(4)
m[0].metric("Suspects at this cut-off", f"{stats['n_suspects']:,}",
            delta=f"{stats['n_suspects'] - int(views.flagged_mask(df).sum()):+d} vs. flagged by the run")
if truth:
    m[1].metric("Precision", f"{stats['precision']:.3f}")
    m[2].metric("Recall", f"{stats['recall']:.3f}")
    m[3].metric("F1", f"{stats['f1']:.3f}")
else:
    m[1].caption("Precision/recall need the true labels (demo or injected noise).")

left, right = st.columns(2)
with left:
    groups = views.loss_groups(df, "truth" if truth else "flagged")
    hist = views.histogram(df["suspicion"].to_numpy(float), bins=40, groups=groups, value_range=(0.0, 1.0))
    fig = go.Figure()
    for name, counts in hist["counts"].items():
        fig.add_bar(x=hist["centers"], y=counts, name=name, width=hist["width"], opacity=0.85)
    fig.add_vline(x=stats["threshold"], line_dash="dash", line_color="black", annotation_text="cut-off")
    fig.update_layout(barmode="stack", height=300, xaxis_title="suspicion", yaxis_title="images",
                      margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", y=1.15))
    st.plotly_chart(fig, width="stretch", key="susp_hist")
with right:
    if truth:
        pr = views.pr_curve(df)
        fig = go.Figure()
        fig.add_scatter(x=pr["recall"], y=pr["precision"], mode="lines", name="cut-off sweep",
                        customdata=pr["threshold"], hovertemplate="cut-off %{customdata:.2f}<br>"
                        "recall %{x:.2f}<br>precision %{y:.2f}")
        if "precision" in stats:
            fig.add_scatter(x=[stats["recall"]], y=[stats["precision"]], mode="markers", name="current",
                            marker=dict(size=12, color="black"))
        fig.update_layout(height=300, xaxis_title="recall", yaxis_title="precision",
                          xaxis_range=[0, 1.02], yaxis_range=[0, 1.02], margin=dict(l=10, r=10, t=30, b=10),
                          legend=dict(orientation="h", y=1.15))
        st.plotly_chart(fig, width="stretch", key="pr_curve")
    else:
        st.caption("The precision–recall curve appears when the true labels are known.")
st.page_link("pages/review.py", label=f"Review these {stats['n_suspects']} suspects", icon=":material/fact_check:")
