"""Engine units on plain arrays: GCE, GMM selection, balanced clean set, scores, LP, metrics.

No images, no backbone: every test here runs in well under a second.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from turn_core.errors import Cancelled, InputError
from turn_core.losses import gce_loss
from turn_core.metrics import auroc, detection_metrics, precision_recall_at
from turn_core.progress import CancelToken
from turn_core.scores import (FLAG_RULES, SCORES, Signals, build_signals, knn_label_probs, margin,
                              rank01, score_and_flag, select_views, suggestion_probs)
from turn_core.selection import balanced_clean_set, clean_posterior, fit_loss_gmm
from turn_core.train import train_linear_head


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    return None


# ------------------------------------------------------------------------------------ GCE
def _logits(b=6, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g) * 2.0, torch.randint(0, k, (b,), generator=g)


def test_gce_q1_is_mae_like_one_minus_p_y():
    z, y = _logits()
    p_y = torch.softmax(z, 1)[torch.arange(len(y)), y]
    assert torch.allclose(gce_loss(z, y, q=1.0), (1 - p_y).mean(), atol=1e-6)


def test_gce_small_q_approaches_ce():
    z, y = _logits(b=8, k=5, seed=1)
    ce = F.cross_entropy(z, y)
    errs = [abs(float(gce_loss(z, y, q=q) - ce)) for q in (0.5, 0.1, 1e-3)]
    assert errs[0] > errs[1] > errs[2]          # monotone approach
    assert errs[2] < 1e-2 * float(ce) + 1e-3    # and close at q → 0


@pytest.mark.parametrize("q", [0.3, 0.7, 1.0])
def test_gce_gradient_is_ce_gradient_scaled_by_p_y_to_the_q(q):
    # d/dz (1 − p^q)/q = p^q · d/dz(−log p): low-p_y (likely mislabeled) samples are down-weighted.
    z = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 3.0]], requires_grad=True)  # sample 0 confident, 1 not
    y = torch.tensor([0, 0])
    gce_loss(z, y, q=q).backward()
    g_gce = z.grad.clone()
    z.grad = None
    F.cross_entropy(z, y).backward()
    g_ce = z.grad.clone()
    p_y = torch.softmax(z.detach(), 1)[torch.arange(2), y]
    assert torch.allclose(g_gce, g_ce * p_y[:, None] ** q, atol=1e-6)
    ratio = g_gce.norm(dim=1) / g_ce.norm(dim=1)
    assert ratio[1] < ratio[0]                  # the low-p_y sample gets relatively less gradient


def test_gce_gradient_of_low_p_y_sample_is_smaller_than_under_ce():
    z = torch.tensor([[-3.0, 3.0]], requires_grad=True)
    y = torch.tensor([0])
    gce_loss(z, y, q=0.7).backward()
    g = z.grad.norm().item()
    z.grad = None
    F.cross_entropy(z, y).backward()
    assert g < 0.05 * z.grad.norm().item()


# ------------------------------------------------------------------------------------ GMM
def _two_clusters(seed=0, n_clean=160, n_noisy=40):
    rng = np.random.default_rng(seed)
    losses = np.concatenate([rng.normal(0.1, 0.03, n_clean).clip(0), rng.normal(2.5, 0.2, n_noisy)])
    return losses, n_clean


def test_fit_loss_gmm_separates_two_clusters():
    losses, n_clean = _two_clusters()
    post, fit = fit_loss_gmm(losses, seed=0)
    assert post.shape == losses.shape
    assert np.all((post >= 0) & (post <= 1))
    assert post[:n_clean].min() > 0.9
    assert post[n_clean:].max() < 0.1
    assert fit.clean_component == int(np.argmin(fit.means))
    assert fit.lo == pytest.approx(losses.min()) and fit.hi == pytest.approx(losses.max())
    assert fit.weights[fit.clean_component] == pytest.approx(0.8, abs=0.05)


def test_fit_loss_gmm_is_invariant_to_order():
    losses, _ = _two_clusters(seed=3)
    perm = np.random.default_rng(1).permutation(len(losses))
    post, _ = fit_loss_gmm(losses)
    post_p, _ = fit_loss_gmm(losses[perm])
    assert np.allclose(post[perm], post_p, atol=1e-6)


@pytest.mark.parametrize("losses", [np.full(50, 0.7), np.array([1.3]), np.zeros(2)])
def test_fit_loss_gmm_constant_losses_do_not_crash(losses):
    post, fit = fit_loss_gmm(losses)
    assert post.shape == losses.shape
    assert np.all(np.isfinite(post)) and np.all((post >= 0) & (post <= 1))
    assert fit.to_dict()["clean_component"] in (0, 1)


def test_clean_posterior_per_class_uses_each_class_scale():
    # class 0 losses live near 0.1 / 1.0; class 1 (a hard class) near 5 / 10. One global GMM
    # calls all of class 1 noisy; per-class GMMs find the clean half inside each class.
    rng = np.random.default_rng(0)
    l0 = np.concatenate([rng.normal(0.1, 0.02, 60), rng.normal(1.0, 0.05, 20)])
    l1 = np.concatenate([rng.normal(5.0, 0.1, 60), rng.normal(10.0, 0.3, 20)])
    losses = np.concatenate([l0, l1])
    labels = np.repeat([0, 1], 80)
    clean_mask = np.tile(np.r_[np.ones(60, bool), np.zeros(20, bool)], 2)

    post_pc, fits = clean_posterior(losses, labels, 2, per_class=True)
    assert len(fits) == 2
    assert post_pc[clean_mask].min() > 0.9
    assert post_pc[~clean_mask].max() < 0.1

    post_g, fits_g = clean_posterior(losses, labels, 2, per_class=False)
    assert len(fits_g) == 1
    assert post_g[80:][clean_mask[80:]].max() < 0.5   # the global fit gets class 1 wrong


def test_clean_posterior_per_class_singleton_class_is_clean():
    losses = np.array([0.1, 0.2, 3.0, 0.1, 9.0])
    labels = np.array([0, 0, 0, 0, 1])
    post, fits = clean_posterior(losses, labels, 3, per_class=True)
    assert post[4] == 1.0
    assert len(fits) == 1
    assert post.shape == (5,)


# --------------------------------------------------------------------- balanced clean set
def _kept_setup(kept_counts=(10, 4, 7), extra_per_class=5):
    labels, prob = [], []
    for c, n in enumerate(kept_counts):
        labels += [c] * (n + extra_per_class)
        prob += [0.9] * n + [0.1] * extra_per_class
    return np.array(prob), np.array(labels)


def test_balanced_clean_set_draws_smallest_kept_count_from_each_class():
    prob, labels = _kept_setup()
    idx, rep = balanced_clean_set(prob, labels, 3, 0.5, np.random.default_rng(0))
    assert rep["n_per_class"] == 4
    assert rep["kept_per_class"] == [10, 4, 7]
    assert np.bincount(labels[idx], minlength=3).tolist() == [4, 4, 4]
    assert rep["drawn_per_class"] == [4, 4, 4] and rep["n_train"] == 12
    assert len(np.unique(idx)) == len(idx)          # without replacement
    assert np.all(prob[idx] >= 0.5)                 # only kept samples
    assert np.all(np.diff(idx) > 0)                 # sorted
    assert rep["fallback_classes"] == []


def test_balanced_clean_set_is_seeded():
    prob, labels = _kept_setup()
    a, _ = balanced_clean_set(prob, labels, 3, 0.5, np.random.default_rng(7))
    b, _ = balanced_clean_set(prob, labels, 3, 0.5, np.random.default_rng(7))
    assert np.array_equal(a, b)
    others = [balanced_clean_set(prob, labels, 3, 0.5, np.random.default_rng(s))[0] for s in range(8, 14)]
    assert any(not np.array_equal(a, o) for o in others)


def test_balanced_clean_set_draws_uniformly():
    prob, labels = _kept_setup((10, 4, 7))
    kept0 = np.flatnonzero((labels == 0) & (prob >= 0.5))
    rng = np.random.default_rng(0)
    trials = 3000
    hits = np.zeros(len(labels))
    for _ in range(trials):
        idx, _ = balanced_clean_set(prob, labels, 3, 0.5, rng)
        hits[idx] += 1
    freq = hits[kept0] / trials
    # each of the 10 kept class-0 samples is drawn with probability 4/10; 5 sigma ≈ 0.045
    assert np.all(np.abs(freq - 0.4) < 0.045), freq
    assert hits[(labels == 1) & (prob >= 0.5)].min() == trials    # class 1: all 4 every time
    assert hits[prob < 0.5].sum() == 0


def test_balanced_clean_set_min_per_class_floor_capped_by_class_size():
    prob, labels = _kept_setup((10, 4, 7))
    idx, rep = balanced_clean_set(prob, labels, 3, 0.5, np.random.default_rng(0), min_per_class=6)
    assert rep["n_per_class"] == 6
    assert np.bincount(labels[idx], minlength=3).tolist() == [6, 4, 6]
    idx, rep = balanced_clean_set(prob, labels, 3, 0.5, np.random.default_rng(0), min_per_class=100)
    assert np.bincount(labels[idx], minlength=3).tolist() == [10, 4, 7]
    assert np.all(prob[idx] >= 0.5)


def test_balanced_clean_set_empty_class_falls_back_to_lowest_losses():
    prob, labels = _kept_setup((10, 0, 7), extra_per_class=6)
    losses = np.random.default_rng(0).random(len(labels))
    idx, rep = balanced_clean_set(prob, labels, 3, 0.5, np.random.default_rng(0), losses=losses,
                                  empty_class_policy="fallback", fallback_k=3)
    assert rep["fallback_classes"] == [1]
    members1 = np.flatnonzero(labels == 1)
    lowest = np.sort(members1[np.argsort(losses[members1])[:3]])
    assert np.array_equal(np.sort(idx[labels[idx] == 1]), lowest)
    assert np.bincount(labels[idx], minlength=3).tolist() == [3, 3, 3]   # n = fallback count


def test_balanced_clean_set_fallback_k_larger_than_class():
    prob, labels = _kept_setup((5, 0), extra_per_class=2)
    idx, rep = balanced_clean_set(prob, labels, 2, 0.5, np.random.default_rng(0),
                                  losses=np.arange(len(labels), dtype=float), fallback_k=10)
    assert rep["fallback_classes"] == [1]
    assert np.bincount(labels[idx], minlength=2).tolist() == [2, 2]


def test_balanced_clean_set_empty_class_error_policy_raises():
    prob, labels = _kept_setup((10, 0, 7))
    with pytest.raises(InputError, match="class 1"):
        balanced_clean_set(prob, labels, 3, 0.5, np.random.default_rng(0), empty_class_policy="error")


def test_balanced_clean_set_class_without_any_member_is_skipped():
    prob, labels = _kept_setup((3, 5))
    idx, rep = balanced_clean_set(prob, labels, 3, 0.5, np.random.default_rng(0))
    assert np.bincount(labels[idx], minlength=3).tolist() == [3, 3, 0]
    assert rep["fallback_classes"] == []


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


# --------------------------------------------------------------------------- margin, rank01
def test_margin_hand_values():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.5, 0.0]])
    assert np.allclose(margin(p, np.array([0, 0, 1])), [0.5, -0.5, 0.0])


def test_rank01_hand_values():
    assert np.allclose(rank01(np.array([10.0, -1.0, 3.0])), [1.0, 0.0, 0.5])
    assert np.allclose(rank01(np.array([1.0, 2.0, 2.0, 5.0])), [0.0, 0.5, 0.5, 1.0])  # ties averaged
    assert rank01(np.array([4.2])).tolist() == [0.0]
    assert rank01(np.array([])).shape == (0,)


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
    assert sig.extra == {"views": [0, 1], "final_model_in_ensemble": True}


@pytest.mark.parametrize("kw", [{"score": "nope"}, {"flag_rule": "nope"}])
def test_score_and_flag_unknown_name(kw):
    with pytest.raises(InputError, match="nope"):
        score_and_flag(_signals(), **kw)


# ------------------------------------------------------------------------------ linear head
def _blobs(n=300, d=16, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 4
    y = rng.integers(0, k, n)
    return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y


@pytest.mark.parametrize("loss", ["gce", "ce"])
def test_train_linear_head_learns_separable_problem(loss):
    x, y = _blobs()
    events = []
    w, b, hist = train_linear_head(x, y, 3, loss=loss, epochs=15, lr=0.05, batch_size=64, progress=events.append)
    assert w.shape == (3, 16) and b.shape == (3,)
    acc = float(((torch.from_numpy(x) @ w.T + b).argmax(1).numpy() == y).mean())
    assert acc > 0.95
    assert len(hist) == 15 and hist[-1] < hist[0]
    assert [e["epoch"] for e in events] == list(range(1, 16))
    assert all(e["phase"] == "lp" and e["kind"] == "epoch" for e in events)


def test_train_linear_head_min_steps_fits_small_data():
    """E_LP counts epochs: on 60 samples one 128-batch per epoch is 20 Adam steps at lr 1e-3,
    too few to fit; with at least 32 steps per epoch the same 20 epochs fit the head."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(3, 16)) * 1.5
    y = np.repeat(np.arange(3), 20)
    x = (centres[y] + rng.normal(size=(60, 16)) * 0.5).astype(np.float32)

    def train_acc(min_steps):
        w, b, hist = train_linear_head(x, y, 3, lr=1e-3, epochs=20, min_steps_per_epoch=min_steps)
        return float(np.mean((x @ w.numpy().T + b.numpy()).argmax(1) == y)), hist[-1]

    (acc0, loss0), (acc32, loss32) = train_acc(0), train_acc(32)
    assert loss32 < 0.5 * loss0
    assert acc32 == 1.0


def test_train_linear_head_is_seeded():
    x, y = _blobs(n=100)
    a = train_linear_head(x, y, 3, epochs=3, seed=5)
    b = train_linear_head(x, y, 3, epochs=3, seed=5)
    assert torch.equal(a[0], b[0]) and a[2] == b[2]


def test_train_linear_head_cancelled_before_start():
    x, y = _blobs(n=50)
    tok = CancelToken()
    tok.cancel()
    with pytest.raises(Cancelled):
        train_linear_head(x, y, 3, epochs=5, cancel=tok)


def test_train_linear_head_cancelled_mid_training():
    x, y = _blobs(n=200)
    tok = CancelToken()
    seen = []

    def progress(ev):
        seen.append(ev["epoch"])
        if ev["epoch"] == 2:
            tok.cancel()

    with pytest.raises(Cancelled):
        train_linear_head(x, y, 3, epochs=10, batch_size=32, cancel=tok, progress=progress)
    assert seen == [1, 2]


# --------------------------------------------------------------------------------- metrics
def test_detection_metrics_hand_computed():
    is_noisy = [1, 1, 1, 0, 0, 0, 0, 0]
    flagged = [1, 1, 0, 1, 0, 0, 0, 0]       # tp 2, fp 1, fn 1
    suspicion = [0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.4, 0.05]
    m = detection_metrics(is_noisy, flagged, suspicion)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert (m["n_flagged"], m["n_noisy"], m["n"]) == (3, 3, 8)
    # positives 0.9, 0.8, 0.3 vs negatives 0.7 0.2 0.1 0.4 0.05: pairs won 5 + 5 + 3 = 13 of 15
    assert m["auroc"] == pytest.approx(13 / 15)


def test_detection_metrics_nothing_flagged_and_no_suspicion():
    m = detection_metrics([1, 0, 0], [0, 0, 0])
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)
    assert "auroc" not in m


def test_auroc_ties_count_half_and_single_class_is_nan():
    assert auroc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert auroc([1, 0, 0], [0.6, 0.6, 0.1]) == pytest.approx(0.75)
    assert auroc([1, 0], [0.1, 0.9]) == pytest.approx(0.0)
    assert np.isnan(auroc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert np.isnan(auroc([1, 1], [0.1, 0.2]))


def test_precision_recall_at_threshold():
    m = precision_recall_at([1, 0, 1, 0], [0.9, 0.6, 0.4, 0.1], 0.5)
    assert (m["precision"], m["recall"], m["n_flagged"]) == (0.5, 0.5, 2)
