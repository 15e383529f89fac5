"""turn_core.views.queue: the reviewer's queue of suspects."""
from __future__ import annotations

from fakerun import CLASSES

from turn_core import views


def test_review_queue_order_filters_and_status(fake_df):
    q = views.review_queue(fake_df)
    assert len(q) == int(fake_df["flagged"].sum())
    assert list(q["suspicion"]) == sorted(q["suspicion"], reverse=True)
    q2 = views.review_queue(fake_df, cutoff=0.0)
    assert len(q2) == len(fake_df)
    first = int(q["index"].iloc[0])
    qd = views.review_queue(fake_df, decisions={first: {"decision": "accept"}})
    assert qd.loc[qd["index"] == first, "decision"].iloc[0] == "accept"
    assert first not in set(views.review_queue(fake_df, decisions={first: "keep"}, status="unreviewed")["index"])
    assert list(views.review_queue(fake_df, decisions={first: "keep"}, status="reviewed")["index"]) == [first]
    cls = CLASSES[2]
    qc = views.review_queue(fake_df, cutoff=0.0, classes=[cls])
    assert ((qc["given_label"] == cls) | (qc["suggested_label"] == cls)).all()
    pairs = views.pair_counts(q)
    g, s = pairs.iloc[0]["given_label"], pairs.iloc[0]["suggested_label"]
    qp = views.review_queue(fake_df, pair=(g, s))
    assert len(qp) == pairs.iloc[0]["count"]
    assert len(views.review_queue(None)) == 0


def test_paginate_and_next():
    assert views.paginate(25, 1, 10) == (0, 10, 3)
    assert views.paginate(25, 3, 10) == (20, 25, 3)
    assert views.paginate(25, 99, 10) == (20, 25, 3)
    assert views.paginate(0, 1, 10) == (0, 0, 1)
    assert views.next_in_queue([5, 6, 7], 5, {6: "accept"}) == 7
    assert views.next_in_queue([5, 6, 7], 7, {}) == 5
    assert views.next_in_queue([5], 5, {}) is None
    assert views.next_in_queue([], None) is None


def test_after_decision_and_step():
    assert views.after_decision([5, 6, 7], 5, {6: "accept"}) == 7
    assert views.after_decision([5, 6, 7], 6, {5: "keep", 6: "keep", 7: "keep"}) == 7  # all done: next
    assert views.after_decision([5, 6, 7], 7, {5: "keep", 6: "keep", 7: "keep"}) == 5  # wraps
    assert views.after_decision([5], 5, {5: "keep"}) == 5
    assert views.after_decision([], 5) is None
    assert views.step([5, 6, 7], 5, -1) == 7 and views.step([5, 6, 7], 7, 1) == 5
    assert views.step([5, 6, 7], 99, 1) == 6  # not in the queue: from the first
    assert views.step([], 5, 1) is None


def test_decision_name_of_every_form():
    from turn_core.review import Decision

    d = Decision(index=1, decision="relabel", final_label="dog", reviewer="", created_at=0.0)
    assert [views.decision_name(x) for x in (d, {"decision": "keep"}, "exclude", None)] == [
        "relabel", "keep", "exclude", ""]


# ------------------------------------------------------------------ the learning queue
def _decision(i, decision, label, t):
    from turn_core.review import Decision

    return Decision(index=i, decision=decision, final_label=label, reviewer="", created_at=t, id=int(t))


def test_trusted_labels_and_changed_decisions():
    from turn_core import rerank
    from turn_core.views import queue as vq

    dec = {4: _decision(4, "relabel", "dog", 2.0), 1: _decision(1, "keep", "cat", 3.0),
           7: _decision(7, "exclude", None, 1.0)}
    idx, lab = vq.trusted_labels(dec, ["cat", "dog"])
    # oldest decision first: the learning queue's hedge holds out the latest ones
    assert idx.tolist() == [7, 4, 1] and lab.tolist() == [rerank.UNKNOWN, 1, 0]
    assert vq.decisions_changed(dec, {1: "cat", 4: "cat", 7: "cat"}) == [True, True, False]
    assert not vq.learning_due(None, 24, every=25, start=25) and vq.learning_due(None, 25, every=25, start=25)
    assert not vq.learning_due({"n_decisions": 25}, 40, every=25, start=25)
    assert vq.learning_due({"n_decisions": 25}, 50, every=25, start=25)
    assert not vq.learning_due(None, 99, every=25, start=100)


def test_learned_order_reorders_and_admits_risen_images(fake_df):
    import numpy as np

    from turn_core.views import queue as vq

    n = len(fake_df)
    learned = np.zeros(n)
    low = int(fake_df.loc[fake_df["suspicion"] < 0.2, "index"].iloc[0])
    learned[low] = 0.99
    q = vq.review_queue(fake_df, cutoff=0.5, learned=learned)
    assert int(q["index"].iloc[0]) == low  # rose above the cut-off: it joins, first
    static = vq.review_queue(fake_df, cutoff=0.5)
    assert low not in set(static["index"]) and set(static["index"]) < set(q["index"])
    assert list(q["learned"]) == sorted(q["learned"], reverse=True)


def test_compute_learned_writes_a_file_the_page_reads_and_drops_when_stale(fake_run, monkeypatch):
    import os

    import numpy as np

    from turn_core import rerank
    from turn_core.rundir import atomic_save_npy
    from turn_core.views import queue as vq

    s = fake_run.samples()
    k = len(fake_run.classes)
    p = np.full((len(s), k), 1.0 / k, dtype=np.float32)
    atomic_save_npy(fake_run.dir / "cv_probs.npy", p[None])
    atomic_save_npy(fake_run.dir / "probs.npy", p)
    assert vq.can_learn(fake_run.dir)
    dec = {int(i): _decision(int(i), "keep", s.loc[i, "given_label"], float(i)) for i in range(40)}
    monkeypatch.setattr(rerank, "WARMUP", 40)
    out = vq.compute_learned(fake_run.dir, dec, fake_run.classes)
    got = vq.read_learned(fake_run.dir)
    assert got["n_decisions"] == 40 and np.allclose(got["suspicion"], out["suspicion"])
    # what the file holds is the learning queue's suspicion for those decisions (all "keep": the
    # hedge finds no changed label to learn from, so it is the static order)
    idx, lab = vq.trusted_labels(dec, fake_run.classes)
    want = rerank.learned_suspicion(rerank.base_from_run(fake_run), idx, lab)
    assert np.allclose(got["suspicion"], want, atol=1e-6)
    assert np.allclose(got["suspicion"], s["suspicion"].to_numpy(), atol=1e-6)
    later = os.stat(fake_run.dir / vq.LEARNED_FILE).st_mtime + 5
    os.utime(fake_run.dir / "samples.csv", (later, later))  # a new table (e.g. final after provisional)
    assert vq.read_learned(fake_run.dir) is None


def test_suspect_order_is_the_queue_order_and_ranks_ties_by_index():
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(4)
    n = 500
    suspicion = rng.integers(0, 20, n) / 20.0                    # many ties on purpose
    index = rng.permutation(n)                                    # rows not in index order
    learned = rng.random(n)
    for cutoff, lrn in ((0.5, None), (0.0, None), (0.7, learned), (1.1, None)):
        order = views.suspect_order(suspicion, index, cutoff, learned=lrn)
        key = suspicion if lrn is None else learned[index]
        sel = [r for r in range(n) if suspicion[r] >= cutoff or (lrn is not None and key[r] >= cutoff)]
        assert order.tolist() == sorted(sel, key=lambda r: (-key[r], index[r]))
    flagged = rng.random(n) < 0.3
    assert set(views.suspect_order(suspicion, index, None, flagged=flagged).tolist()) == set(np.flatnonzero(flagged))
    df = pd.DataFrame({"index": index, "suspicion": suspicion, "flagged": flagged.astype(int),
                       "given_label": rng.choice(list("abc"), n), "suggested_label": rng.choice(list("abc"), n)})
    dec = {int(i): "keep" for i in index[::9]}
    for kw in ({"cutoff": 0.5}, {"cutoff": 0.3, "learned": learned}, {"cutoff": None}):
        order = views.suspect_order(suspicion, index, kw["cutoff"], learned=kw.get("learned"),
                                    flagged=flagged if kw["cutoff"] is None else None)
        cached = views.review_queue(df, decisions=dec, order=order, **kw)
        assert cached.equals(views.review_queue(df, decisions=dec, **kw))
        for f in ({"status": "unreviewed"}, {"classes": ["a"]}, {"pair": ("a", "b"), "status": "reviewed"}):
            assert views.filter_queue(cached, **f).equals(views.review_queue(df, decisions=dec, **kw, **f))


def test_error_count_reads_the_runs_ensemble_and_refuses_a_mismatch(fake_run, fake_df):
    import numpy as np

    from turn_core import rerank
    from turn_core.views import queue as vq

    given = fake_df["given_label"].astype(str).to_numpy()
    classes = list(fake_run.classes)
    assert vq.error_count(fake_run.dir, given, classes) is None   # the fake run saved no ensemble
    idx = np.array([classes.index(g) for g in given])
    probs = np.full((len(given), len(classes)), 0.02)
    probs[np.arange(len(given)), idx] = 1.0
    probs[:12] = np.roll(probs[:12], 1, axis=1)                  # 12 rows whose ensemble names another class
    probs /= probs.sum(axis=1, keepdims=True)
    np.save(fake_run.dir / "ensemble_probs.npy", probs.astype(np.float32))
    got = vq.error_count(fake_run.dir, given, classes)
    assert got == rerank.error_count(idx, probs) and 8 <= got <= 16
    assert vq.error_count(fake_run.dir, given[:-1], classes) is None            # rows do not match
    assert vq.error_count(fake_run.dir, given, classes + ["extra"]) is None      # classes do not match
