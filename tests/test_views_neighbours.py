"""turn_core.views.neighbours and .images: neighbours in feature space, PNG thumbnails."""
from __future__ import annotations

import numpy as np
import pytest
from inputs import tiny_demo_run

from turn_core import views


def test_nearest_neighbours_cosine(fake_run, fake_df):
    f = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], dtype=np.float32)
    idx, sims = views.nearest_neighbours(f, 0, k=2)
    assert list(idx) == [1, 2] and sims[0] > sims[1]
    assert len(views.nearest_neighbours(f[:1], 0)[0]) == 0
    feats = fake_run.features("pre")
    t = views.neighbour_table(fake_df, feats, 0, k=5)
    assert len(t) == 5 and 0 not in set(t["index"])
    assert list(t["given_label"]) == [fake_df.loc[fake_df["index"] == i, "given_label"].iloc[0] for i in t["index"]]
    assert sum(views.neighbour_vote(t).values()) == 5


def test_thumbnail_upscale_and_png(fake_run):
    img = fake_run.thumbnail(0)
    big = views.upscale_nearest(img, 64)
    assert big.shape == (64, 64, 3) and (big[:4, :4] == img[0, 0]).all()
    png = views.png_bytes(img, 32)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_neighbours_share_the_scores_normalisation():
    from turn_core import scores

    assert views.normalise_rows is scores.normalise_rows
    f = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    a = views.nearest_neighbours(f, 2, k=2)
    b = views.nearest_neighbours(scores.normalise_rows(f), 2, k=2, normalised=True)
    assert list(a[0]) == list(b[0]) == [0, 1] and np.allclose(a[1], b[1])
    assert a[1][0] == pytest.approx(0.6)


# ------------------------------------------------------- saved neighbours: searched once per run
def _brute(features, k):
    """Brute-force cosine top-k of every row (self excluded), in float64: (indices, sims)."""
    f = np.asarray(features, dtype=np.float64)
    u = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    sims = u @ u.T
    np.fill_diagonal(sims, -np.inf)
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(sims, idx, axis=1)


def _same_neighbours(idx, sims, features):
    """The saved (idx, sims) are the brute-force neighbours of ``features``: the similarities
    agree to float16 precision and every listed neighbour is as similar as the k-th best (a
    near-tie may swap which of two equally similar samples is listed)."""
    b_idx, b_sims = _brute(features, idx.shape[1])
    assert np.allclose(np.asarray(sims, dtype=np.float64), b_sims, atol=2e-3)
    f = np.asarray(features, dtype=np.float64)
    u = f / np.linalg.norm(f, axis=1, keepdims=True)
    got = np.einsum("nd,nkd->nk", u, u[np.asarray(idx, dtype=np.int64)])
    assert np.all(got >= b_sims[:, -1:] - 1e-5)
    assert not np.any(np.asarray(idx) == np.arange(len(idx))[:, None])
    assert np.mean(np.sort(idx, axis=1) == np.sort(b_idx, axis=1)) > 0.99


def _forbid_search(monkeypatch):
    from turn_core import knn

    def boom(*a, **k):
        raise AssertionError("searched the neighbours again instead of reading the saved ones")
    monkeypatch.setattr(knn, "search", boom)


def test_an_old_run_gets_its_neighbours_once_then_reads_them(fake_run, fake_df, monkeypatch):
    from turn_core.views import neighbours as vn

    assert fake_run.neighbours("post") is None and vn.needs_search(fake_run)   # written before they were saved
    t = vn.run_neighbour_table(fake_run, fake_df, 5, k=8)
    idx_name, sims_name = fake_run.neighbour_files("post")
    assert (fake_run.dir / idx_name).exists() and (fake_run.dir / sims_name).exists()
    idx, sims = fake_run.neighbours("post")
    assert idx.dtype == np.int32 and sims.dtype == np.float16
    assert idx.shape == (80, fake_run.settings["knn_k"])
    _same_neighbours(idx, sims, fake_run.features("post"))
    assert list(t["index"]) == list(idx[5, :8]) and not vn.needs_search(fake_run)
    assert list(t["given_label"]) == list(fake_df["given_label"].to_numpy()[idx[5, :8]])
    stamp = (fake_run.dir / idx_name).stat().st_mtime_ns
    _forbid_search(monkeypatch)
    from turn_core.rundir import Run

    for run in (fake_run, Run(fake_run.dir)):          # the same reader and a fresh one
        again = vn.run_neighbour_table(run, fake_df, 5, k=8)
        assert again.equals(t)
        assert len(vn.run_neighbour_table(run, fake_df, 6, k=3)) == 3
    assert (fake_run.dir / idx_name).stat().st_mtime_ns == stamp          # not written twice


def test_stale_or_broken_neighbour_files_read_as_absent(fake_run):
    import os

    from turn_core.rundir import Run, atomic_save_npy
    from turn_core.views import neighbours as vn

    assert vn.saved_neighbours(fake_run, "pre") is not None
    idx_name, sims_name = fake_run.neighbour_files("pre")
    feats = fake_run.dir / "features_pre.npy"
    earlier = feats.stat().st_mtime - 10
    for name in (idx_name, sims_name):       # as if the features were written again after the search
        os.utime(fake_run.dir / name, (earlier, earlier))
    assert Run(fake_run.dir).neighbours("pre") is None
    assert vn.saved_neighbours(Run(fake_run.dir), "pre") is not None       # searched again, once
    atomic_save_npy(fake_run.dir / sims_name, np.zeros((80, 3), dtype=np.float16))   # shape mismatch
    assert Run(fake_run.dir).neighbours("pre") is None
    (fake_run.dir / sims_name).unlink()
    assert Run(fake_run.dir).neighbours("pre") is None


def test_panel_without_features_or_neighbours_is_empty(fake_run, fake_df):
    from turn_core.views import neighbours as vn

    for w in ("pre", "post"):
        (fake_run.dir / f"features_{w}.npy").unlink()
    assert vn.panel_view(fake_run) is None and not vn.needs_search(fake_run)
    assert len(vn.run_neighbour_table(fake_run, fake_df, 0)) == 0


# --------------------------------------------------------------- a real run saves its neighbours
@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """One tiny TURN run (120 demo digits, one FFT epoch) in a private cache."""
    return tiny_demo_run(tmp_path_factory, "nb", demo_n=120, lp_epochs=2, fft_epochs=1, knn_k=7, seed=0)


@pytest.mark.slow
def test_the_run_saves_the_brute_force_neighbours_of_each_view(real_run):
    from turn_core.rundir import Run

    run = Run(real_run)
    for w in ("pre", "post"):
        idx, sims = run.neighbours(w)
        assert idx.shape == (120, 7) and idx.dtype == np.int32 and sims.dtype == np.float16
        _same_neighbours(idx, sims, run.features(w))
    # the run's own k-NN vote is the vote of those neighbours (the trusted views' mean)
    from turn_core.scores import label_vote

    s = run.samples()
    labels = s["given_label"].map({c: i for i, c in enumerate(run.classes)}).to_numpy()
    votes = [label_vote(np.asarray(run.neighbours(w)[0], dtype=np.int64), labels, len(run.classes))
             for w in ("pre", "post")]
    agree = s["knn_agreement"].to_numpy()
    candidates = [v[np.arange(120), labels] for v in (votes[0], (votes[0] + votes[1]) / 2)]
    assert any(np.allclose(agree, c, atol=1e-4) for c in candidates)


@pytest.mark.slow
def test_panel_learning_queue_and_duplicates_read_the_saved_neighbours(real_run, monkeypatch):
    from turn_core import duplicates as dup
    from turn_core import rerank
    from turn_core.rundir import Run
    from turn_core.views import neighbours as vn
    from turn_core.views import queue as vq

    run = Run(real_run)
    df = run.samples()
    _forbid_search(monkeypatch)           # any search from here on fails the test
    t = vn.run_neighbour_table(run, df, 3, k=5)
    assert list(t["index"]) == list(run.neighbours("post")[0][3, :5])
    base = rerank.base_from_run(run)
    for graph, view in zip(base.neighbours, ("pre", "post")):      # the trusted views, pretrained first
        assert np.array_equal(graph, np.asarray(run.neighbours(view)[0]))
    idx, sims = run.neighbours("pre")
    threshold = float(np.quantile(np.asarray(sims[:, 0], dtype=np.float32), 0.8))   # some pairs, not all
    table = vq.compute_duplicates(real_run, threshold=threshold)
    want = {(min(i, int(j)), max(i, int(j))) for i in range(120) for j, s in zip(idx[i], sims[i]) if s >= threshold}
    exact = {(int(a), int(b)) for g in dup.exact_duplicate_groups(run.thumbs()) for n, a in enumerate(g) for b in g[n + 1:]}
    assert want and {(int(r.a), int(r.b)) for r in table.itertuples()} == want | exact
