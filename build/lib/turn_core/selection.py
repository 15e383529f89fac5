"""Phase-II clean-sample selection: GMM on per-sample losses, then a class-balanced clean set.

Plain functions over numpy arrays; no hidden state.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError


@dataclass
class GMMFit:
    """Two-component 1-D Gaussian mixture over (min-max normalised) losses."""

    means: list[float]
    variances: list[float]
    weights: list[float]
    clean_component: int       # the component with the smaller mean
    lo: float                  # normalisation: x = (loss − lo) / (hi − lo)
    hi: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def fit_loss_gmm(losses: np.ndarray, seed: int = 0) -> tuple[np.ndarray, GMMFit]:
    """Fit a 2-component GMM to ``losses`` (N,); return (clean posterior (N,), fit).

    Losses are min-max normalised first (as in DivideMix, which TURN's selection follows) so the
    fit's regulariser means the same on every dataset. The clean component is the one with the
    smaller mean loss.
    """
    from sklearn.mixture import GaussianMixture

    x = np.asarray(losses, dtype=np.float64)
    lo, hi = float(np.min(x)), float(np.max(x))
    z = ((x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)).reshape(-1, 1)
    if len(z) < 2 or hi <= lo:
        post = np.ones(len(z))
        return post, GMMFit([0.0, 1.0], [1e-3, 1e-3], [1.0, 0.0], 0, lo, hi)
    gmm = GaussianMixture(n_components=2, max_iter=20, tol=1e-2, reg_covar=5e-4, random_state=seed)
    gmm.fit(z)
    clean = int(np.argmin(gmm.means_.ravel()))
    post = gmm.predict_proba(z)[:, clean]
    fit = GMMFit(gmm.means_.ravel().tolist(), gmm.covariances_.ravel().tolist(),
                 gmm.weights_.ravel().tolist(), clean, lo, hi)
    return post, fit


def clean_posterior(losses: np.ndarray, labels: np.ndarray, n_classes: int, *,
                    per_class: bool = False, seed: int = 0) -> tuple[np.ndarray, list[GMMFit]]:
    """Clean posterior of every sample: one GMM over all losses (paper) or one per class."""
    if not per_class:
        post, fit = fit_loss_gmm(losses, seed)
        return post, [fit]
    post = np.zeros(len(losses))
    fits = []
    for c in range(n_classes):
        m = labels == c
        if m.sum() >= 2:
            post[m], fit = fit_loss_gmm(losses[m], seed)
            fits.append(fit)
        else:
            post[m] = 1.0
    return post, fits


def balanced_clean_set(clean_prob: np.ndarray, labels: np.ndarray, n_classes: int, tau: float,
                       rng: np.random.Generator, *, losses: np.ndarray | None = None,
                       min_per_class: int = 0, empty_class_policy: str = "fallback",
                       fallback_k: int = 5) -> tuple[np.ndarray, dict]:
    """Indices of TURN's class-balanced clean set, and a report of how it was drawn.

    Keep samples with ``clean_prob >= tau``; n = the smallest per-class kept count (paper);
    draw n uniformly without replacement from every class's kept samples.

    Open details, decided here (settings in RunConfig):
    * ``min_per_class``: n is raised to at least this, capped by each class's own kept count
      (the paper's rule can throw away most data on very imbalanced sets).
    * a class with no kept sample: "fallback" keeps its ``fallback_k`` lowest-loss samples (so
      the class is not silently dropped and n does not collapse to 0); "error" raises.
    """
    kept = clean_prob >= tau
    per_class: list[np.ndarray] = []
    fallback_classes = []
    for c in range(n_classes):
        idx = np.flatnonzero(kept & (labels == c))
        if idx.size == 0:
            members = np.flatnonzero(labels == c)
            if members.size == 0:
                per_class.append(idx)
                continue
            if empty_class_policy == "error":
                raise InputError(f"class {c} has no sample with clean posterior >= tau={tau}; "
                                 "lower tau or use empty_class_policy=fallback")
            order = members if losses is None else members[np.argsort(losses[members])]
            idx = order[:fallback_k]
            fallback_classes.append(c)
        per_class.append(idx)
    counts = [len(i) for i in per_class if len(i)]
    n = min(counts) if counts else 0
    n = max(n, min_per_class)
    chosen = [rng.choice(i, size=min(n, len(i)), replace=False) for i in per_class if len(i)]
    out = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=int)
    report = {"n_per_class": int(n), "kept_per_class": [int(x) for x in (kept[labels == c].sum() for c in range(n_classes))],
              "drawn_per_class": [int(np.sum(labels[out] == c)) for c in range(n_classes)],
              "fallback_classes": fallback_classes, "n_train": int(out.size)}
    return out, report
