"""Nearest neighbours of one image in feature space (cosine similarity), for the Review page.

The rows are normalised by ``turn_core.scores.normalise_rows``, the same normalisation the
run's k-NN vote used, so "neighbours agree" on the page and the neighbours shown are one idea.
"""
from __future__ import annotations

import numpy as np

from ..scores import normalise_rows


def nearest_neighbours(features, index: int, k: int = 8, normalised: bool = False
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other rows of ``features`` (N, D) to row ``index`` by cosine similarity.

    Returns (indices (k,) int, similarities (k,) float32), most similar first; empty arrays when
    there is no other row or ``index`` is out of range. ``normalised``: the rows already have
    unit length (``normalise_rows``), which saves a copy of a large array per call.
    """
    f = features if normalised else normalise_rows(features)
    n = len(f)
    if n <= 1 or not 0 <= index < n:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=np.float32)
    sims = f @ f[index]
    sims[index] = -np.inf
    k = min(k, n - 1)
    idx = np.argpartition(-sims, k - 1)[:k]
    idx = idx[np.argsort(-sims[idx], kind="stable")]
    return idx.astype(int), sims[idx].astype(np.float32)


def neighbour_table(df, features, index: int, k: int = 8, normalised: bool = False):
    """Neighbours of ``index``: DataFrame (index, given_label, suggested_label, similarity)."""
    import pandas as pd

    if features is None or df is None:
        return pd.DataFrame(columns=["index", "given_label", "suggested_label", "similarity"])
    idx, sims = nearest_neighbours(features, index, k, normalised)
    rows = df.set_index("index").reindex(idx)
    return pd.DataFrame({"index": idx, "given_label": rows["given_label"].to_numpy(),
                         "suggested_label": rows["suggested_label"].to_numpy(),
                         "similarity": np.round(sims.astype(float), 3)})


def neighbour_vote(table) -> dict[str, int]:
    """Given-label counts among neighbours, most common first."""
    if table is None or len(table) == 0:
        return {}
    vc = table["given_label"].value_counts()
    return {str(k): int(v) for k, v in vc.items()}


__all__ = ["nearest_neighbours", "neighbour_table", "neighbour_vote", "normalise_rows"]
