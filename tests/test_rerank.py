"""turn_core.rerank: the learning queue's re-ranking from saved arrays and decisions."""
from __future__ import annotations

import numpy as np
import pytest

from turn_core import rerank
from turn_core.errors import InputError
from turn_core.metrics import detection_metrics


def _world(seed=0, n=600, k=4, d=24, noise=0.3):
    """Clustered features, noisy labels, and a static suspicion that is only half informative."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    centres = rng.normal(size=(k, d)) * 3
    feats = (centres[truth] + rng.normal(size=(n, d))).astype(np.float32)
    given = truth.copy()
    flip = rng.random(n) < noise
    given[flip] = (truth[flip] + 1) % k  # asymmetric: one class pair
    static = np.clip(0.5 * (given != truth) + rng.random(n) * 0.8, 0, 1)
    cv = np.full((n, k), 0.1)
    cv[np.arange(n), given] = 0.7
    cv /= cv.sum(axis=1, keepdims=True)
    base = rerank.prepare(given, [feats], [cv], cv, static, knn_k=8)
    return base, truth, given


def test_no_decision_keeps_the_static_order():
    base, _, _ = _world()
    s = rerank.learned_suspicion(base, np.zeros(0, int), np.zeros(0, int))
    np.testing.assert_array_equal(s, base.static)
    np.testing.assert_array_equal(rerank.learned_order(base, np.zeros(0, int), np.zeros(0, int)),
                                  rerank.static_order(base.static))


def test_decisions_rank_the_remaining_errors_better():
    base, truth, given = _world()
    order = rerank.static_order(base.static)
    seen = order[:100]
    s = rerank.learned_suspicion(base, seen, truth[seen])
    rest = np.setdiff1d(np.arange(len(truth)), seen)
    wrong = (truth != given)[rest]
    before = detection_metrics(wrong, base.static[rest] > 0.5, base.static[rest])["auroc"]
    after = detection_metrics(wrong, s[rest] > 0.5, s[rest])["auroc"]
    assert after > before + 0.05
    lo = rerank.learned_order(base, seen, truth[seen])
    assert set(lo) == set(rest) and len(lo) == len(rest)
    assert list(s[lo]) == sorted(s[lo], reverse=True)


def test_top_n_keeps_the_tail_in_place():
    base, truth, _ = _world()
    order = rerank.static_order(base.static)
    seen = order[:50]
    lo = rerank.learned_order(base, seen, truth[seen], order=order, top_n=100)
    np.testing.assert_array_equal(lo[100:], order[150:])
    assert set(lo[:100]) == set(order[50:150])


def test_trusted_vote_weights_reviewed_neighbours_and_skips_excluded():
    nbrs = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])
    labels = np.array([0, 1, 1, rerank.UNKNOWN])
    trusted = np.array([True, False, False, True])
    v = rerank.trusted_vote(nbrs, labels, trusted, 2, weight=4.0)
    np.testing.assert_allclose(v[1], [4 / 5, 1 / 5])   # neighbour 0 (trusted, class 0) ×4, 2 ×1, 3 silent
    np.testing.assert_allclose(v[3], [4 / 6, 2 / 6])
    np.testing.assert_allclose(v.sum(axis=1), 1.0)


def test_refit_probe_never_scores_an_image_with_its_own_label():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 5)).astype(np.float32)
    labels = rng.integers(0, 2, 200)  # labels are noise: a probe that saw them would fit them
    p = rerank.refit_probe(x, labels, np.zeros(200, bool), 2)
    agree = np.mean(p.argmax(axis=1) == labels)
    assert 0.3 < agree < 0.7
    np.testing.assert_allclose(p.sum(axis=1), 1.0)


def test_pair_calibration_moves_a_confirmed_pair_up_and_a_rejected_pair_down():
    n = 200
    labels = np.repeat([0, 1], n // 2)
    suggested = 1 - labels
    s = np.full(n, 0.3)
    reviewed = np.zeros(n, bool)
    reviewed[:40] = True          # 40 of pair 0→1, all errors
    reviewed[100:140] = True      # 40 of pair 1→0, none an error
    was_error = np.zeros(n, bool)
    was_error[:40] = True
    out = rerank.pair_calibration(s, labels, suggested, reviewed, was_error)
    assert out[50] > 0.6 and out[150] < 0.15
    untouched = rerank.pair_calibration(s, labels, suggested, np.zeros(n, bool), was_error)
    np.testing.assert_allclose(untouched, s)


def test_hit_rate_and_errors_left():
    assert rerank.hit_rate([]) is None
    assert rerank.hit_rate([True, False, True, True], window=2) == 1.0
    assert rerank.hit_rate([True, False, False, False]) == 0.25
    s = np.array([0.5, 0.5, 0.2, 0.8])
    # reviewed images' suspicion summed 1.0 and held 2 errors: the score under-promises by 2x
    assert rerank.errors_left(s, np.array([0, 1]), np.array([0.6, 0.4]), np.array([True, True])) == 2.0
    assert rerank.errors_left(s, np.array([2, 3]), np.zeros(0), np.zeros(0, bool)) == pytest.approx(1.0)


def test_prepare_refuses_a_run_without_probabilities():
    with pytest.raises(InputError, match="out-of-fold"):
        rerank.prepare(np.zeros(3, int), [np.zeros((3, 2))], [], np.zeros((3, 2)), np.zeros(3))


def test_base_from_run_names_the_missing_file(fake_run):
    with pytest.raises(InputError, match="cv_probs.npy"):
        rerank.base_from_run(fake_run)


def test_prepare_uses_the_saved_neighbours_and_searches_only_views_without(monkeypatch):
    from turn_core import knn

    base, _, given = _world()
    saved = base.neighbours[0]
    n = len(given)
    cv = base.cv_probs
    searched = []
    real = knn.search
    monkeypatch.setattr(knn, "search", lambda f, *a, **k: searched.append(len(f)) or real(f, *a, **k))
    feats = np.zeros((n, 24), dtype=np.float32)      # not read for the neighbours: a saved graph is given
    again = rerank.prepare(given, [feats + 1], [cv], cv, base.static, knn_k=8, neighbours=[saved.astype(np.int32)])
    assert searched == [] and np.array_equal(again.neighbours[0], saved)
    np.testing.assert_allclose(again.votes0[0], base.votes0[0])
    # a wider saved graph (knn_k of the run > the re-ranking's) votes with its first knn_k columns
    wide = np.concatenate([saved, saved[:, :2]], axis=1)
    assert np.array_equal(rerank.prepare(given, [feats + 1], [cv], cv, base.static, knn_k=8,
                                         neighbours=[wide]).neighbours[0], saved)
    rerank.prepare(given, [feats + 1], [cv], cv, base.static, knn_k=8, neighbours=[None])
    assert searched == [n]                            # no graph for the view: searched
