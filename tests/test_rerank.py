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
    s = rerank.learned_suspicion(base, seen, truth[seen], learner="rebuild", hedge=False)
    rest = np.setdiff1d(np.arange(len(truth)), seen)
    wrong = (truth != given)[rest]
    before = detection_metrics(wrong, base.static[rest] > 0.5, base.static[rest])["auroc"]
    after = detection_metrics(wrong, s[rest] > 0.5, s[rest])["auroc"]
    assert after > before + 0.05
    lo = rerank.learned_order(base, seen, truth[seen], learner="rebuild", hedge=False)
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
    # power 1 (sessions 3-10): the reviewed suspicion summed 1.0 and held 2 errors, the unreviewed 1.0
    assert rerank.errors_left(s, np.array([0, 1]), np.array([0.6, 0.4]), np.array([True, True]), power=1) == 2.0
    # the default power weighs low suspicion less: 2 errors × (0.5³ + 0.5³) / (0.6³ + 0.4³)
    assert rerank.errors_left(s, np.array([0, 1]), np.array([0.6, 0.4]), np.array([True, True])) == \
        pytest.approx(2 * 0.25 / 0.28)
    # capped by the run's count minus the errors found
    assert rerank.errors_left(s, np.array([0, 1]), np.array([0.6, 0.4]), np.array([True, True]), count=2.5) == \
        pytest.approx(0.5)
    assert rerank.errors_left(s, np.array([0, 1]), np.array([0.6, 0.4]), np.array([True, True]), count=1) == 0.0
    # nothing found yet: the count shared out by the same weights; no count either: the suspicion summed
    assert rerank.errors_left(s, np.array([2, 3]), np.array([0.5]), np.array([False]), count=10) == \
        pytest.approx(10 * (0.2 ** 3 + 0.8 ** 3) / (0.2 ** 3 + 0.8 ** 3 + 0.5 ** 3))
    assert rerank.errors_left(s, np.array([2, 3]), np.zeros(0), np.zeros(0, bool)) == pytest.approx(1.0)


def test_error_count_is_confident_learnings_count():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    probs = np.full((300, 3), 0.05)
    probs[np.arange(300), labels] = 0.9
    wrong = np.arange(0, 300, 10)   # 30 rows whose probabilities name another class
    probs[wrong] = np.roll(probs[wrong], 1, axis=1)
    assert rerank.error_count(labels, probs) == pytest.approx(30, abs=3)
    assert rerank.error_count(labels, np.eye(3)[labels] * 0.9 + 0.1 / 3) == 0


def test_prepare_refuses_a_run_without_probabilities():
    with pytest.raises(InputError, match="out-of-fold"):
        rerank.prepare(np.zeros(3, int), [np.zeros((3, 2))], [], np.zeros((3, 2)), np.zeros(3))


def test_base_from_run_names_the_missing_file(fake_run):
    with pytest.raises(InputError, match="cv_probs.npy"):
        rerank.base_from_run(fake_run)


def _confused_pair_world(seed=0, n=800, k=4, d=16):
    """Clustered features; one class pair is confused (true 0 given as 1, 40 % of class 0) and
    the run's suspicion does not see it: it is random, so only the decisions can reveal the pair."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    centres = rng.normal(size=(k, d)) * 3
    feats = (centres[truth] + rng.normal(size=(n, d))).astype(np.float32)
    given = truth.copy()
    flip = (truth == 0) & (rng.random(n) < 0.4)
    given[flip] = 1
    static = rng.random(n)
    cv = np.full((n, k), 0.1)
    cv[np.arange(n), given] = 0.7
    cv /= cv.sum(axis=1, keepdims=True)
    return rerank.prepare(given, [feats], [cv], cv, static, knn_k=8, ensemble=cv), truth, given


@pytest.mark.parametrize("learner", sorted(rerank.LEARNERS))
def test_a_confused_pair_revealed_by_decisions_moves_up(learner):
    base, truth, given = _confused_pair_world()
    order = rerank.static_order(base.static)
    seen = order[:rerank.WARMUP + 50]
    lo = rerank.learned_order(base, seen, truth[seen], learner=learner, hedge=False)   # the learner itself
    wrong = truth != given
    static_rest = order[len(seen):]
    # the static order is random, so its head holds the pair's errors at their base rate
    top = 100
    assert wrong[lo[:top]].mean() > 2 * wrong[static_rest[:top]].mean()
    # and the pair's remaining errors as a whole sit much nearer the head than in the static order
    assert np.flatnonzero(wrong[lo]).mean() < 0.6 * np.flatnonzero(wrong[static_rest]).mean()


def test_refit_probe_cross_fits_trusted_rows_when_asked():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 80))
    labels = rng.integers(0, 2, 200)  # noise: only a probe that saw a row's label can agree with it
    trusted = np.ones(200, bool)
    shared = rerank.refit_probe(x, labels, trusted, 2, ridge=0.1)
    crossed = rerank.refit_probe(x, labels, trusted, 2, ridge=0.1, cross_fit_trusted=True)
    assert np.mean(shared.argmax(axis=1) == labels) > 0.75
    assert 0.35 < np.mean(crossed.argmax(axis=1) == labels) < 0.65


def test_logistic_fit_recovers_the_weights_and_rank01_keeps_order():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20_000, 2))
    y = (rng.random(20_000) < 1 / (1 + np.exp(-(2 * x[:, 0] - x[:, 1] + 0.5)))).astype(float)
    w = rerank.logistic_fit(x, y, l2=0.0)
    np.testing.assert_allclose(w, [2.0, -1.0, 0.5], atol=0.1)
    v = np.array([0.3, -1.0, 5.0, 0.3])
    r = rerank.rank01(v)
    assert r.min() > 0 and r.max() < 1
    np.testing.assert_array_equal(np.argsort(r), [1, 0, 3, 2])


def test_an_unknown_learner_is_refused():
    base, _, _ = _world()
    with pytest.raises(InputError, match="learner 'nope'"):
        rerank.learned_suspicion(base, np.zeros(0, int), np.zeros(0, int), learner="nope")


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


def test_pca_above_the_sample_size_reads_blocks_and_finds_the_same_directions(tmp_path, monkeypatch):
    """Above PCA_SAMPLE rows the PCA streams a float16 memmap block by block (no (N, D) float32
    copy) and fits its SVD on a sample: its components match the whole-array PCA's, up to sign."""
    rng = np.random.default_rng(0)
    n, d = 1_200, 40
    scales = np.r_[4.0, 3.0, 2.0, 1.5, np.full(d - 4, 0.2)]   # well-apart variances: stable directions
    x = (rng.normal(size=(n, d)) * scales + 1.0).astype(np.float16)
    path = tmp_path / "f.npy"
    np.save(path, x)
    whole = rerank.pca(x, dims=4)                          # n ≤ PCA_SAMPLE: the whole-array path
    monkeypatch.setattr(rerank, "PCA_SAMPLE", 900)
    streamed = rerank.pca(np.load(path, mmap_mode="r"), dims=4, block=256)
    assert streamed.shape == (n, 4) and streamed.dtype == np.float32
    for j in range(4):
        r = np.corrcoef(whole[:, j], streamed[:, j])[0, 1]
        assert abs(r) > 0.99, (j, r)
    assert np.allclose(streamed.mean(axis=0), 0, atol=0.05 * streamed.std())   # centred by the full mean


# ------------------------------------------------------------------------------ the hedge


def test_auroc_matches_the_pairwise_definition():
    rng = np.random.default_rng(5)
    score = rng.integers(0, 6, 300).astype(float)   # many ties
    pos = rng.random(300) < 0.3
    pairs = (score[pos][:, None] > score[~pos][None, :]) + 0.5 * (score[pos][:, None] == score[~pos][None, :])
    assert rerank.auroc(score, pos) == pytest.approx(pairs.mean())
    assert rerank.auroc(score, np.zeros(300, bool)) is None


def test_the_hedge_trusts_a_learner_that_ranks_the_latest_decisions_better():
    base, truth, given = _confused_pair_world()   # static order random, the pair learnable
    order = rerank.static_order(base.static)
    seen = order[:300]
    assert rerank.hedge_weight(base, seen[:2 * rerank.HEDGE_MIN - 2], truth[seen[:2 * rerank.HEDGE_MIN - 2]]) == 0.0
    assert rerank.hedge_weight(base, seen, truth[seen], learner="rebuild") >= 0.5
    s = rerank.learned_suspicion(base, seen, truth[seen], hedge=True)
    rest = np.setdiff1d(np.arange(len(truth)), seen)
    wrong = (truth != given)[rest]
    assert rerank.auroc(s[rest], wrong) > rerank.auroc(base.static[rest], wrong) + 0.1


def _walk(base, truth, learner, hedge, n=360, every=20):
    """Errors an oracle fixes in ``n`` decisions walking the learning queue (re-ranked every ``every``)."""
    order = rerank.static_order(base.static)
    seen: list[int] = []
    while len(seen) < n:
        seen += [int(i) for i in order[:every]]
        rv = np.array(seen)
        order = rerank.learned_order(base, rv, truth[rv], order=order[every:], learner=learner, hedge=hedge)
    return int(np.sum(truth[seen] != base.labels[seen]))


def test_the_hedge_keeps_a_useless_learner_from_costing_errors(monkeypatch):
    base, truth, _ = _world(noise=0.15)   # static suspicion half informative, few errors left late
    rng = np.random.default_rng(9)
    monkeypatch.setitem(rerank.LEARNERS, "noise", lambda b, lab, tr: rng.random(len(lab)))
    static = int(np.sum((truth != base.labels)[rerank.static_order(base.static)[:360]]))
    unhedged = _walk(base, truth, "noise", hedge=False)
    hedged = _walk(base, truth, "noise", hedge=True)
    assert unhedged < static - 5          # a random re-ranking does cost errors here
    assert hedged >= static - 0.01 * 360 - 2 and hedged > unhedged


def test_the_hedge_chooses_among_several_learners_only_when_hedged(monkeypatch):
    base, truth, given = _confused_pair_world()
    rng = np.random.default_rng(4)
    monkeypatch.setitem(rerank.LEARNERS, "noise", lambda b, lab, tr: rng.random(len(lab)))
    seen = rerank.static_order(base.static)[:300]
    with pytest.raises(InputError, match="need the hedge"):
        rerank.learned_suspicion(base, seen, truth[seen], learner="noise+rebuild", hedge=False)
    name, share = rerank.hedge_choice(base, seen, truth[seen], ("noise", "rebuild"))
    assert name == "rebuild" and share >= 0.5   # the learner that ranks the pair, not the noise
    s = rerank.learned_suspicion(base, seen, truth[seen], learner="noise+rebuild", hedge=True)
    rest = np.setdiff1d(np.arange(len(truth)), seen)
    assert rerank.auroc(s[rest], (truth != given)[rest]) > rerank.auroc(base.static[rest], (truth != given)[rest]) + 0.1


def test_the_hedge_needs_a_margin_over_static(monkeypatch):
    """A blend is trusted only when it beats static's held-out AUROC by HEDGE_MARGIN: the
    learnable pair of this world moves the queue under the default margin, not under an
    impossible one."""
    base, truth, _ = _confused_pair_world()
    seen = rerank.static_order(base.static)[:300]
    assert rerank.hedge_weight(base, seen, truth[seen], learner="rebuild") >= 0.5
    monkeypatch.setattr(rerank, "HEDGE_MARGIN", 1.0)
    assert rerank.hedge_weight(base, seen, truth[seen], learner="rebuild") == 0.0
    s = rerank.learned_suspicion(base, seen, truth[seen])
    assert np.array_equal(s, base.static)   # the static order, unchanged
