"""Review: suspects ranked by suspicion (or by the learning queue); accept / relabel / keep /
exclude, stored at once; near-duplicate conflicts decided as pairs; the original image in focus."""
from __future__ import annotations

import sqlite3

import numpy as np
import streamlit as st

from pages import _shared as sh
from pages import _state as keys
from turn_core import rerank, views
from turn_core.duplicates import NEAR_DUPLICATE_SIMILARITY
from turn_core.errors import InputError
from turn_core.review import accept_suggestions, record_decision
from turn_core.views import images as vi
from turn_core.views import queue as vq

# Only the columns this page shows, shared between reruns (no copy of the table per rerun);
# rows are labelled by sample index, so ``df.loc[i]`` is image i.
COLUMNS = ["path", "given_label", "suggested_label", "suspicion", "flagged", "confidence", "knn_agreement"]
run, df = sh.page_preamble("Review", names=COLUMNS)
store = sh.review_store(run)

name = run.dir.name
classes = run.classes or sorted(set(df["given_label"]) | set(df["suggested_label"]))
cutoff = sh.cutoff_for(run, df)
dec = sh.decisions(store)
by_index = df
MAX_PAIRS = 200   # pairs the "Given → suggested" filter offers (most frequent first; 1,000 classes make more)

# ------------------------------------------------------------------ the learning queue
# Never on the decision path: the page reads the last re-ranking from the run dir and, when
# rerank.REFRESH_EVERY decisions have come since, asks a thread for the next one.
learnable = vq.can_learn(run.dir)
learned = vq.read_learned(run.dir) if learnable else None
if learned is not None and len(learned["suspicion"]) != len(df):
    learned = None
if learnable and vq.learning_due(learned, len(dec)):
    vq.start_learning(run.dir, dec, classes)
mode = st.radio("Review", ["suspects", "duplicate conflicts"], key=keys.review("mode", name), horizontal=True,
                help="Duplicate conflicts: near-identical images with different given labels, decided as a pair.")
order = st.radio("Order", ["learned", "original"], key=keys.review("order", name), horizontal=True,
                 disabled=learned is None,
                 help="Learned: re-ranked every few decisions from what you decided (reviewed labels are "
                      "trusted in the neighbour vote and a refitted probe). Original: the run's suspicion.")
use_learned = order == "learned" and learned is not None
lsusp = learned["suspicion"] if use_learned else None

# ------------------------------------------------------------------ filters
# The order is cached per (table, cut-off, re-ranking); a rerun adds the decisions of the suspects.
full_queue = views.review_queue(df, cutoff=cutoff, decisions=dec, learned=lsusp,
                                order=sh.queue_order(run, df, cutoff, learned if use_learned else None))
n_rev = int((full_queue["decision"] != "").sum()) if len(full_queue) else 0
st.markdown(f"### {n_rev} of {len(full_queue)} suspects reviewed")
st.progress(n_rev / len(full_queue) if len(full_queue) else 1.0)
st.caption(f"Queue: suspicion ≥ {cutoff:.3f} (move it on **Loss distributions**) · "
           f"{len(dec)} decisions stored in `review.sqlite` · reviewer **{sh.reviewer_name()}**")
rev_idx = [int(i) for i in dec if int(i) in df.index]
given_of = dict(zip(rev_idx, df["given_label"].reindex(rev_idx).astype(str)))  # the reviewed images only
changed = vq.decisions_changed(dec, given_of)
rate = rerank.hit_rate(changed)
# The run's own suspicion, never the learned order's rank blend: only it is a probability-like score.
susp_run = df["suspicion"].reindex(range(len(df))).to_numpy(float)
unrev = full_queue.loc[full_queue["decision"] == "", "index"].to_numpy(int)
rev_changed = [bool(given_of.get(int(i)) != getattr(dec[i], "final_label", None)) for i in rev_idx]
count = sh.error_count(run, df, classes)
left_queue = rerank.errors_left(susp_run, unrev, susp_run[rev_idx], rev_changed, count=count)
left_all = rerank.errors_left(susp_run, np.setdiff1d(np.arange(len(df)), rev_idx), susp_run[rev_idx],
                              rev_changed, count=count)
h1, h2, h3 = st.columns(3)
h1.metric(f"Hit rate (last {min(len(changed), rerank.HIT_WINDOW)})", "—" if rate is None else f"{rate:.0%}",
          help="Share of your recent decisions that changed a label. When it falls low, the rest of the "
               "queue holds few errors.")
h2.metric("Errors left in the queue (estimate)", f"{left_queue:.0f}",
          help="The errors you found, times the share of the score's weight on the unreviewed images "
               "against the reviewed ones; at most the run's count of wrong labels minus those found. "
               "Off by about a third on average on the benchmark runs (BENCHMARKS.md §3).")
h2.caption(f"{left_all:.0f} left in the whole data set, below the cut-off included")
if not learnable:
    h3.caption("Learning queue: this run has no saved probabilities to re-rank from.")
elif learned is None:
    h3.caption(f"Learning queue: starts after {rerank.WARMUP} decisions"
               + (" · re-ranking…" if vq.busy(run.dir) else ""))
else:
    h3.caption(f"Learning queue: re-ranked after {learned['n_decisions']} decisions "
               f"({learned['seconds']:.1f} s)" + (" · re-ranking…" if vq.busy(run.dir) else "")
               + ("" if use_learned else " · showing the original order"))

status_key = keys.review("status", name)
f1, f2, f3, f4 = st.columns([3, 3, 2, 1])
cls_filter = f1.multiselect("Class (given or suggested)", classes, key=keys.review("cls", name))
pairs = views.pair_counts(full_queue).head(MAX_PAIRS)
pair_map = {f"{r.given_label} → {r.suggested_label} ({int(r.count)})": (r.given_label, r.suggested_label)
            for r in pairs.itertuples()}
pair_pick = f2.selectbox("Given → suggested", ["All pairs"] + list(pair_map), key=keys.review("pair", name))
status = f3.radio("Show", ["unreviewed", "all", "reviewed"], key=status_key, horizontal=True)
per_page = int(f4.selectbox("Per page", [12, 24, 48], key=keys.review("pp", name)))
queue = views.filter_queue(full_queue, classes=cls_filter or None, pair=pair_map.get(pair_pick), status=status)
qidx = [int(i) for i in queue["index"]]

cur_key = keys.review("cur", name)
cur = st.session_state.get(cur_key)
if cur not in qidx:
    cur = qidx[0] if qidx else None
    st.session_state[cur_key] = cur


# ------------------------------------------------------------------ actions (callbacks)
def _report(done) -> bool:
    st.session_state[keys.REVIEW_TOAST if done.ok else keys.REVIEW_ERROR] = done.message
    return done.ok


def _decide(index: int, decision: str, picked: str | None = None) -> None:
    row = by_index.loc[index]
    done = record_decision(store, index, decision, given=str(row["given_label"]),
                           suggested=str(row["suggested_label"]), picked=picked, reviewer=sh.reviewer_name())
    if _report(done):
        st.session_state[cur_key] = views.after_decision(qidx, index, store.latest())


def _relabel(index: int) -> None:
    label = st.session_state.get(keys.review("relabel", name))
    if label:
        _decide(index, "relabel", label)


def _undo() -> None:
    try:
        d = store.undo_last(sh.reviewer_name())
    except InputError as e:  # storage trouble: say so, like a decision that was not stored
        st.session_state[keys.REVIEW_ERROR] = f"Not undone: {e}"
        return
    if d is None:
        st.session_state[keys.REVIEW_TOAST] = "Nothing to undo"
        return
    st.session_state[keys.REVIEW_TOAST] = f"Undid #{d.index} ({d.decision})"
    st.session_state[cur_key] = int(d.index)
    if st.session_state.get(status_key) == "reviewed":  # make sure the undone image shows again
        st.session_state[status_key] = "all"


def _step(delta: int) -> None:
    st.session_state[cur_key] = views.step(qidx, st.session_state.get(cur_key), delta)


def _open(index: int) -> None:
    st.session_state[cur_key] = int(index)


def _accept_page(indices: list[int]) -> None:
    _report(accept_suggestions(store, [(i, by_index.loc[i, "suggested_label"]) for i in indices],
                               sh.reviewer_name()))


def _decide_pair(a: int, b: int, label_a: str, label_b: str, choice: str) -> None:
    try:  # both decisions in one transaction: a pair is decided together or not at all
        store.record_many(vq.conflict_decisions(a, b, label_a, label_b, choice), sh.reviewer_name())
    except (InputError, OSError, sqlite3.Error) as e:
        st.session_state[keys.REVIEW_ERROR] = f"Not stored: {e}"
        return
    st.session_state[keys.REVIEW_TOAST] = f"#{a} and #{b}: {choice}"


sh.flash(keys.REVIEW_TOAST, st.toast)
sh.flash(keys.REVIEW_ERROR, st.error)


@st.cache_data(show_spinner=False, max_entries=64)
def _original_png(dataset: dict, path: str, zoom: float, stamp: float) -> tuple[bytes | None, str]:
    img, note = vi.original_image(dataset, path)
    if img is None:
        return None, note
    return views.png_bytes(vi.zoom(img, zoom), min_side=1), note


def _conflicts() -> None:
    """The near-duplicate conflicts: two images side by side, one decision for both."""
    table = vq.read_duplicates(run.dir)
    if table is None:
        vq.start_duplicates(run.dir)
        st.info("Looking for near-duplicates in the background; this view fills in on the next rerun.")
        st.button("Refresh", key="rv_dup_refresh")
        return
    exact = table[table["kind"] == "exact"]
    cq = vq.conflict_queue(table, dec, status="unreviewed")
    total = len(vq.conflict_queue(table, status="all"))
    st.markdown(f"### {total - len(cq)} of {total} duplicate conflicts decided")
    st.caption(f"Pairs with cosine similarity ≥ {NEAR_DUPLICATE_SIMILARITY:.2f} on the pretrained features, or "
               f"identical pixels, whose given labels differ · {len(exact)} more identical pairs share a label")
    if len(cq) == 0:
        st.success("No undecided duplicate conflict.")
    else:
        r = cq.iloc[0]
        a, b, la, lb = int(r["a"]), int(r["b"]), str(r["label_a"]), str(r["label_b"])
        c1, c2 = st.columns(2)
        for col, i, lab in ((c1, a, la), (c2, b, lb)):
            with col:
                png = sh.thumb_png(run, i, min_side=256)
                if png:
                    st.image(png, width="stretch", caption=str(by_index.loc[i, "path"]))
                st.markdown(f"**#{i}: {lab}**")
        st.caption(f"Similarity {float(r['similarity']):.3f} · {r['kind']}")
        d1, d2, d3, d4 = st.columns(4)
        d1.button(f"Both are {la}", key="rv_pair_a", on_click=_decide_pair, args=(a, b, la, lb, "a"), width="stretch")
        d2.button(f"Both are {lb}", key="rv_pair_b", on_click=_decide_pair, args=(a, b, la, lb, "b"), width="stretch")
        d3.button("Keep both labels", key="rv_pair_keep", on_click=_decide_pair, args=(a, b, la, lb, "keep"),
                  width="stretch")
        d4.button("Exclude both", key="rv_pair_exclude", on_click=_decide_pair, args=(a, b, la, lb, "exclude"),
                  width="stretch")
    if len(exact):
        with st.expander(f"Identical images with the same label ({len(exact)} pairs)"):
            st.dataframe(exact, hide_index=True, width="stretch")


if mode == "duplicate conflicts":
    st.divider()
    _conflicts()
    st.stop()

# ------------------------------------------------------------------ focus card
st.divider()
if cur is None:
    if len(full_queue) and status == "unreviewed":
        st.success("Every suspect in this view is reviewed. Export the result on **Export**.")
    else:
        st.info("No suspect matches these filters.")
    st.button("Undo my last decision", key="rv_undo_empty", on_click=_undo, shortcut="U")
else:
    row = by_index.loc[cur]
    d = dec.get(cur)
    left, mid, right = st.columns([2, 3, 3])
    with left:
        zoom = float(st.select_slider("Zoom", [1.0, 1.5, 2.0, 3.0, 4.0], key=keys.review("zoom", name),
                                      format_func=lambda z: f"{z:g}×"))
        dataset = run.config.get("dataset") or {}
        src = vi.original_path(dataset, str(row["path"]))
        full, note = _original_png(dataset, str(row["path"]), zoom, sh.file_stamp(src) if src else 0.0)
        if full:
            st.image(full, width="stretch")
            st.caption(f"`{row['path']}` · {note}")
        else:
            png = sh.thumb_png(run, cur, min_side=256)
            if png:
                st.image(png, width="stretch")
            st.caption(f"`{row['path']}` · thumbnail ({note})")
        pos = qidx.index(cur) + 1
        st.caption(f"Suspect {pos} of {len(qidx)} in this view · image #{cur}")
    with mid:
        st.markdown(f"**Given label:** {row['given_label']}")
        st.markdown(f"**Suggested label:** {row['suggested_label']}")
        m1, m2, m3 = st.columns(3)
        m1.metric("Suspicion", f"{float(row['suspicion']):.3f}")
        m2.metric("Confidence", f"{float(row['confidence']):.2f}",
                  help="Model probability of the suggested label.")
        m3.metric("Neighbours agree", f"{float(row['knn_agreement']):.0%}",
                  help="Share of nearest neighbours in feature space with the same given label.")
        if d is not None:
            st.info(f"Decision: **{d.decision}**" + (f" → {d.final_label}" if d.final_label else "")
                    + f" by {d.reviewer or 'anonymous'}")
        b1, b2 = st.columns(2)
        b1.button(f"Accept → {row['suggested_label']}", key="rv_accept", type="primary", shortcut="A",
                  on_click=_decide, args=(cur, "accept"), width="stretch")
        b2.button(f"Keep {row['given_label']}", key="rv_keep", shortcut="K",
                  on_click=_decide, args=(cur, "keep"), width="stretch")
        b3, b4 = st.columns(2)
        b3.button("Exclude / unclear", key="rv_exclude", shortcut="X",
                  on_click=_decide, args=(cur, "exclude"), width="stretch")
        b4.button("Undo my last", key="rv_undo", shortcut="U", on_click=_undo, width="stretch")
        r1, r2 = st.columns([3, 2])
        others = [c for c in classes if c != row["given_label"]] or classes
        r1.selectbox("Another class", others, key=keys.review("relabel", name), label_visibility="collapsed")
        r2.button("Relabel", key="rv_relabel_btn", shortcut="L", on_click=_relabel, args=(cur,),
                  width="stretch")
        n1, n2 = st.columns(2)
        n1.button("◀ Previous", key="rv_prev", shortcut="P", on_click=_step, args=(-1,), width="stretch")
        n2.button("Next ▶", key="rv_next", shortcut="N", on_click=_step, args=(1,), width="stretch")
        st.caption("Keys: **A** accept · **K** keep · **X** exclude · **L** relabel · **U** undo · "
                   "**N**/**P** next/previous")
    with right:
        st.markdown("**Nearest neighbours** (feature space)")
        # Row `cur` of the run's saved neighbours: no search per click. A run from before they
        # were saved searches them once, here, and saves them.
        if views.needs_search(run):
            with st.spinner("Finding every image's neighbours once for this run…"):
                nb = views.run_neighbour_table(run, df, cur, k=8)
        else:
            nb = views.run_neighbour_table(run, df, cur, k=8)
        if len(nb) == 0:
            st.caption("No features saved for this run.")
        else:
            vote = views.neighbour_vote(nb)
            st.caption("Their given labels: " + ", ".join(f"{k} × {v}" for k, v in vote.items()))
            grid = st.columns(4)
            for j, r in enumerate(nb.itertuples()):
                with grid[j % 4]:
                    p = sh.thumb_png(run, int(r.index), 64)
                    if p:
                        st.image(p, width="stretch")
                    st.caption(f"{r.given_label} · {r.similarity:.2f}")
    hist = store.history(cur)
    if hist:
        with st.expander(f"History of image #{cur} ({len(hist)})"):
            import pandas as pd

            st.dataframe(pd.DataFrame([{"when": views.fmt_time(h.created_at), "decision": h.decision,
                                        "final_label": h.final_label, "reviewer": h.reviewer} for h in hist]),
                         hide_index=True, width="stretch")

# ------------------------------------------------------------------ page grid
st.divider()
if qidx:
    pkey = keys.review("page", name)
    start, stop, n_pages = views.paginate(len(qidx), int(st.session_state.get(pkey, 1)), per_page)
    page = start // per_page + 1
    top1, top2 = st.columns([3, 2])
    top1.markdown(f"**Suspects {start + 1}–{stop} of {len(qidx)}**")
    page_items = qidx[start:stop]
    unrev = [i for i in page_items if not views.decision_name(dec.get(i))]
    top2.button(f"Accept all {len(unrev)} unreviewed suggestions on this page", key="rv_bulk",
                disabled=not unrev, on_click=_accept_page, args=(unrev,))
    ncol = 6
    for r0 in range(0, len(page_items), ncol):
        cols = st.columns(ncol)
        for c, i in zip(cols, page_items[r0:r0 + ncol]):
            row = by_index.loc[i]
            with c:
                p = sh.thumb_png(run, i, 96)
                if p:
                    st.image(p, width="stretch")
                dn = views.decision_name(dec.get(i))
                mark = f" · **{dn}**" if dn else ""
                st.caption(f"{row['given_label']} → {row['suggested_label']} · {float(row['suspicion']):.2f}{mark}")
                st.button("Open" if i != cur else "● Open", key=f"rv_open_{i}", on_click=_open, args=(i,),
                          width="stretch")
    if n_pages > 1:
        st.pagination(n_pages, default=page, key=pkey)
