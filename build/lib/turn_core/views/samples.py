"""Masks over the ``samples.csv`` DataFrame: is the truth known, which labels are wrong, which
images the run flagged, and the true labels."""
from __future__ import annotations

import numpy as np

# The truth column of samples.csv. Runs written before the rename call it "clean_label";
# ``true_labels`` reads either until every reader gets ``Run.samples()``'s renamed frame.
TRUE_LABEL = "true_label"
_OLD_TRUE_LABEL = "clean_label"


def has_truth(df) -> bool:
    """True when the run knows which labels are wrong (demo or injected noise)."""
    return df is not None and "is_noisy" in df.columns and len(df) > 0 and \
        df["is_noisy"].astype(str).isin(["0", "1", "True", "False"]).all()


def truth_mask(df) -> np.ndarray:
    """(N,) bool: True where the given label is wrong (requires ``has_truth``)."""
    v = df["is_noisy"]
    if v.dtype == object:
        return v.astype(str).isin(["1", "True"]).to_numpy()
    return v.astype(bool).to_numpy()


def flagged_mask(df) -> np.ndarray:
    """(N,) bool: the run's own flag rule (the ``flagged`` column) said "label issue"."""
    return df["flagged"].astype(int).to_numpy() == 1


def true_labels(df) -> list[str] | None:
    """(N,) the known true label of every image as strings; None when the run does not know it
    (no truth column, or the column is empty)."""
    if df is None:
        return None
    col = TRUE_LABEL if TRUE_LABEL in df.columns else _OLD_TRUE_LABEL
    if col not in df.columns:
        return None
    labels = df[col].astype(str).tolist()
    return labels if any(t != "" for t in labels) else None
