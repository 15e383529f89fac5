"""Near-duplicate and exact-duplicate images, as plain functions over a run's arrays.

Two images that look the same but carry different given labels cannot both be right: at least
one label is wrong by construction (cleanlab's Datalab, FiftyOne Brain and fastdup report them
too). ``near_duplicate_pairs`` finds pairs among the neighbours the run's k-NN vote already uses
(cosine on the saved features) above a similarity threshold; ``conflicts`` keeps those whose
labels differ, which the Review page queues as pairs decided together. ``exact_duplicate_groups``
hashes the thumbnails' pixels: identical images are reported whatever their labels (a dataset that
holds one image twice weighs it twice, and a train/test copy leaks).
"""
from __future__ import annotations

import hashlib

import numpy as np

from .scores import knn_label_probs, normalise_rows

NEAR_DUPLICATE_SIMILARITY = 0.95   # cosine similarity at or above which two images are near-duplicates
PAIR_NEIGHBOURS = 5                # neighbours per image searched for its near-duplicates


def near_duplicate_pairs(features: np.ndarray, threshold: float = NEAR_DUPLICATE_SIMILARITY,
                         neighbours: np.ndarray | None = None, k: int = PAIR_NEIGHBOURS
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of images whose features have cosine similarity ≥ ``threshold``.

    features (N, D); neighbours: an (N, k') neighbour graph already computed (e.g. the run's k-NN
    vote), else the ``k`` nearest are searched here. Returns (pairs (P, 2) int with i < j, each
    pair once, sims (P,) float32), most similar first (ties by index).
    """
    f = normalise_rows(features)
    n = len(f)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.float32)
    if neighbours is None:
        neighbours = knn_label_probs(f, np.zeros(n, dtype=np.int64), 1, min(k, n - 1))[1]
    rows = np.repeat(np.arange(n), neighbours.shape[1])
    cols = np.asarray(neighbours).ravel()
    sims = np.einsum("ij,ij->i", f[rows], f[cols])
    keep = (sims >= threshold) & (rows != cols)
    a, b = np.minimum(rows, cols)[keep], np.maximum(rows, cols)[keep]
    pairs, first = np.unique(np.stack([a, b], axis=1), axis=0, return_index=True)
    s = sims[keep][first].astype(np.float32)
    order = np.lexsort((pairs[:, 1], pairs[:, 0], -s))
    return pairs[order].astype(np.int64), s[order]


def conflicts(pairs: np.ndarray, sims: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``pairs`` (P, 2) whose two given ``labels`` (N,) differ, with their ``sims`` (P,)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    lab = np.asarray(labels)
    diff = lab[pairs[:, 0]] != lab[pairs[:, 1]]
    return pairs[diff], np.asarray(sims)[diff]


def pixel_hashes(images: np.ndarray) -> list[str]:
    """One hex digest per image of ``images`` (N, H, W, C) uint8: equal digests = equal pixels."""
    return [hashlib.blake2b(np.ascontiguousarray(im).tobytes(), digest_size=16).hexdigest() for im in images]


def exact_duplicate_groups(images: np.ndarray) -> list[np.ndarray]:
    """Groups (each an int array of ≥ 2 indices, ascending) of images with identical pixels,
    from ``images`` (N, H, W, C) uint8 (the run's thumbnails); groups ordered by first index."""
    seen: dict[str, list[int]] = {}
    for i, h in enumerate(pixel_hashes(images)):
        seen.setdefault(h, []).append(i)
    return [np.array(g, dtype=np.int64) for g in seen.values() if len(g) > 1]


def duplicate_table(pairs: np.ndarray, sims: np.ndarray, labels: np.ndarray, names: list[str],
                    exact: list[np.ndarray] = ()):
    """DataFrame (a, b, similarity, label_a, label_b, kind) of the pairs to show: near-duplicate
    ``pairs`` (P, 2) with their ``sims``, kind "conflict" when the labels differ else "near";
    plus every pair within an ``exact`` group as kind "exact" (similarity 1). ``labels`` (N,)
    int, ``names`` the class names. Conflicts first, then exact, then the rest; most similar first."""
    import pandas as pd

    rows = {}
    for (a, b), s in zip(np.asarray(pairs).reshape(-1, 2), np.asarray(sims)):
        rows[(int(a), int(b))] = (float(s), "conflict" if labels[a] != labels[b] else "near")
    for g in exact:
        for j, a in enumerate(g):
            for b in g[j + 1:]:
                kind = "conflict" if labels[a] != labels[b] else "exact"
                rows[(int(a), int(b))] = (1.0, kind)
    rank = {"conflict": 0, "exact": 1, "near": 2}
    df = pd.DataFrame([{"a": a, "b": b, "similarity": round(s, 4), "label_a": names[labels[a]],
                        "label_b": names[labels[b]], "kind": k} for (a, b), (s, k) in rows.items()],
                      columns=["a", "b", "similarity", "label_a", "label_b", "kind"])
    if len(df) == 0:
        return df
    df["_r"] = df["kind"].map(rank)
    return df.sort_values(["_r", "similarity", "a", "b"], ascending=[True, False, True, True],
                          kind="mergesort").drop(columns="_r").reset_index(drop=True)


__all__ = ["NEAR_DUPLICATE_SIMILARITY", "PAIR_NEIGHBOURS", "conflicts", "duplicate_table", "exact_duplicate_groups",
           "near_duplicate_pairs", "pixel_hashes"]
