"""Unit tests of turn_core.views and turn_core.projections on synthetic run directories."""
from __future__ import annotations

import numpy as np
import pytest

from fakerun import CLASSES, make_fake_run
from turn_core import projections, views
from turn_core.errors import InputError
from turn_core.metrics import detection_metrics
from turn_core.rundir import Run, list_runs


@pytest.fixture()
def run(tmp_path):
    return Run(make_fake_run(tmp_path / "r", n=80, seed=3))


@pytest.fixture()
def df(run):
    return run.samples()


def test_truth_and_masks(df):
    assert views.has_truth(df)
    y = views.truth_mask(df)
    assert y.dtype == bool and y.sum() == int(df["is_noisy"].sum())
    assert views.flagged_mask(df).sum() == int(df["flagged"].sum())
    assert not views.has_truth(df.drop(columns=["is_noisy"]))
    assert not views.has_truth(None)


def test_loss_columns_in_training_order(df):
    cols = views.loss_columns(df)
    assert [c for _, c in cols] == ["loss_lp", "loss_fft_1", "loss_fft_2"]
    d2 = df.rename(columns={"loss_fft_2": "loss_fft_10"})
    assert [c for _, c in views.loss_columns(d2)][-1] == "loss_fft_10"


def test_confusion_table_counts(df):
    t = views.confusion_table(df)
    assert t.values.sum() == len(df)
    assert list(t.index) == list(t.columns)
    for g in set(df["given_label"]):
        for s in set(df["suggested_label"]):
            n = int(((df["given_label"] == g) & (df["suggested_label"] == s)).sum())
            assert t.loc[g, s] == n
    assert views.confusion_table(df, only_flagged=True).values.sum() == int(df["flagged"].sum())


def test_noise_per_class(df):
    t = views.noise_per_class(df)
    assert t["images"].sum() == len(df)
    assert t["flagged"].sum() == int(df["flagged"].sum())
    row = t.iloc[0]
    sub = df[df["given_label"] == row["class"]]
    assert row["estimated_noise_rate"] == pytest.approx(sub["flagged"].mean())
    assert row["true_noise_rate"] == pytest.approx(sub["is_noisy"].mean())
    assert "true_noise_rate" not in views.noise_per_class(df.drop(columns=["is_noisy"])).columns
    assert len(views.noise_per_class(None)) == 0


def test_detection_summary_prefers_metrics_then_computes(df, run):
    from_metrics = views.detection_summary(df, run.metrics)
    computed = views.detection_summary(df, {})
    exp = detection_metrics(df["is_noisy"].astype(bool), df["flagged"].astype(bool), df["suspicion"])
    assert computed["f1"] == pytest.approx(exp["f1"])
    assert from_metrics["precision"] == pytest.approx(exp["precision"])
    assert views.detection_summary(df.drop(columns=["is_noisy"]), {}) is None


def test_runs_table(tmp_path):
    make_fake_run(tmp_path / "a", n=20)
    make_fake_run(tmp_path / "b", n=20, state="failed")
    t = views.runs_table(list_runs(tmp_path))
    assert set(t["run"]) == {"a", "b"}
    assert set(t["status"]) == {"finished", "failed"}
    assert t.loc[t["run"] == "b", "error"].iloc[0].startswith("boom")


def test_progress_summary_live_and_epochs():
    t0 = 1000.0
    ev = [{"t": t0, "phase": "lp", "kind": "epoch", "epoch": 1, "epochs": 2, "loss": 1.0},
          {"t": t0 + 1, "phase": "fft", "kind": "step", "epoch": 1, "epochs": 4, "step": 5, "steps": 10,
           "loss": 0.7, "images_per_s": 123.0},
          {"t": t0 + 2, "phase": "fft", "kind": "epoch", "epoch": 1, "epochs": 4, "loss": 0.6, "tau": 0.5,
           "clean_per_class": {"a": 3, "b": 4}},
          {"t": t0 + 3, "phase": "fft", "kind": "warning", "message": "careful"},
          {"t": t0 + 3, "phase": "fft", "kind": "gmm", "epoch": 2, "kept_per_class": {"a": 9, "b": 4}}]
    p = views.progress_summary(ev, now=t0 + 11)
    assert p["phase"] == "fft" and p["phase_name"] == "full fine-tuning"
    assert p["epoch"] == 1 and p["epochs"] == 4 and p["images_per_s"] == 123.0
    assert p["fraction"] == pytest.approx(0.25)
    assert p["eta_s"] == pytest.approx(10 * 3)  # 10 s for a quarter → 30 s left
    assert {r["class"]: r["clean"] for r in p["clean"]} == {"a": 3, "b": 4}
    assert p["tau"] == [{"epoch": 1, "tau": 0.5}]
    assert p["warnings"] == ["careful"]
    assert {r["class"]: r["kept"] for r in p["kept"]} == {"a": 9, "b": 4}
    assert [r["phase"] for r in p["loss_epochs"]] == ["lp", "fft"]
    empty = views.progress_summary([])
    assert empty["phase"] is None and empty["fraction"] is None
    # the chart: LP per epoch and FFT per step, in separate panels (different losses)
    rows = views.loss_curve_rows(p)
    assert [(r["panel"].split()[0], r["x"], r["loss"]) for r in rows] == [("LP", 1, 1.0), ("FFT", 0.5, 0.7)]
    no_steps = views.progress_summary([e for e in ev if e["kind"] != "step"])
    assert [(r["panel"], r["x"]) for r in views.loss_curve_rows(no_steps)] == [
        ("LP (GCE, per epoch)", 1), ("FFT (CE, per epoch)", 1)]
    assert views.loss_curve_rows(empty) == []


def test_fmt_seconds():
    assert views.fmt_seconds(None) == "–"
    assert views.fmt_seconds(5) == "5 s"
    assert views.fmt_seconds(125) == "2 min 05 s"
    assert views.fmt_seconds(3 * 3600 + 120) == "3 h 02 min"


def test_histogram_groups_share_bins(df):
    groups = views.loss_groups(df, "flagged")
    h = views.histogram(df["loss_lp"], bins=10, groups=groups)
    assert len(h["edges"]) == 11
    assert sum(c.sum() for c in h["counts"].values()) == len(df)
    assert h["counts"]["flagged"].sum() == int(df["flagged"].sum())
    ht = views.histogram(df["loss_lp"], bins=10, groups=views.loss_groups(df, "truth"))
    assert set(ht["counts"]) == {"truly clean", "truly noisy"}
    assert views.histogram([np.nan, np.nan], bins=5)["counts"]["all"].sum() == 0


def test_gmm_mapping_matches_pipeline_layout():
    gmm = [{"epoch": 1, "tau": 0.5, "means": [0.1, 0.8]},
           {"epoch": 2, "tau": 0.5, "means": [0.2, 0.7]},
           {"epoch": 2, "final": True, "tau": 0.5, "means": [0.3, 0.9]}]
    assert views.gmm_for_column(gmm, "loss_lp")["means"] == [0.1, 0.8]
    assert views.gmm_for_column(gmm, "loss_fft_1")["means"] == [0.2, 0.7]
    assert views.gmm_for_column(gmm, "loss_fft_2")["means"] == [0.3, 0.9]
    assert views.gmm_for_column([], "loss_lp") is None
    assert views.gmm_for_column(gmm, "other") is None


def test_gmm_curves_integrate_to_counts_and_minmax_transform():
    g = {"means": [0.2, 0.7], "variances": [0.01, 0.02], "weights": [0.7, 0.3], "clean_component": 0}
    x = np.linspace(-1, 2, 4001)
    c = views.gmm_curves(g, x, n=100, bin_width=0.1)
    assert set(c) == {"clean component", "noisy component"}
    total = sum(np.trapezoid(v, x) for v in c.values())
    assert total == pytest.approx(100 * 0.1, rel=1e-3)
    # Fitted on (loss − lo)/(hi − lo): the raw-axis curve has the same area.
    g2 = dict(g, lo=0.0, hi=4.0)
    x2 = np.linspace(-4, 8, 8001)
    c2 = views.gmm_curves(g2, x2, n=100, bin_width=1.0)
    assert sum(np.trapezoid(v, x2) for v in c2.values()) == pytest.approx(100, rel=1e-3)
    assert x2[np.argmax(c2["clean component"])] == pytest.approx(0.8, abs=0.01)
    xt = views.gmm_tau_loss(dict(g, tau=0.5), 0.0, 1.0)
    assert 0.2 < xt < 0.7


def test_default_cutoff_flags_as_many_as_the_run(df):
    t = views.default_cutoff(df)
    assert int((df["suspicion"] >= t).sum()) >= int(df["flagged"].sum())
    s = views.cutoff_stats(df, t)
    assert s["n_flagged"] == int((df["suspicion"] >= t).sum())
    exp = detection_metrics(df["is_noisy"].astype(bool), df["suspicion"] >= t)
    assert s["precision"] == pytest.approx(exp["precision"]) and s["recall"] == pytest.approx(exp["recall"])
    none_flagged = df.assign(flagged=0)
    assert int((none_flagged["suspicion"] >= views.default_cutoff(none_flagged)).sum()) == 0
    assert "precision" not in views.cutoff_stats(df.drop(columns=["is_noisy"]), 0.5)


def test_pr_curve_monotone_flag_count(df):
    pr = views.pr_curve(df, points=11)
    assert len(pr) == 11
    assert list(pr["n_flagged"]) == sorted(pr["n_flagged"], reverse=True)
    assert pr["recall"].iloc[0] == pytest.approx(1.0)


def test_review_queue_order_filters_and_status(df):
    q = views.review_queue(df)
    assert len(q) == int(df["flagged"].sum())
    assert list(q["suspicion"]) == sorted(q["suspicion"], reverse=True)
    q2 = views.review_queue(df, cutoff=0.0)
    assert len(q2) == len(df)
    first = int(q["index"].iloc[0])
    qd = views.review_queue(df, decisions={first: {"decision": "accept"}})
    assert qd.loc[qd["index"] == first, "decision"].iloc[0] == "accept"
    assert first not in set(views.review_queue(df, decisions={first: "keep"}, status="unreviewed")["index"])
    assert list(views.review_queue(df, decisions={first: "keep"}, status="reviewed")["index"]) == [first]
    cls = CLASSES[2]
    qc = views.review_queue(df, cutoff=0.0, classes=[cls])
    assert ((qc["given_label"] == cls) | (qc["suggested_label"] == cls)).all()
    pairs = views.pair_counts(q)
    g, s = pairs.iloc[0]["given_label"], pairs.iloc[0]["suggested_label"]
    qp = views.review_queue(df, pair=(g, s))
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


def test_nearest_neighbours_cosine(run, df):
    f = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], dtype=np.float32)
    idx, sims = views.nearest_neighbours(f, 0, k=2)
    assert list(idx) == [1, 2] and sims[0] > sims[1]
    assert len(views.nearest_neighbours(f[:1], 0)[0]) == 0
    feats = run.features("pre")
    t = views.neighbour_table(df, feats, 0, k=5)
    assert len(t) == 5 and 0 not in set(t["index"])
    assert list(t["given_label"]) == [df.loc[df["index"] == i, "given_label"].iloc[0] for i in t["index"]]
    assert sum(views.neighbour_vote(t).values()) == 5


def test_thumbnail_upscale_and_png(run):
    img = run.thumbnail(0)
    big = views.upscale_nearest(img, 64)
    assert big.shape == (64, 64, 3) and (big[:4, :4] == img[0, 0]).all()
    png = views.png_bytes(img, 32)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_preview_helpers():
    t = views.class_count_table([0, 0, 2], ["a", "b", "c"])
    assert list(t["images"]) == [2, 0, 1]
    g = views.sample_per_class(np.array([0] * 10 + [1] * 2), 2, per_class=3)
    assert len(g[0]) == 3 and g[1] == [10, 11]


# --------------------------------------------------------------------------- projections
@pytest.mark.parametrize("method", ["tsne", "umap"])
def test_projection_cached_on_disk(tmp_path, method):
    d = make_fake_run(tmp_path / "r", n=40)
    idx, xy = projections.projection(d, "pre", method, max_points=30, seed=0)
    assert len(idx) == 30 and xy.shape == (30, 2) and np.isfinite(xy).all()
    assert list(idx) == sorted(set(idx))
    p = projections.cache_path(d, "pre", method, 30, 0)
    assert p.exists()
    again = projections.cached(d, "pre", method, 30, 0)
    assert np.array_equal(again[0], idx) and np.allclose(again[1], xy)
    # The second call is a file read: it returns the cached array even if features change.
    (d / "features_pre.npy").unlink()
    idx2, xy2 = projections.projection(d, "pre", method, max_points=30, seed=0)
    assert np.allclose(xy2, xy)


def test_projection_errors_and_tiny(tmp_path):
    d = make_fake_run(tmp_path / "r", n=30)
    (d / "features_post.npy").unlink()
    with pytest.raises(InputError):
        projections.projection(d, "post", "tsne")
    with pytest.raises(InputError):
        projections.projection(d, "pre", "pca")
    assert projections.embed(np.ones((3, 4)), "tsne").shape == (3, 2)
    assert projections.embed(np.zeros((0, 4))).shape == (0, 2)
    (d / "projections").mkdir(exist_ok=True)
    projections.cache_path(d, "pre", "tsne", 3000, 0).write_bytes(b"torn")
    assert projections.cached(d, "pre", "tsne", 3000, 0) is None
    idx, xy = projections.projection(d, "pre", "tsne")
    assert xy.shape == (30, 2)
