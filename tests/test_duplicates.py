"""turn_core.duplicates and the conflict queue on a dataset that plants duplicates."""
from __future__ import annotations

import numpy as np
import pytest

from turn_core import duplicates as dup
from turn_core.errors import InputError
from turn_core.views import queue as vq


def _planted(seed=0, n=120, d=32):
    """Random features with three planted near-duplicate pairs (one label-consistent)."""
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(n, d)).astype(np.float32)
    labels = rng.integers(0, 3, n)
    planted = [(3, 40), (7, 90), (15, 16)]
    for a, b in planted:
        f[b] = f[a] + 0.01 * rng.normal(size=d)
    labels[40], labels[3] = 1, 0          # conflict
    labels[90], labels[7] = 2, 1          # conflict
    labels[16] = labels[15]               # same label: near, not a conflict
    return f, labels, planted


def test_near_duplicate_pairs_find_exactly_the_planted_ones():
    f, labels, planted = _planted()
    pairs, sims = dup.near_duplicate_pairs(f, threshold=0.95)
    assert sorted(map(tuple, pairs.tolist())) == sorted(planted)
    assert (sims >= 0.95).all() and list(sims) == sorted(sims, reverse=True)
    c, cs = dup.conflicts(pairs, sims, labels)
    assert sorted(map(tuple, c.tolist())) == [(3, 40), (7, 90)]
    assert len(cs) == 2
    none, _ = dup.near_duplicate_pairs(f[:1])
    assert none.shape == (0, 2)


def test_exact_duplicates_by_pixels_whatever_their_labels():
    rng = np.random.default_rng(1)
    thumbs = (rng.random((10, 8, 8, 3)) * 255).astype(np.uint8)
    thumbs[6] = thumbs[2]
    thumbs[9] = thumbs[2]
    thumbs[5] = thumbs[4]
    groups = dup.exact_duplicate_groups(thumbs)
    assert [g.tolist() for g in groups] == [[2, 6, 9], [4, 5]]
    labels = np.array([0, 0, 1, 0, 1, 1, 1, 0, 0, 0])
    table = dup.duplicate_table(np.zeros((0, 2), int), np.zeros(0), labels, ["x", "y"], groups)
    kinds = {(r.a, r.b): r.kind for r in table.itertuples()}
    assert kinds == {(2, 6): "exact", (2, 9): "conflict", (6, 9): "conflict", (4, 5): "exact"}
    assert list(table["kind"][:2]) == ["conflict", "conflict"]


def test_planted_conflicts_enter_the_queue_and_are_decided_together(fake_run):
    """A real run folder with two planted near-duplicate pairs of different labels."""
    from turn_core.review import ReviewStore
    from turn_core.rundir import atomic_save_npy

    s = fake_run.samples()
    f = np.asarray(fake_run.features("pre"), dtype=np.float32)
    # plant two near-copies of images with a different given label, and one with the same label
    lab = s["given_label"].to_numpy()
    a1, a2 = 10, 20
    b1 = int(np.flatnonzero(lab != lab[a1])[-1])
    b2 = int(np.flatnonzero((lab != lab[a2]) & (np.arange(len(lab)) != b1))[-2])
    c1, c2 = 30, int(np.flatnonzero((lab == lab[30]) & (np.arange(len(lab)) > 30))[0])
    rng = np.random.default_rng(0)
    f = rng.normal(size=f.shape).astype(np.float32) * 5
    f[b1], f[b2], f[c2] = f[a1] * 1.001, f[a2] * 0.999, f[c1]
    atomic_save_npy(fake_run.dir / "features_pre.npy", f.astype(np.float16))
    table = vq.compute_duplicates(fake_run.dir)
    q = vq.conflict_queue(table)
    expect = {tuple(sorted(p)) for p in ((a1, b1), (a2, b2))}
    assert (c1, c2) in {(int(r.a), int(r.b)) for r in table[table["kind"] == "near"].itertuples()}
    assert {(int(r.a), int(r.b)) for r in q.itertuples()} == expect
    assert vq.read_duplicates(fake_run.dir)["kind"].tolist() == table["kind"].tolist()
    a, b = next(iter(sorted(expect)))
    la, lb = s["given_label"][a], s["given_label"][b]
    store = ReviewStore(fake_run.dir)
    store.record_many(vq.conflict_decisions(a, b, la, lb, "b"), reviewer="t")
    dec = store.latest()
    assert dec[a].final_label == lb and dec[b].final_label == lb and dec[a].decision == "relabel"
    left = vq.conflict_queue(table, dec)
    assert (a, b) not in {(int(r.a), int(r.b)) for r in left.itertuples()}
    assert (a, b) in {(int(r.a), int(r.b)) for r in vq.conflict_queue(table, dec, status="reviewed").itertuples()}
    with pytest.raises(InputError, match="conflict choice"):
        vq.conflict_decisions(a, b, la, lb, "both")


def test_pairs_from_a_saved_graph_read_no_features():
    """The run's saved neighbours and similarities alone give the pairs (features=None)."""
    from turn_core import knn

    f, _, planted = _planted()
    idx, sims = knn.search(f, 10, method="exact", device="cpu")
    pairs, s = dup.near_duplicate_pairs(None, 0.95, neighbours=idx.astype(np.int32), similarities=sims.astype(np.float16))
    assert sorted(map(tuple, pairs.tolist())) == sorted(planted)
    assert pairs.dtype == np.int64 and s.dtype == np.float32 and list(s) == sorted(s, reverse=True)
    want, want_s = dup.near_duplicate_pairs(f, 0.95)          # searched: the same pairs (float16 may reorder)
    assert sorted(map(tuple, want.tolist())) == sorted(map(tuple, pairs.tolist()))
    assert np.allclose(np.sort(s), np.sort(want_s), atol=1e-3)
    # a hand-made graph: self, −1 padding and the reverse edge are each skipped or merged
    nb = np.array([[1, 0], [0, -1], [0, 1]])
    sim = np.array([[0.99, 1.0], [0.99, 1.0], [0.5, 0.97]], dtype=np.float32)
    p, ps = dup.graph_pairs(nb, sim, 0.95)
    assert p.tolist() == [[0, 1], [1, 2]] and np.allclose(ps, [0.99, 0.97])
    assert dup.graph_pairs(nb, sim, 1.5)[0].shape == (0, 2)


def test_compute_duplicates_reads_the_saved_neighbours(fake_run, monkeypatch):
    """After the first call (an old run: searched once and saved), no search runs again, and
    the pairs come from the saved similarities."""
    from turn_core import knn
    from turn_core.rundir import atomic_save_npy

    vq.compute_duplicates(fake_run.dir)
    idx_name, sims_name = fake_run.neighbour_files("pre")
    assert (fake_run.dir / idx_name).exists()
    monkeypatch.setattr(knn, "search", lambda *a, **k: (_ for _ in ()).throw(AssertionError("searched again")))
    idx = np.asarray(fake_run.neighbours("pre")[0])
    sims = np.zeros(idx.shape, dtype=np.float16)
    sims[7, 0] = 0.99                 # one planted edge in the saved similarities
    atomic_save_npy(fake_run.dir / sims_name, sims)
    table = vq.compute_duplicates(fake_run.dir)
    near = table[table["kind"] != "exact"]
    assert [tuple(sorted((int(r.a), int(r.b)))) for r in near.itertuples()] == [tuple(sorted((7, int(idx[7, 0]))))]
