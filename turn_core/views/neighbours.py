"""Nearest neighbours of one image in feature space (cosine similarity), for the Review page.

The page shows row i of the run's saved neighbours (``Run.neighbours``: the graph the run's k-NN
vote used, searched once by the scoring step), so "neighbours agree" on the page and the
neighbours shown are one idea and a click never searches. A run written before the neighbours
were saved gets them searched once, on first open, and saved (``saved_neighbours``).
``nearest_neighbours`` is the brute-force search of one row, for arrays that are not a run.
"""
from __future__ import annotations

import threading

import numpy as np

from ..rundir import atomic_save_npy
from ..scores import normalise_rows

_lock = threading.Lock()          # one first-open search per run at a time (reruns wait, then read)
PANEL_VIEWS = ("post", "pre")     # the panel's view: fine-tuned when the run has one


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


def saved_neighbours(run, which: str = "pre") -> tuple[np.ndarray, np.ndarray] | None:
    """The run's saved neighbours of view ``which`` (``Run.neighbours``: indices (N, k) int32,
    similarities (N, k) float16); a run without them (written before they were saved) that has
    features_<which>.npy gets them searched now with its own knn_k / knn_method and saved
    (temporary file + rename), so this happens once per run. None without either."""
    got = run.neighbours(which)
    if got is not None or run.features(which) is None:
        return got
    from ..knn import search

    with _lock:
        got = run.neighbours(which)    # another rerun may have saved them while this one waited
        if got is None:
            idx, sims = search(run.features(which), int(run.settings.get("knn_k", 10)),
                               method=run.settings.get("knn_method", "auto"))
            idx_name, sims_name = run.neighbour_files(which)
            # similarities first: a reader that finds the index file finds its partner
            atomic_save_npy(run.dir / sims_name, sims.astype(np.float16))
            atomic_save_npy(run.dir / idx_name, idx.astype(np.int32))
            got = run.neighbours(which)
    return got


def panel_view(run) -> str | None:
    """The feature view the neighbour panel shows: "post" when the run has it (saved neighbours
    or features), else "pre"; None when it has neither."""
    for which in PANEL_VIEWS:
        if any((run.dir / name).exists() for name in (*run.neighbour_files(which), f"features_{which}.npy")):
            return which
    return None


def needs_search(run) -> bool:
    """True when showing the panel would first search the run's neighbours (an older run)."""
    which = panel_view(run)
    return which is not None and run.neighbours(which) is None


def run_neighbour_table(run, df, index: int, k: int = 8):
    """The panel's table for sample ``index``: row ``index`` of the run's saved neighbours
    (``panel_view``), at most ``k`` of them, as ``neighbour_table`` (index, given_label,
    suggested_label, similarity). Empty when the run has no features nor neighbours."""
    import pandas as pd

    which = panel_view(run)
    got = None if which is None or df is None else saved_neighbours(run, which)
    if got is None or not 0 <= index < len(got[0]) or len(got[0]) != len(df):
        return pd.DataFrame(columns=["index", "given_label", "suggested_label", "similarity"])
    idx = np.asarray(got[0][index, :k], dtype=int)
    sims = np.asarray(got[1][index, :k], dtype=np.float32)
    rows = df.iloc[idx]   # samples row i is sample i (rundir: "index" = row number)
    return pd.DataFrame({"index": idx, "given_label": rows["given_label"].to_numpy(),
                         "suggested_label": rows["suggested_label"].to_numpy(),
                         "similarity": np.round(sims.astype(float), 3)})


def neighbour_vote(table) -> dict[str, int]:
    """Given-label counts among neighbours, most common first."""
    if table is None or len(table) == 0:
        return {}
    vc = table["given_label"].value_counts()
    return {str(k): int(v) for k, v in vc.items()}


__all__ = ["PANEL_VIEWS", "nearest_neighbours", "needs_search", "neighbour_table", "neighbour_vote", "normalise_rows",
           "panel_view", "run_neighbour_table", "saved_neighbours"]
