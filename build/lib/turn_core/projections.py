"""2-D embeddings (t-SNE, UMAP) of a run's features, computed once and cached on disk.

``projection(run_dir, which, kind)`` returns ``(indices, xy)``: the sample rows drawn (a seeded
subsample of at most ``max_points``) and their 2-D coordinates. The result is written atomically to
``RUN_DIR/projections/<which>_<kind>_<max_points>_<seed>.npy`` (rows: index, x, y), so the second
call — in this or any later session — is a file read. Heavy libraries are imported lazily.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import InputError
from .rundir import Run, atomic_save_npy

# Projection kinds and their names for people. ("method" means a run's method: config.METHODS.)
PROJECTIONS = {"tsne": "t-SNE", "umap": "UMAP"}
WHICH = ("pre", "post")


def cache_path(run_dir: str | Path, which: str, kind: str, max_points: int, seed: int) -> Path:
    return Path(run_dir) / "projections" / f"{which}_{kind}_{int(max_points)}_{int(seed)}.npy"


def cached(run_dir: str | Path, which: str = "pre", kind: str = "tsne", max_points: int = 3000,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached projection, or None when it has not been computed yet (or the file is torn)."""
    p = cache_path(run_dir, which, kind, max_points, seed)
    if not p.exists():
        return None
    try:
        a = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    if a.ndim != 2 or a.shape[1] != 3:
        return None
    return a[:, 0].astype(int), a[:, 1:].astype(np.float32)


def subsample(n: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted seeded subsample of range(n) of size min(n, max_points)."""
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, int(max_points), replace=False))


def embed(x: np.ndarray, kind: str = "tsne", seed: int = 0) -> np.ndarray:
    """(n, 2) float32 embedding of the rows of ``x``."""
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    if n == 0:
        return np.zeros((0, 2), np.float32)
    if n < 5:  # too few points for t-SNE/UMAP: a PCA (or a line) is the honest picture
        x0 = x - x.mean(0)
        if n == 1 or not np.any(x0):
            return np.zeros((n, 2), np.float32)
        u, s, _ = np.linalg.svd(x0, full_matrices=False)
        out = np.zeros((n, 2), np.float32)
        k = min(2, u.shape[1])
        out[:, :k] = (u[:, :k] * s[:k]).astype(np.float32)
        return out
    # Reduce to ≤ 50 dimensions first (standard t-SNE practice; also speeds UMAP up).
    if x.shape[1] > 50:
        from sklearn.decomposition import PCA

        x = PCA(n_components=min(50, n), random_state=seed).fit_transform(x).astype(np.float32)
    if kind == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
        y = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed,
                 learning_rate="auto").fit_transform(x)
    elif kind == "umap":
        import warnings

        import umap

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y = umap.UMAP(n_components=2, n_neighbors=int(min(15, n - 1)), random_state=seed,
                          init="spectral" if n > 20 else "random").fit_transform(x)
    else:
        raise InputError(f"projection {kind!r} is not one of {', '.join(PROJECTIONS)}")
    return np.asarray(y, dtype=np.float32)


def projection(run_dir: str | Path, which: str = "pre", kind: str = "tsne", max_points: int = 3000,
               seed: int = 0, progress: Callable[[str], None] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(indices, xy) of a seeded subsample of the run's ``which`` features (cached on disk).

    Raises ``InputError`` when the run has no such features (e.g. a LP-only baseline has no
    post-FFT features) or the kind/which is unknown.
    """
    if which not in WHICH:
        raise InputError(f"features {which!r} is not one of {', '.join(WHICH)}")
    if kind not in PROJECTIONS:
        raise InputError(f"projection {kind!r} is not one of {', '.join(PROJECTIONS)}")
    hit = cached(run_dir, which, kind, max_points, seed)
    if hit is not None:
        return hit
    feats = Run(run_dir).features(which)
    if feats is None:
        raise InputError(f"this run has no features_{which}.npy"
                         + (" (the method has no fine-tuning step)" if which == "post" else ""))
    idx = subsample(len(feats), max_points, seed)
    if progress:
        progress(f"computing {PROJECTIONS[kind]} of {len(idx)} points ({which}-FFT features)")
    x = np.asarray(feats[idx], dtype=np.float32)
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    xy = embed(x, kind, seed)
    arr = np.column_stack([idx.astype(np.float64), xy.astype(np.float64)])
    try:
        atomic_save_npy(cache_path(run_dir, which, kind, max_points, seed), arr)
    except OSError:
        pass  # a read-only run dir still gets its picture, just not cached
    if progress:
        progress("done")
    return idx.astype(int), xy
