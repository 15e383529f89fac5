"""The suspicion cut-off: images with ``suspicion >= cut-off`` are the reviewer's suspects.

The cut-off starts where it picks as many images as the run flagged (the run's own rule) and the
reviewer may move it; with the truth known, precision and recall tell what a cut-off catches.
"""
from __future__ import annotations

import numpy as np

from .samples import flagged_mask, has_truth, truth_mask


def default_cutoff(df) -> float:
    """The suspicion cut-off that makes as many suspects as the run flagged."""
    if df is None or len(df) == 0:
        return 0.5
    s = np.sort(df["suspicion"].to_numpy(float))[::-1]
    k = int(flagged_mask(df).sum())
    if k <= 0:
        return float(min(1.0, s[0] + 1e-6)) if len(s) else 1.0
    return float(s[min(k, len(s)) - 1])


def cutoff_stats(df, threshold: float) -> dict:
    """Suspects at ``threshold``: ``{"threshold", "n_suspects", "n"}`` and, with the truth,
    ``precision``, ``recall``, ``f1``, ``n_noisy`` of the suspects against the wrong labels."""
    s = df["suspicion"].to_numpy(float)
    sel = s >= threshold
    out = {"threshold": float(threshold), "n_suspects": int(sel.sum()), "n": len(s)}
    if has_truth(df):
        from ..metrics import detection_metrics

        m = detection_metrics(truth_mask(df), sel)
        out.update(precision=m["precision"], recall=m["recall"], f1=m["f1"], n_noisy=m["n_noisy"])
    return out


def pr_curve(df, points: int = 101):
    """DataFrame (threshold, n_suspects, precision, recall) as the cut-off sweeps [0, 1] in
    ``points`` steps; empty when the truth is unknown."""
    import pandas as pd

    if not has_truth(df):
        return pd.DataFrame(columns=["threshold", "n_suspects", "precision", "recall"])
    y = truth_mask(df)
    s = df["suspicion"].to_numpy(float)
    rows = []
    for t in np.linspace(0, 1, points):
        sel = s >= t
        tp = int((sel & y).sum())
        n = int(sel.sum())
        rows.append({"threshold": float(t), "n_suspects": n,
                     "precision": tp / n if n else float("nan"),
                     "recall": tp / int(y.sum()) if y.any() else float("nan")})
    return pd.DataFrame(rows)
