"""Near-duplicate and exact-duplicate images, as plain functions over a run's arrays.

Two images that look the same but carry different given labels cannot both be right: at least
one label is wrong by construction (cleanlab's Datalab, FiftyOne Brain and fastdup report them
too). ``near_duplicate_pairs`` finds pairs among the neighbours the run's k-NN vote already uses
(the run's saved neighbour graph and its similarities, ``rundir.Run.neighbours``; for arrays
without one, a ``knn.search`` of the features) at or above a similarity threshold; ``conflicts``
keeps those whose labels differ, which the Review page queues as pairs decided together.
``exact_duplicate_groups`` hashes the thumbnails' pixels: identical images are reported whatever
their labels (a dataset that holds one image twice weighs it twice, and a train/test copy leaks).
"""
from __future__ import annotations

import hashlib

import numpy as np

from .scores import normalise_rows

NEAR_DUPLICATE_SIMILARITY = 0.95   # cosine similarity at or above which two images are near-duplicates
PAIR_NEIGHBOURS = 5                # neighbours per image searched when no neighbour graph is given


def near_duplicate_pairs(features: np.ndarray | None, threshold: float = NEAR_DUPLICATE_SIMILARITY,
                         neighbours: np.ndarray | None = None, k: int = PAIR_NEIGHBOURS,
                         similarities: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of images whose features have cosine similarity ≥ ``threshold``.

    neighbours: an (N, k') neighbour graph already computed (the run's saved one), with its
    ``similarities`` (N, k') when known: then ``features`` is not read at all (None is fine),
    so a run of any size needs no feature copy. Without ``similarities`` they are computed
    from ``features`` (N, D); without ``neighbours`` the ``k`` nearest are searched
    (``knn.search``). Returns (pairs (P, 2) int with i < j, each pair once, sims (P,) float32),
    most similar first (ties by index).
    """
    if neighbours is not None and similarities is not None:
        return graph_pairs(neighbours, similarities, threshold)
    f = normalise_rows(features)
    n = len(f)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.float32)
    if neighbours is None:
        from .knn import search

        neighbours, similarities = search(f, min(k, n - 1))
    else:
        rows = np.repeat(np.arange(n), neighbours.shape[1])
        similarities = np.einsum("ij,ij->i", f[rows], f[np.asarray(neighbours).ravel()]).reshape(neighbours.shape)
    return graph_pairs(neighbours, similarities, threshold)


def graph_pairs(neighbours: np.ndarray, similarities: np.ndarray, threshold: float = NEAR_DUPLICATE_SIMILARITY
                ) -> tuple[np.ndarray, np.ndarray]:
    """The edges of a neighbour graph at or above ``threshold``, each pair once.

    neighbours (N, k) int (row i: i's neighbours; i itself and −1 are skipped), similarities
    (N, k) their cosine similarities (float16 is fine). Returns (pairs (P, 2) int64 with i < j,
    sims (P,) float32), most similar first, ties by index."""
    nb = np.asarray(neighbours, dtype=np.int64)
    sims = np.asarray(similarities, dtype=np.float32)
    hit = sims >= threshold              # the threshold picks the few rows worth expanding
    rows = np.nonzero(hit)[0]
    cols = nb[hit]
    s = sims[hit]
    keep = (rows != cols) & (cols >= 0)
    rows, cols, s = rows[keep], cols[keep], s[keep]
    if len(rows) == 0:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.float32)
    a, b = np.minimum(rows, cols), np.maximum(rows, cols)
    pairs, first = np.unique(np.stack([a, b], axis=1), axis=0, return_index=True)
    s = s[first]
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
           "graph_pairs", "near_duplicate_pairs", "pixel_hashes"]
