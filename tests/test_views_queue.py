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
