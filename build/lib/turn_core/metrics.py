"""Detection and accuracy metrics as plain functions over arrays.

Conventions: ``is_noisy`` (N,) bool, True where the given label is wrong; ``flagged`` (N,) bool,
True where a method says "label issue"; ``suspicion`` (N,) float, higher = more likely wrong.
"""
from __future__ import annotations

import numpy as np


def detection_metrics(is_noisy, flagged, suspicion=None) -> dict:
    """Precision, recall, F1 of ``flagged`` and AUROC of ``suspicion`` against ``is_noisy``."""
    y = np.asarray(is_noisy, dtype=bool)
    f = np.asarray(flagged, dtype=bool)
    tp = int(np.sum(y & f))
    fp = int(np.sum(~y & f))
    fn = int(np.sum(y & ~f))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    out = {"precision": precision, "recall": recall, "f1": f1, "n_flagged": int(f.sum()),
           "n_noisy": int(y.sum()), "n": int(y.size)}
    if suspicion is not None:
        out["auroc"] = auroc(y, suspicion)
    return out


def auroc(is_noisy, suspicion) -> float:
    """Area under the ROC curve (ties counted half); NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(is_noisy, dtype=bool)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, np.asarray(suspicion, dtype=float)))


def precision_recall_at(is_noisy, suspicion, threshold: float) -> dict:
    """Metrics of the rule ``suspicion >= threshold``."""
    s = np.asarray(suspicion, dtype=float)
    return detection_metrics(is_noisy, s >= threshold)


def accuracy(pred, truth) -> float:
    """Share of ``pred`` (N,) equal to ``truth`` (N,); NaN when N = 0."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    return float(np.mean(pred == truth)) if truth.size else float("nan")
