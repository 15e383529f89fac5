"""The peers TURN Audit is compared with, on the same backbone's pretrained features.

* ``cleanlab_cv_lr``: cleanlab's ``find_label_issues`` on 5-fold cross-validated logistic
  regression probabilities (cleanlab's recommended recipe for a frozen embedding);
* ``knn_vote``: a cosine k-NN label vote (SimiFeat-style): flag when the neighbours' majority
  class differs from the given label; suspicion = share of neighbours that disagree.
Used by the benchmark (``bench/run_bench.py``), not by a run.
"""
from __future__ import annotations

import numpy as np

from .scores import knn_label_probs


def cross_val_lr_probs(features: np.ndarray, labels: np.ndarray, n_folds: int = 5, seed: int = 0,
                       C: float = 1.0) -> np.ndarray:
    """Out-of-fold class probabilities (N, K) of a standardised logistic regression.

    features (N, D), labels (N,) in 0..K-1. Each sample is scored by the model fitted on the other
    folds (stratified, shuffled with ``seed``), so no probability comes from a model that saw it.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=300))
    cv = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return cross_val_predict(clf, np.asarray(features, dtype=np.float32), labels, cv=cv, method="predict_proba")


def cleanlab_cv_lr(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict:
    """cleanlab ``find_label_issues`` + ``get_label_quality_scores`` on CV-LR probabilities.

    Returns ``flagged`` (N,) bool, ``suspicion`` (N,) = 1 − cleanlab's label quality, in [0, 1],
    and ``probs`` (N, K), the out-of-fold probabilities.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    probs = cross_val_lr_probs(features, labels, seed=seed)
    flagged = find_label_issues(labels, probs)
    quality = get_label_quality_scores(labels, probs)
    return {"flagged": np.asarray(flagged, bool), "suspicion": 1.0 - quality, "probs": probs}


def knn_vote(features: np.ndarray, labels: np.ndarray, n_classes: int, k: int = 10) -> dict:
    """Cosine k-NN label vote; flags where the neighbours' majority is another class.

    Returns ``flagged`` (N,) bool, ``suspicion`` (N,) = share of the k neighbours (itself
    excluded) whose label differs, and ``probs`` (N, K), the neighbours' label shares.
    """
    probs, _ = knn_label_probs(features, labels, n_classes, k)
    agree = probs[np.arange(len(labels)), labels]
    return {"flagged": probs.argmax(axis=1) != labels, "suspicion": 1.0 - agree, "probs": probs}
