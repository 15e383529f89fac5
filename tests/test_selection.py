"""GMM on losses, clean posterior and the class-balanced clean set (turn_core.selection)."""
from __future__ import annotations

import numpy as np
import pytest

from turn_core.errors import InputError
from turn_core.selection import balanced_clean_set, clean_posterior, fit_loss_gmm


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    return None

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
