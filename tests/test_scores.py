"""k-NN vote, margin, feature views, the ensemble, suspicion scores and flag rules (turn_core.scores)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from turn_core.errors import InputError
from turn_core.scores import (
    ERROR_COUNTS,
    FLAG_RULES,
    SCORES,
    Signals,
    build_signals,
    knn_label_probs,
    margin,
    normalise_rows,
    score_and_flag,
    select_views,
    suggestion_probs,
    top_k,
)


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    return None

# ------------------------------------------------------------------------------- k-NN vote
def _brute_knn(features, labels, k_classes, k):
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    nbrs = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    probs = np.zeros((len(f), k_classes))
    for i in range(len(f)):
        for j in nbrs[i]:
            probs[i, labels[j]] += 1.0 / k
    return probs, nbrs


@pytest.mark.parametrize("chunk", [2048, 7])
def test_knn_label_probs_matches_brute_force(chunk):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(53, 6))
    labels = rng.integers(0, 4, 53)
    probs, nbrs = knn_label_probs(feats, labels, 4, k=5, chunk=chunk)
    want_p, want_n = _brute_knn(feats, labels, 4, 5)
    assert nbrs.shape == (53, 5)
    assert np.array_equal(nbrs, want_n)
    assert np.allclose(probs, want_p)
    assert np.allclose(probs.sum(1), 1.0)


def test_knn_label_probs_excludes_self_even_with_duplicates():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(10, 4))
    feats = np.concatenate([base, base])           # every point has an exact twin
    labels = np.arange(20) % 3
    _, nbrs = knn_label_probs(feats, labels, 3, k=1)
    assert np.all(nbrs[:, 0] != np.arange(20))
    assert np.array_equal(nbrs[:, 0], (np.arange(20) + 10) % 20)


def test_knn_label_probs_k_capped_by_n():
    feats = np.eye(3)
    probs, nbrs = knn_label_probs(feats, np.array([0, 1, 1]), 2, k=10)
    assert nbrs.shape == (3, 2)
    assert np.allclose(probs, [[0, 1], [0.5, 0.5], [0.5, 0.5]])


def test_knn_label_probs_goes_through_the_index_and_reads_a_given_graph(monkeypatch):
    from turn_core import knn

    rng = np.random.default_rng(2)
    feats = rng.normal(size=(40, 5)).astype(np.float32)
    labels = rng.integers(0, 3, 40)
    calls = []
    real = knn.search
    monkeypatch.setattr(knn, "search", lambda *a, **k: calls.append(k) or real(*a, **k))
    probs, nbrs = knn_label_probs(feats, labels, 3, k=4, method="exact", device="cpu")
    assert calls == [{"method": "exact", "device": "cpu", "chunk": 2048}]
    # a saved graph (wider than k, int32 as on disk) votes with its first k columns, no search
    wide = np.concatenate([nbrs, np.zeros((40, 3), dtype=np.int64)], axis=1).astype(np.int32)
    p2, n2 = knn_label_probs(None, labels, 3, k=4, neighbours=wide)
    assert len(calls) == 1 and np.array_equal(n2, nbrs) and np.allclose(p2, probs)


def _views(n=90, k=3, seed=4):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    centres = rng.normal(size=(k, 8)) * 2
    pre = (centres[labels] + rng.normal(size=(n, 8))).astype(np.float32)
    post = (centres[labels] * 2 + rng.normal(size=(n, 8))).astype(np.float32)
    cv = np.full((n, k), 0.2)
    cv[np.arange(n), labels] = 0.6
    return labels, [pre, post], [cv / cv.sum(1, keepdims=True)] * 2


def test_score_step_searches_every_view_once_and_returns_their_neighbours(monkeypatch):
    from turn_core import knn
    from turn_core.config import RunConfig
    from turn_core.scores import score_step

    labels, feats, cv = _views()
    n, k = len(labels), cv[0].shape[1]
    searched = []
    real = knn.search
    monkeypatch.setattr(knn, "search", lambda f, *a, **kw: searched.append((len(f), a[0] if a else kw["k"]))
                        or real(f, *a, **kw))
    cfg = RunConfig(knn_k=6, knn_method="exact")
    args = (labels, cv[0], np.ones(n), np.zeros((1, n)), feats, cfg)
    sig, result, _ = score_step(*args, cv_probs=cv)
    assert searched.count((n, 6)) == 2                            # two views, each once
    assert len(searched) == 3                                     # and the wide vote (wide_k)
    nbrs = sig.extra["neighbours"]
    for f, (idx, sims) in zip(feats, nbrs):
        want = _brute_knn(f, labels, k, 6)[1]
        assert idx.shape == sims.shape == (n, 6)
        assert np.array_equal(idx, want)
    votes = [knn_label_probs(None, labels, k, 6, neighbours=nbrs[i][0])[0] for i in sig.extra["views"]]
    assert np.allclose(sig.knn_probs, np.mean(votes, axis=0))
    # the provisional table's pretrained neighbours are reused: only the other view is searched
    searched.clear()
    sig2, result2, _ = score_step(*args, cv_probs=cv, neighbours=nbrs[:1])
    assert [x for x in searched if x[1] == 6] == [(n, 6)] and np.array_equal(result2["suspicion"], result["suspicion"])
    assert sig2.extra["neighbours"][0] is nbrs[0]


# ------------------------------------------------------------------- margin, normalise_rows
def test_margin_hand_values():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.5, 0.0]])
    assert np.allclose(margin(p, np.array([0, 0, 1])), [0.5, -0.5, 0.0])


def test_normalise_rows_unit_length_and_zero_rows_stay_zero():
    f = np.array([[3.0, 4.0], [0.0, 0.0], [-2.0, 0.0]])
    out = normalise_rows(f)
    assert out.dtype == np.float32
    assert np.allclose(out, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]])


# --------------------------------------------------------------------------------- scores
def _signals(n=40, k=4, seed=0, epochs=3):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    probs = rng.dirichlet(np.ones(k), n)
    knn = rng.dirichlet(np.ones(k), n)
    return Signals(labels=labels, probs=probs, clean_prob=rng.random(n),
                   losses=rng.random((epochs, n)) * 3, knn_probs=knn, tau=0.5)


@pytest.mark.parametrize("score,rule", list(itertools.product(sorted(SCORES), sorted(FLAG_RULES))))
def test_score_and_flag_every_combination(score, rule):
    s = _signals(seed=hash((score, rule)) % 1000)
    out = score_and_flag(s, score, rule)
    n = len(s.labels)
    for key in ("suspicion", "flagged", "suggested", "confidence"):
        assert out[key].shape == (n,)
    assert np.all((out["suspicion"] >= 0) & (out["suspicion"] <= 1))
    assert np.all((out["confidence"] >= 0) & (out["confidence"] <= 1))
    assert out["flagged"].dtype == bool
    assert 0 < out["flagged"].sum() < n          # random signals: some flagged, some not
    f = out["flagged"]
    assert np.all(out["suggested"][f] != s.labels[f])
    assert np.all(out["suggested"][~f] == s.labels[~f])
    assert np.all((out["suggested"] >= 0) & (out["suggested"] < s.n_classes))


def test_paper_score_and_rule_follow_the_clean_posterior():
    s = _signals()
    out = score_and_flag(s, "paper", "paper")
    assert np.allclose(out["suspicion"], 1 - s.clean_prob)
    assert np.array_equal(out["flagged"], s.clean_prob < s.tau)


def test_ensemble_score_ranks_an_obvious_error_highest():
    s = _signals(n=30, k=3, seed=4)
    s.losses[:, 0] = 100.0
    s.probs[0] = [0.98, 0.01, 0.01]
    s.knn_probs[0] = [1.0, 0.0, 0.0]
    s.cv_probs = np.random.default_rng(5).dirichlet(np.ones(3), 30)
    s.cv_probs[0] = [0.97, 0.02, 0.01]
    s.labels[0] = 2
    out = score_and_flag(s, "ensemble", "ensemble")
    # the ensemble's p(given) is the mean of the neighbour vote (0) and the out-of-fold probe (0.01)
    assert out["suspicion"][0] == pytest.approx(1 - 0.005)
    assert out["suspicion"][0] == out["suspicion"].max()
    assert out["flagged"][0] and out["suggested"][0] == 0


def test_ensemble_flag_rule_is_top_class_differs_from_given():
    s = _signals(n=50, k=4, seed=7)
    s.cv_probs = np.random.default_rng(8).dirichlet(np.ones(4), 50)
    out = score_and_flag(s, "ensemble", "ensemble")
    p = (s.cv_probs + s.knn_probs) / 2
    assert np.array_equal(out["flagged"], p.argmax(axis=1) != s.labels)


def test_final_model_joins_the_ensemble_with_equal_weight():
    s = _signals(n=20, k=3, seed=9)
    s.cv_probs = np.random.default_rng(10).dirichlet(np.ones(3), 20)
    s.extra = {"views": [0, 1], "final_model_in_ensemble": True}
    # cv_probs / knn_probs are already the means over the two views: 2 + 2 members + the final model
    want = (2 * s.cv_probs + 2 * s.knn_probs + s.probs) / 5
    assert np.allclose(suggestion_probs(s), want)
    s.extra = {"views": [0], "final_model_in_ensemble": False}
    assert np.allclose(suggestion_probs(s), (s.cv_probs + s.knn_probs) / 2)


def _view_probs(labels, k, agree, seed):
    """(N, K) probabilities whose argmax equals ``labels`` on a fraction ``agree`` of samples."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    top = np.where(rng.random(n) < agree, labels, (labels + 1) % k)
    p = np.full((n, k), 0.1 / (k - 1))
    p[np.arange(n), top] = 0.9
    return p


def test_select_views_keeps_pretrained_and_drops_a_damaged_fine_tuned_view():
    labels = np.random.default_rng(0).integers(0, 4, 400)
    pre, good, bad = (_view_probs(labels, 4, a, i) for i, a in enumerate((0.6, 0.75, 0.3)))
    assert select_views([pre, good], labels) == [0, 1]   # weaker pretrained view still kept
    assert select_views([pre, bad], labels) == [0]       # damaged fine-tuned view dropped
    feats = [np.random.default_rng(1).normal(size=(400, 8)).astype(np.float32)] * 2
    sig = build_signals(labels, pre, np.ones(400), np.zeros((2, 400)), feats, [pre, bad])
    assert sig.extra == {"views": [0], "final_model_in_ensemble": False}
    sig = build_signals(labels, pre, np.ones(400), np.zeros((2, 400)), feats, [pre, good])
    assert sig.extra["views"] == [0, 1] and sig.extra["final_model_in_ensemble"]
    assert sig.extra["wide_probs"].shape == (400, 4)   # a final table with a fine-tuned view: the wide vote


@pytest.mark.parametrize("kw", [{"score": "nope"}, {"flag_rule": "nope"}])
def test_score_and_flag_unknown_name(kw):
    with pytest.raises(InputError, match="nope"):
        score_and_flag(_signals(), **kw)


def test_confident_learning_flags_the_planted_errors_only():
    # 60 samples, 3 classes; the ensemble is sure of the true class; 6 given labels are wrong
    rng = np.random.default_rng(11)
    truth = np.repeat(np.arange(3), 20)
    labels = truth.copy()
    wrong = rng.choice(60, 6, replace=False)
    labels[wrong] = (truth[wrong] + 1) % 3
    sure = np.full((60, 3), 0.05)
    sure[np.arange(60), truth] = 0.9
    s = Signals(labels=labels, probs=sure, clean_prob=np.ones(60), losses=np.zeros((1, 60)), knn_probs=sure,
                cv_probs=sure)
    out = score_and_flag(s, "ensemble", "confident-learning")
    assert set(np.flatnonzero(out["flagged"])) == set(wrong)
    assert np.array_equal(out["suggested"][wrong], truth[wrong])


def test_registries_hold_the_documented_names():
    # settings.check_names, the CLI and the benchmark address these by name
    assert {"paper", "ensemble"} <= SCORES.keys()
    assert {"paper", "ensemble", "confident-learning"} <= FLAG_RULES.keys()
    assert {f"top-k-{name}" for name in ERROR_COUNTS} <= FLAG_RULES.keys()
    assert {"gmm", "gmm-suspicion", "cl", "expected"} <= ERROR_COUNTS.keys()
    assert all(callable(f) for f in [*SCORES.values(), *FLAG_RULES.values()])


# ------------------------------------------------------------------------------ top-k rules
def test_top_k_flags_the_highest_ties_to_the_lower_index():
    sus = np.array([0.2, 0.9, 0.5, 0.9, 0.1])
    assert np.flatnonzero(top_k(sus, 1)).tolist() == [1]           # tie 0.9/0.9: lower index
    assert np.flatnonzero(top_k(sus, 3)).tolist() == [1, 2, 3]
    assert np.flatnonzero(top_k(sus, 2.4)).tolist() == [1, 3]      # k rounds to the nearest
    assert not top_k(sus, -3).any() and top_k(sus, 99).all()       # k clipped to [0, N]
    assert top_k(sus, 2).dtype == bool


def _planted(n_per_class=20, n_wrong=6, seed=11):
    """3 classes, an ensemble sure of the true class, ``n_wrong`` given labels moved one class on."""
    truth = np.repeat(np.arange(3), n_per_class)
    labels = truth.copy()
    wrong = np.random.default_rng(seed).choice(len(truth), n_wrong, replace=False)
    labels[wrong] = (truth[wrong] + 1) % 3
    sure = np.full((len(truth), 3), 0.05)
    sure[np.arange(len(truth)), truth] = 0.9
    return Signals(labels=labels, probs=sure, clean_prob=np.ones(len(truth)), losses=np.zeros((1, len(truth))),
                   knn_probs=sure, cv_probs=sure), wrong


def test_gmm_count_is_the_expected_number_of_noisy_samples():
    s = _signals(n=6, k=3)
    s.clean_prob = np.array([0.9, 0.1, 0.8, 0.3, 1.0, 0.4])        # Σ(1 − p) = 2.5 → k = 2
    assert ERROR_COUNTS["gmm"](s, np.zeros(6)) == pytest.approx(2.5)
    sus = np.array([0.1, 0.7, 0.2, 0.95, 0.3, 0.6])
    assert np.flatnonzero(FLAG_RULES["top-k-gmm"](s, sus)).tolist() == [1, 3]


def test_expected_count_sums_the_ensembles_doubt_in_the_given_label():
    s, _ = _planted()
    # p(given) = 0.9 on the 54 right labels and 0.05 on the 6 wrong ones
    assert ERROR_COUNTS["expected"](s, np.zeros(60)) == pytest.approx(54 * 0.1 + 6 * 0.95)


def test_top_k_cl_flags_exactly_the_planted_errors():
    s, wrong = _planted()
    assert ERROR_COUNTS["cl"](s, np.zeros(60)) == 6
    out = score_and_flag(s, "ensemble", "top-k-cl")
    assert set(np.flatnonzero(out["flagged"])) == set(wrong)
    assert np.array_equal(out["suggested"][wrong], (s.labels[wrong] + 2) % 3)   # back to the truth


def test_cl_structured_takes_the_expected_count_only_when_the_gmm_sees_far_fewer():
    from turn_core.scores import STRUCTURED_RATIO

    s, _ = _planted()        # CL counts 6; the ensemble expects 54 × 0.1 + 6 × 0.95 = 11.1
    cl, expected = 6, 54 * 0.1 + 6 * 0.95
    s.clean_prob = np.ones(60)
    s.clean_prob[:6] = 0.0   # the GMM sees the 6 as well: the CL count stands
    assert ERROR_COUNTS["cl-structured"](s, np.zeros(60)) == cl
    s.clean_prob = np.ones(60)
    s.clean_prob[:int(STRUCTURED_RATIO * cl) - 1] = 0.0   # far fewer: consistent flips, count larger
    assert ERROR_COUNTS["cl-structured"](s, np.zeros(60)) == pytest.approx(expected)
    assert FLAG_RULES["top-k-cl-structured"](s, np.arange(60.0)).sum() == round(expected)


def test_cl_learned_takes_the_expected_count_only_when_both_tests_say_the_model_learned_them():
    from turn_core.scores import LEARNED_RATIO, UNSEEN_SHARE, unseen_share

    # 3 classes × 20; CL flags the 6 planted errors; the ensemble expects 54 × 0.1 + 6 × 0.95
    s, wrong = _planted()
    cl, expected = 6, 54 * 0.1 + 6 * 0.95
    s.losses = np.zeros((2, 60))          # a final table: Phase I's losses and one FFT epoch's
    s.clean_prob = np.ones(60)
    s.clean_prob[wrong] = 0.0             # the GMM sees the same 6: the CL count stands
    assert unseen_share(s, np.zeros(60)) == 0.0
    assert ERROR_COUNTS["cl-learned"](s, np.zeros(60)) == cl
    m = int(np.floor(UNSEEN_SHARE * cl)) + 1   # the fewest of the 6 the GMM must call clean
    assert cl - m < LEARNED_RATIO * cl         # ... which also makes its count small enough
    s.clean_prob[wrong[:m - 1]] = 1.0     # one short of the share: the CL count stands
    assert unseen_share(s, np.zeros(60)) == pytest.approx((m - 1) / cl)
    assert ERROR_COUNTS["cl-learned"](s, np.zeros(60)) == cl
    s.clean_prob[wrong[:m]] = 1.0         # both tests pass: consistent flips, the count grows
    assert ERROR_COUNTS["cl-learned"](s, np.zeros(60)) == pytest.approx(expected)
    assert FLAG_RULES["top-k-cl-learned"](s, np.arange(60.0)).sum() == round(expected)
    s.clean_prob[:] = 0.4                 # the same share unseen, but the GMM counts 34 wrong
    s.clean_prob[wrong[:m]] = 1.0         # labels: its count is not small, so CL's stands
    assert unseen_share(s, np.zeros(60)) == pytest.approx(m / cl)
    assert ERROR_COUNTS["cl-learned"](s, np.zeros(60)) == cl
    s.clean_prob[:] = 1.0
    s.clean_prob[wrong[m:]] = 0.0
    s.losses = np.zeros((1, 60))          # Phase I's losses only (provisional table): never switches
    assert ERROR_COUNTS["cl-learned"](s, np.zeros(60)) == cl


def test_gmm_on_suspicion_counts_the_high_mode():
    rng = np.random.default_rng(3)
    sus = np.concatenate([rng.uniform(0.0, 0.1, 80), rng.uniform(0.85, 0.95, 20)])
    rng.shuffle(sus)
    s = _signals(n=100, k=3)
    assert ERROR_COUNTS["gmm-suspicion"](s, sus) == pytest.approx(20, abs=0.5)
    assert np.array_equal(FLAG_RULES["top-k-gmm-suspicion"](s, sus), sus > 0.5)


def test_score_and_flag_defaults_are_the_run_configs(monkeypatch):
    from turn_core.config import RunConfig

    s = _signals(n=60, k=4, seed=21)
    s.cv_probs = np.random.default_rng(22).dirichlet(np.ones(4), 60)
    # a different default in RunConfig must change what an unnamed call does
    monkeypatch.setattr(RunConfig.__dataclass_fields__["flag_rule"], "default", "paper")
    monkeypatch.setattr(RunConfig.__dataclass_fields__["score"], "default", "paper")
    got, want = score_and_flag(s), score_and_flag(s, "paper", "paper")
    assert all(np.array_equal(got[k], want[k]) for k in want)
    assert not np.array_equal(got["flagged"], score_and_flag(s, "ensemble", "ensemble")["flagged"])


# ------------------------------------------------------------------ consistent flips, wide vote
def _flipped(n_per_class=200, k=4, rate=0.4, seed=5, spread=False):
    """Features clustered by true class; ``rate`` of each class relabelled: to the next class
    (consistent flips) or, with ``spread``, to any other class. The model's probabilities have
    learned the given labels (what a probe does with consistent flips): they carry no signal."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(k), n_per_class)
    centres = rng.normal(size=(k, 16)) * 4
    feats = (centres[truth] + rng.normal(size=(len(truth), 16))).astype(np.float32)
    wrong = rng.random(len(truth)) < rate
    shift = rng.integers(1, k, len(truth)) if spread else np.ones(len(truth), int)
    labels = np.where(wrong, (truth + shift) % k, truth)
    probs = np.full((len(truth), k), 0.1 / (k - 1))
    probs[np.arange(len(truth)), labels] = 0.9
    return feats, labels, truth, probs


def test_wide_k_is_a_quarter_of_a_class_within_bounds():
    from turn_core.scores import WIDE_K_MAX, wide_k

    assert wide_k(4000, 10) == 100
    assert wide_k(1000, 10) == 25
    assert wide_k(100, 10) == 10                  # at least 10 neighbours
    assert wide_k(10**6, 10) == WIDE_K_MAX        # at most WIDE_K_MAX
    assert wide_k(5, 2) == 4                      # never more than the other samples


def test_flip_share_reads_the_flip_rate_of_consistent_flips_only():
    from turn_core.scores import flip_share, wide_vote

    feats, labels, truth, _ = _flipped(rate=0.3)
    assert flip_share(labels, np.eye(4)[truth]) == pytest.approx(np.mean(labels != truth), abs=0.06)
    votes = wide_vote(feats, labels, 4)
    assert votes.shape == (800, 4) and np.allclose(votes.sum(axis=1), 1)
    assert flip_share(labels, votes) > 0.2
    feats, labels, truth, _ = _flipped(rate=0.3, spread=True)   # same rate, spread over 3 classes
    assert flip_share(labels, wide_vote(feats, labels, 4)) < 0.2
    assert flip_share(truth, np.eye(4)[truth]) == 0.0              # no wrong label at all


def _flip_signals(spread=False, epochs=2):
    feats, labels, truth, probs = _flipped(spread=spread)
    views = [feats + 0.01, feats]                 # pretrained and fine-tuned, equally good
    s = build_signals(labels, probs, np.ones(len(labels)), np.zeros((epochs, len(labels))), views,
                      [probs, probs], knn_k=5)
    return s, labels != truth


def test_ensemble_flips_ranks_by_the_wide_vote_only_when_the_labels_look_flipped():
    from sklearn.metrics import roc_auc_score

    from turn_core.scores import learned_flips

    s, noisy = _flip_signals()
    assert "wide_probs" in s.extra and learned_flips(s)
    flips, ens = SCORES["ensemble-flips"](s), SCORES["ensemble"](s)
    assert roc_auc_score(noisy, flips) > 0.9 > roc_auc_score(noisy, ens) + 0.2
    k = ERROR_COUNTS["cl-flips"](s, flips)
    assert k == pytest.approx(ERROR_COUNTS["expected"](s, flips))
    s, noisy = _flip_signals(spread=True)          # the same rate spread over classes: no switch
    assert not learned_flips(s)
    assert np.array_equal(SCORES["ensemble-flips"](s), SCORES["ensemble"](s))
    assert ERROR_COUNTS["cl-flips"](s, flips) == ERROR_COUNTS["cl"](s, flips)


def test_the_provisional_table_reads_the_pretrained_view_and_a_final_one_needs_a_fine_tuned_view():
    from turn_core.scores import FLIP_SHARE_PRETRAINED, flip_share, learned_flips

    s, noisy = _flip_signals(epochs=1)             # the provisional table: Phase I's losses only
    assert flip_share(s.labels, s.extra["wide_probs"]) >= FLIP_SHARE_PRETRAINED and learned_flips(s)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(noisy, SCORES["ensemble-flips"](s)) > roc_auc_score(noisy, SCORES["ensemble"](s)) + 0.2
    s, _ = _flip_signals(epochs=1, spread=True)    # spread noise: the ensemble ranks
    assert not learned_flips(s)
    assert np.array_equal(SCORES["ensemble-flips"](s), SCORES["ensemble"](s))
    feats, labels, _, probs = _flipped()           # a final table whose only trusted view is the
    s = build_signals(labels, probs, np.ones(len(labels)), np.zeros((2, len(labels))), [feats], [probs])
    assert "wide_probs" not in s.extra and not learned_flips(s)   # pretrained one: no wide vote
