"""Per-sample loss histograms and the run's GMM drawn over them (the Loss distributions page).

``gmm.json`` is what ``pipeline.py`` writes: a list of entries ``{"epoch", "tau", "means",
"variances", "weights", "clean_component", "lo", "hi", "fits"}``, one per FFT epoch and a last
one with ``"final": True``. Each fit is on min-max normalised losses, ``(loss − lo) / (hi − lo)``
(``selection.fit_loss_gmm``); ``fits`` holds one fit per class when the run fitted per class.
"""
from __future__ import annotations

import math
import re

import numpy as np

from .samples import flagged_mask, has_truth, truth_mask

_FFT_LOSS = re.compile(r"loss_fft_(\d+)")


def loss_columns(df) -> list[tuple[str, str]]:
    """[(label, column)] of per-sample loss columns in training order: LP, then FFT epochs."""
    if df is None:
        return []
    out = [("after LP", "loss_lp")] if "loss_lp" in df.columns else []
    fft = sorted((int(m.group(1)), c) for c in df.columns if (m := _FFT_LOSS.fullmatch(c)))
    return out + [(f"FFT epoch {e}", c) for e, c in fft]


def histogram(values, bins: int | np.ndarray = 40, groups: dict[str, np.ndarray] | None = None,
              value_range: tuple[float, float] | None = None) -> dict:
    """Counts of ``values`` (N,) in shared bins, one series per group mask (N,) bool.

    Returns ``{"edges", "centers", "width", "counts": {group: counts}}``; without ``groups`` the
    single series is named "all". Non-finite values are left out.
    """
    v = np.asarray(values, dtype=float)
    finite = np.isfinite(v)
    if value_range is None:
        lo, hi = (float(v[finite].min()), float(v[finite].max())) if finite.any() else (0.0, 1.0)
        value_range = (lo, hi if hi > lo else lo + 1.0)
    edges = np.histogram_bin_edges(v[finite], bins=bins, range=value_range)
    groups = groups or {"all": np.ones(len(v), dtype=bool)}
    counts = {name: np.histogram(v[finite & np.asarray(m, bool)], bins=edges)[0]
              for name, m in groups.items()}
    return {"edges": edges, "centers": (edges[:-1] + edges[1:]) / 2,
            "width": float(edges[1] - edges[0]), "counts": counts}


def loss_groups(df, split: str = "flagged") -> dict[str, np.ndarray]:
    """Masks for histogram bars: split by "flagged" (kept/flagged) or "truth" (clean/noisy)."""
    if split == "truth" and has_truth(df):
        y = truth_mask(df)
        return {"truly clean": ~y, "truly noisy": y}
    f = flagged_mask(df)
    return {"kept": ~f, "flagged": f}


def gmm_for_column(gmm: list[dict], column: str) -> dict | None:
    """The gmm.json entry fitted on the loss column ``column`` (None when there is none).

    Loss column j is ``loss_lp`` (j = 0) or ``loss_fft_j``. FFT epoch e selects its clean set
    from a GMM fitted on column e − 1; the ``"final"`` entry (``epoch`` = j) is the fit on the
    last column, which gave the clean posterior of samples.csv.
    """
    m = _FFT_LOSS.fullmatch(column)
    j = int(m.group(1)) if m else (0 if column == "loss_lp" else None)
    if not gmm or j is None:
        return None
    for g in gmm:
        if g.get("final") and g.get("epoch") == j:
            return g
    for g in gmm:
        if not g.get("final") and g.get("epoch") == j + 1:
            return g
    return None


def gmm_for_class(g: dict | None, classes: list[str], cls: str | None) -> dict | None:
    """The fit to draw for class ``cls`` (None: all classes → ``g`` itself).

    A per-class fit exists only when the run fitted one GMM per class (``g["fits"]`` has one
    entry per class); it carries ``g``'s τ. None when the run fitted one GMM over all classes.
    """
    if g is None or cls is None:
        return g
    fits = g.get("fits") or []
    if len(fits) > 1 and len(fits) == len(classes) and cls in classes:
        return dict(fits[classes.index(cls)], tau=g.get("tau"))
    return None


def gmm_curves(g: dict, x: np.ndarray, n: int, bin_width: float) -> dict[str, np.ndarray]:
    """Each GMM component's density on the raw-loss axis ``x`` (M,), scaled to histogram counts
    (n × bin width): ``{"clean component": (M,), "noisy component": (M,)}``.

    The fit lives on ``(loss − lo) / (hi − lo)``; the Jacobian ``1 / (hi − lo)`` maps its
    densities back to raw losses. A fit without ``lo < hi`` (all losses equal) is drawn as is.
    """
    x = np.asarray(x, dtype=float)
    means = np.asarray(g.get("means", []), dtype=float).ravel()
    var = np.asarray(g.get("variances", []), dtype=float).ravel()
    w = np.asarray(g.get("weights", np.ones_like(means) / max(len(means), 1)), dtype=float).ravel()
    lo, hi = g.get("lo"), g.get("hi")
    if lo is not None and hi is not None and hi > lo:
        z, jac = (x - float(lo)) / (float(hi) - float(lo)), 1.0 / (float(hi) - float(lo))
    else:
        z, jac = x, 1.0
    clean = g.get("clean_component")
    if clean is None and len(means):
        clean = int(np.argmin(means))
    out = {}
    for k in range(len(means)):
        s2 = max(float(var[k]) if k < len(var) else 1.0, 1e-12)
        dens = w[k] * np.exp(-(z - means[k]) ** 2 / (2 * s2)) / math.sqrt(2 * math.pi * s2) * jac
        name = "clean component" if k == clean else ("noisy component" if len(means) == 2 else f"component {k}")
        out[name] = dens * n * bin_width
    return out


def gmm_tau_loss(g: dict, lo: float, hi: float, grid: int = 2000) -> float | None:
    """The loss in [lo, hi] where the clean posterior first drops below τ, scanning from the
    left (low losses, where the clean component dominates); None when it never does."""
    if not g or not g.get("means"):
        return None
    tau = float(g.get("tau", 0.5))
    x = np.linspace(lo, hi, grid)
    comps = gmm_curves(g, x, 1, 1.0)
    if len(comps) < 2:
        return None
    clean_name = "clean component" if "clean component" in comps else next(iter(comps))
    post = comps[clean_name] / (sum(comps.values()) + 1e-300)
    below = np.nonzero(post < tau)[0]
    return float(x[below[0]]) if len(below) else None
