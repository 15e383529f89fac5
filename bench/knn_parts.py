"""HNSW's parts, timed: PCA projection, index build, candidate search, exact re-rank, with the
recall@k of the candidates and of the result, for a few settings of ``turn_core.knn``'s HNSW.

    .venv/bin/python bench/knn_parts.py FEATURES.npy [--settings JSON] [--k 10] [--queries 1000]

FEATURES.npy: any (N, D) feature file, e.g. a run's ``features_pre.npy`` (real CIFAR features from
a CLI run) or ``bench/scale.py --keep``'s synthetic ones. ``--settings`` is a JSON list of
``{"dims", "M", "efc", "efs", "cand"}`` (PCA dimensions, HNSW M, efConstruction, efSearch,
candidates re-ranked); the default is the shipped setting (``knn.PCA_DIMS``, ``knn.HNSW_M``, ...).
The steps are ``knn._hnsw``'s, one by one, so each can be timed; recall is against exact
neighbours of ``--queries`` sampled rows. One JSON line per setting.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scale import exact_neighbours  # the same exact reference as bench/scale.py

from turn_core import knn


def parts(f, setting: dict, k: int, q: np.ndarray, truth: np.ndarray) -> dict:
    import faiss

    n, d = f.shape
    dims, cand = setting["dims"], setting["cand"]
    t, t0 = {}, time.perf_counter()
    pca = faiss.PCAMatrix(d, dims)
    pca.train(knn.unit_rows(f[np.sort(np.random.default_rng(0).choice(n, min(n, 50_000), replace=False))]))
    x = np.empty((n, dims), dtype=np.float32)
    for s in range(0, n, 65_536):
        x[s:s + 65_536] = knn.unit_rows(pca.apply(knn.unit_rows(f[s:s + 65_536])))
    t["pca_s"], t0 = time.perf_counter() - t0, time.perf_counter()
    index = faiss.IndexHNSWFlat(dims, setting["M"], faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = setting["efc"]
    index.add(x)
    t["build_s"], t0 = time.perf_counter() - t0, time.perf_counter()
    index.hnsw.efSearch = max(setting["efs"], cand)
    got = np.empty((n, cand), dtype=np.int64)
    for s in range(0, n, 65_536):
        _, g = index.search(x[s:s + 65_536], cand + 1)
        got[s:s + len(g)] = knn._drop_self(g, np.arange(s, s + len(g)), cand)
    t["search_s"], t0 = time.perf_counter() - t0, time.perf_counter()
    idx, _ = knn.rerank(f, got, k)
    t["rerank_s"] = time.perf_counter() - t0
    return {**setting, "n": n, **{a: round(b, 1) for a, b in t.items()}, "total_s": round(sum(t.values()), 1),
            "candidate_recall": round(knn.recall_at_k(got[q], truth), 3), "recall": round(knn.recall_at_k(idx[q], truth), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("features", type=Path)
    ap.add_argument("--settings", help="JSON list of settings (default: the shipped one)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=1000)
    a = ap.parse_args()
    f = np.load(a.features, mmap_mode="r")
    q = np.sort(np.random.default_rng(0).choice(len(f), min(a.queries, len(f)), replace=False))
    truth = exact_neighbours(f, q, a.k)
    shipped = {"dims": knn.PCA_DIMS, "M": knn.HNSW_M, "efc": knn.HNSW_EF_CONSTRUCTION, "efs": knn.HNSW_EF_SEARCH,
               "cand": a.k * knn.CANDIDATES}
    for setting in json.loads(a.settings) if a.settings else [shipped]:
        print(json.dumps(parts(f, setting, a.k, q, truth)), flush=True)


if __name__ == "__main__":
    main()
