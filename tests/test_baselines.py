"""The benchmark's peers (turn_core.baselines): cleanlab on CV-LR probabilities, k-NN label vote."""
from __future__ import annotations

import numpy as np
import pytest

from turn_core.baselines import cleanlab_cv_lr, cross_val_lr_probs, knn_vote
from turn_core.metrics import detection_metrics


def _clusters(n_per_class=40, k=3, dim=8, n_wrong=12, seed=0):
    """Well separated Gaussian clusters (N = n_per_class * k, D = dim) with ``n_wrong`` labels
    moved to the next class; returns features, given labels, true labels."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(k), n_per_class)
    centres = rng.normal(size=(k, dim)) * 6.0
    feats = centres[truth] + rng.normal(size=(len(truth), dim))
    labels = truth.copy()
    wrong = rng.choice(len(truth), n_wrong, replace=False)
    labels[wrong] = (truth[wrong] + 1) % k
    return feats.astype(np.float32), labels, truth


# ----------------------------------------------------------------------------- k-NN vote
def _angles(degrees):
    rad = np.radians(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


def test_knn_vote_hand_computed():
    # two tight groups of directions (cosine similarity); the 4th point carries the other group's label
    feats = _angles([0, 1, 2, 3, 87, 88, 89, 90]) * np.array([[1], [2], [3], [1], [1], [5], [1], [2]])
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    out = knn_vote(feats, labels, 2, k=3)
    # each point's 3 neighbours are the rest of its group (scale does not matter under cosine)
    assert np.array_equal(out["flagged"], [False, False, False, True, False, False, False, False])
    assert np.allclose(out["suspicion"], [1 / 3, 1 / 3, 1 / 3, 1, 0, 0, 0, 0])
    assert np.allclose(out["probs"][3], [1, 0])
    assert np.allclose(out["probs"].sum(axis=1), 1)


def test_knn_vote_finds_moved_labels():
    feats, labels, truth = _clusters()
    out = knn_vote(feats, labels, 3, k=10)
    d = detection_metrics(labels != truth, out["flagged"], out["suspicion"])
    assert d["recall"] == 1.0 and d["precision"] == 1.0
    assert d["auroc"] == 1.0


# -------------------------------------------------------------------------- cleanlab CV-LR
def test_cross_val_lr_probs_shape_rows_and_seed():
    feats, labels, _ = _clusters()
    p = cross_val_lr_probs(feats, labels, seed=0)
    assert p.shape == (len(labels), 3)
    assert np.allclose(p.sum(axis=1), 1) and np.all(p >= 0)
    assert np.array_equal(p, cross_val_lr_probs(feats, labels, seed=0))       # seeded
    assert not np.allclose(p, cross_val_lr_probs(feats, labels, seed=1))      # other folds


def test_cross_val_lr_probs_are_out_of_fold():
    # One point carries the wrong label and a feature no other point has: a model fitted on it
    # memorises it through that feature (p(given) > 0.99 in sample); out of fold that feature was
    # never seen, so its probabilities come from its cluster.
    feats, labels, truth = _clusters(n_wrong=0)
    liar = 0
    labels = labels.copy()
    labels[liar] = (truth[liar] + 1) % 3
    tag = np.zeros((len(feats), 1), dtype=np.float32)
    tag[liar] = 5.0
    p = cross_val_lr_probs(np.hstack([feats, tag]), labels, C=1e4)
    assert p[liar, labels[liar]] < 0.5
    assert p[liar].argmax() == truth[liar]


def test_cleanlab_cv_lr_finds_moved_labels():
    feats, labels, truth = _clusters()
    out = cleanlab_cv_lr(feats, labels)
    assert out["flagged"].dtype == bool and out["flagged"].shape == labels.shape
    assert np.all((out["suspicion"] >= 0) & (out["suspicion"] <= 1))
    d = detection_metrics(labels != truth, out["flagged"], out["suspicion"])
    # cleanlab estimates how many labels each class pair swapped, so its count is near, not exact
    # (F1 0.78 to 1.0 over seeds 0-3 and 40 or 60 points per class); its ranking is exact
    assert d["f1"] >= 0.75
    assert d["auroc"] >= 0.95
    # suspicion is 1 − the label quality of the returned probabilities: flagged samples rank higher
    assert out["suspicion"][out["flagged"]].mean() > out["suspicion"][~out["flagged"]].mean() + 0.5


@pytest.mark.parametrize("peer", ["knn", "cleanlab"])
def test_peers_score_random_labels_near_chance(peer):
    # labels unrelated to the features: no peer may claim to find which are wrong
    feats, _, _ = _clusters(n_wrong=0, seed=3)
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, len(feats))
    truth = rng.integers(0, 3, len(feats))
    out = knn_vote(feats, labels, 3) if peer == "knn" else cleanlab_cv_lr(feats, labels)
    assert abs(detection_metrics(labels != truth, out["flagged"], out["suspicion"])["auroc"] - 0.5) < 0.15
