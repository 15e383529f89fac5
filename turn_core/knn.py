"""k nearest neighbours by cosine similarity, exact up to a size and approximate above it.

One entry point, ``search(features, k)`` → ``(indices (N, k) int64, similarities (N, k) float32)``,
each row sorted by similarity (highest first), a sample never its own neighbour. The search
methods sit in a registry (``METHODS``; ``CHOICES`` adds "auto", the names the ``knn_method``
setting takes) and ``choose_method`` picks one by size and device for "auto":

* ``exact``: chunked matmul + top-k in float32 with torch (on the GPU when there is one). Cost
  grows as N² · D: 32 s at 50k × 1280 on this project's 2-core CPU (../shared/notes/performance.md).
* ``bf16-rerank``: the same pass in bfloat16 (3.5× faster matmuls on CPUs with AMX) for
  ``k + RERANK_EXTRA`` candidates, re-ranked in float32: bf16 alone has recall 0.98, the float32
  re-rank of a few extra candidates restores the exact order for all but near-ties.
* ``hnsw``: faiss HNSW over a PCA projection of the features (``PCA_DIMS``) for ``k · CANDIDATES``
  candidates, re-ranked exactly on the full features. Cost grows as N log N; used above
  ``EXACT_MAX`` rows, where the quadratic pass would take hours.

Recall of the approximate methods against ``exact`` is measured in ``bench/knn.py`` and checked
on small data in tests/test_knn.py.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable

import numpy as np

from .errors import InputError

# Above this many rows the quadratic pass is replaced by the approximate index (bench/knn.py).
EXACT_MAX = 60_000
RERANK_EXTRA = 8        # extra bf16 candidates re-ranked in float32
PCA_DIMS = 128          # HNSW searches a PCA projection of this many dimensions
CANDIDATES = 4          # HNSW returns k · CANDIDATES candidates for the exact re-rank
HNSW_M, HNSW_EF_SEARCH, HNSW_EF_CONSTRUCTION = 32, 128, 80
# One (chunk, N) similarity block holds at most this many floats (1 GiB in float32): at N = 1M a
# 2048-row block would be 8 GiB, more than a GPU next to the features may have free.
BLOCK_FLOATS = 1 << 28

Search = Callable[..., tuple[np.ndarray, np.ndarray]]
METHODS: dict[str, Search] = {}
# Methods that take the features as given (a float16 memmap stays one) and scale rows themselves:
# at 1M × 1280 the float32 unit copy the others search would alone be 5 GB.
READS_RAW: set[str] = set()


def register(name: str, *, raw: bool = False):
    """Add a search method ``fn(features, k, chunk, device) -> (indices, sims)``: ``features`` are
    unit rows (float32), or with ``raw`` the caller's array as it is."""
    def deco(fn: Search) -> Search:
        METHODS[name] = fn
        if raw:
            READS_RAW.add(name)
        return fn
    return deco


def normalise(features) -> np.ndarray:
    """(N, D) float32 rows scaled to unit length (zero rows stay zero): cosine = dot product.
    Reads a float16 memmap in blocks, so the only full copy is the float32 result."""
    f = np.empty(features.shape, dtype=np.float32)
    for s in range(0, len(f), 65_536):
        f[s:s + 65_536] = unit_rows(features[s:s + 65_536])
    return f


def as_tensor(array):
    """A torch tensor over ``array``'s memory, no copy (a read-only float16 memmap stays one:
    torch warns that it cannot write there, and nothing here writes)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(array))


def unit_rows(block) -> np.ndarray:
    """float32 copy of ``block`` (M, D), rows scaled to unit length (zero rows stay zero)."""
    block = np.asarray(block, dtype=np.float32)
    return block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)


def choose_method(n: int, device: str = "cpu") -> str:
    """``exact`` on a GPU and on small CPU data; above ``EXACT_MAX`` rows on a CPU ``hnsw``, or
    ``bf16-rerank`` (still quadratic, but no extra package) when faiss is not installed."""
    if str(device).startswith("cuda") or n <= EXACT_MAX:
        return "exact"
    return "hnsw" if importlib.util.find_spec("faiss") is not None else "bf16-rerank"


def search(features, k: int = 10, *, method: str = "auto", device: str | None = None,
           chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other samples of every sample by cosine similarity.

    features: (N, D) array (float16 memmap is fine). Returns (indices (N, k') int64, sims
    (N, k') float32), k' = min(k, N − 1), each row best first. ``method``: a ``METHODS`` name or
    "auto" (``choose_method``); ``device``: "cpu", "cuda" or None (cuda when available)."""
    import torch

    n = len(features)
    k = max(0, min(int(k), n - 1))
    if k == 0:
        return np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0), dtype=np.float32)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    name = choose_method(n, device) if method == "auto" else method
    if name not in METHODS:
        raise ValueError(f"neighbour search {name!r} is not one of {', '.join(METHODS)}")
    if name == "hnsw" and importlib.util.find_spec("faiss") is None:
        raise InputError("knn_method 'hnsw' needs the faiss-cpu package: install it, or choose "
                         "'auto', 'exact' or 'bf16-rerank'")
    return METHODS[name](features if name in READS_RAW else normalise(features), k, chunk, str(device))


def _topk(base, k: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of every row of ``base`` (the unit rows as a torch tensor on the search device, in
    the precision of the search) against all rows, self excluded; one (chunk, N) block at a time."""
    import torch

    out_i = np.empty((len(base), k), dtype=np.int64)
    out_s = np.empty((len(base), k), dtype=np.float32)
    chunk = max(1, min(chunk, BLOCK_FLOATS // len(base)))   # rows are independent: same result
    for s in range(0, len(base), chunk):
        sims = base[s:s + chunk] @ base.T
        rows = torch.arange(sims.shape[0], device=sims.device)
        sims[rows, s + rows] = -torch.inf   # not your own neighbour
        val, idx = torch.topk(sims.float(), k, dim=1)
        out_i[s:s + chunk], out_s[s:s + chunk] = idx.cpu().numpy(), val.cpu().numpy()
    return out_i, out_s


@register("exact")
def _exact(f: np.ndarray, k: int, chunk: int, device: str):
    import torch

    return _topk(torch.from_numpy(f).to(device, torch.float32), k, chunk)


def rerank(f, candidates: np.ndarray, k: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k among ``candidates`` (N, C) (−1 = none; self never listed) by float32 cosine of
    the rows of ``f`` (N, D; any scale, a float16 memmap is fine); returns (indices (N, k), sims
    (N, k)) best first.

    Gathering the candidate rows is the cost (at 1M rows × 40 candidates, 40M row reads), so it
    is done by torch in ``f``'s own dtype, converted to float32 after the gather, with each row's
    length computed once beforehand: 3× faster than numpy's float16 gather-and-scale (BENCHMARKS.md §6)."""
    import torch

    from .images import release_pages

    n = len(f)
    inv = np.empty(n, dtype=np.float32)
    for s in range(0, n, 65_536):
        block = np.asarray(f[s:s + 65_536], dtype=np.float32)
        inv[s:s + len(block)] = 1.0 / np.maximum(np.linalg.norm(block, axis=1), 1e-12)
    rows = as_tensor(f)
    inv_t = torch.from_numpy(inv)
    out_i = np.empty((n, k), dtype=np.int64)
    out_s = np.empty((n, k), dtype=np.float32)
    for b, s in enumerate(range(0, n, chunk)):
        cand = torch.from_numpy(np.ascontiguousarray(candidates[s:s + chunk], dtype=np.int64))
        missing, safe = cand < 0, cand.clamp(min=0)
        near = rows.index_select(0, safe.reshape(-1)).float().reshape(*safe.shape, -1)
        sims = torch.bmm(near, rows[s:s + len(cand)].float().unsqueeze(2)).squeeze(2)
        sims *= inv_t[safe] * inv_t[s:s + len(cand)].unsqueeze(1)
        sims[missing] = -torch.inf
        val, order = torch.sort(sims, dim=1, descending=True, stable=True)
        out_i[s:s + len(cand)] = torch.gather(cand, 1, order[:, :k]).numpy()
        out_s[s:s + len(cand)] = val[:, :k].numpy()
        if b % 512 == 511:
            release_pages(f)   # the gathered rows' mapped pages count in RSS: hand them back
    return out_i, out_s


@register("bf16-rerank")
def _bf16_rerank(f: np.ndarray, k: int, chunk: int, device: str):
    import torch

    c = min(k + RERANK_EXTRA, len(f) - 1)
    cand, _ = _topk(torch.from_numpy(f).to(device, torch.bfloat16), c, chunk)
    return rerank(f, cand, k)


@register("hnsw", raw=True)
def _hnsw(f, k: int, chunk: int, device: str):
    """``f``: the caller's (N, D) features (a float16 memmap stays one). The index holds their
    unit rows projected to ``PCA_DIMS`` (N × PCA_DIMS float32); the re-rank reads rows of ``f``."""
    import faiss

    from .images import release_pages

    n, d = f.shape
    pca = None
    if d > PCA_DIMS:
        pca = faiss.PCAMatrix(d, PCA_DIMS)
        rng = np.random.default_rng(0)
        pca.train(unit_rows(f[np.sort(rng.choice(n, min(n, 50_000), replace=False))]))
    x = np.empty((n, PCA_DIMS if pca is not None else d), dtype=np.float32)
    for s in range(0, n, 65_536):
        block = unit_rows(f[s:s + 65_536])
        x[s:s + len(block)] = unit_rows(pca.apply(block)) if pca is not None else block
    release_pages(f)
    index = faiss.IndexHNSWFlat(x.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(x)
    index.hnsw.efSearch = max(HNSW_EF_SEARCH, k * CANDIDATES)
    c = min(k * CANDIDATES + 1, n)
    cand = np.empty((n, c - 1), dtype=np.int64)
    for s in range(0, n, 65_536):
        _, got = index.search(x[s:s + 65_536], c)
        cand[s:s + len(got)] = _drop_self(got, np.arange(s, s + len(got)), c - 1)
    del index, x
    return rerank(f, cand, k)


def _drop_self(got: np.ndarray, rows: np.ndarray, width: int) -> np.ndarray:
    """Each row of ``got`` without its own index, cut to ``width`` (−1 pads a short row)."""
    bad = (got == rows[:, None]) | (got < 0)
    order = np.argsort(bad, axis=1, kind="stable")[:, :width]   # the good ones first, in order
    out = np.take_along_axis(got, order, axis=1).astype(np.int64)
    out[np.take_along_axis(bad, order, axis=1)] = -1
    return out


# The names the ``knn_method`` setting accepts: "auto" (``choose_method``) and every method.
CHOICES: tuple[str, ...] = ("auto", *METHODS)


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each row's exact k neighbours that the approximate row also lists."""
    hits = [len(np.intersect1d(a, e)) for a, e in zip(approx, exact)]
    return float(np.sum(hits) / max(exact.size, 1))


__all__ = ["CANDIDATES", "CHOICES", "EXACT_MAX", "METHODS", "PCA_DIMS", "as_tensor", "choose_method", "normalise", "recall_at_k",
           "register", "rerank", "search"]
