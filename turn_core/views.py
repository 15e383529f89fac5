"""Derived tables and arrays for the app's pages, as plain functions (no Streamlit here).

Every page of the workbench reads a run directory through ``turn_core.rundir.Run`` and asks this
module for what it shows: the training progress summary, loss histograms with the GMM drawn over
them, the suspicion cut-off and its precision/recall, the review queue, nearest neighbours, the
given→suggested confusion table and the per-class noise estimate. Keeping it here makes it
unit-testable (tests/test_views.py) and keeps algorithm code out of pages.

Inputs are the ``samples.csv`` DataFrame (``Run.samples()``), numpy arrays, or the event list;
every function accepts a run that is half written and returns something empty instead of raising.
"""
from __future__ import annotations

import math
import re
import time
from typing import Any, Iterable

import numpy as np

# --------------------------------------------------------------------------- samples basics

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
    return df["flagged"].astype(int).to_numpy() == 1


def loss_columns(df) -> list[tuple[str, str]]:
    """[(label, column)] of per-sample loss columns in training order: LP, then FFT epochs."""
    if df is None:
        return []
    out = []
    if "loss_lp" in df.columns:
        out.append(("after LP", "loss_lp"))
    fft = []
    for c in df.columns:
        m = re.fullmatch(r"loss_fft_(\d+)", c)
        if m:
            fft.append((int(m.group(1)), c))
    for e, c in sorted(fft):
        out.append((f"FFT epoch {e}", c))
    return out


# --------------------------------------------------------------------------- overview tables

def confusion_table(df, *, only_flagged: bool = False):
    """given_label × suggested_label counts (rows: given, columns: suggested)."""
    import pandas as pd

    if df is None or len(df) == 0:
        return pd.DataFrame()
    d = df[flagged_mask(df)] if only_flagged else df
    classes = sorted(set(df["given_label"]) | set(df["suggested_label"]))
    t = pd.crosstab(d["given_label"], d["suggested_label"])
    t = t.reindex(index=classes, columns=classes, fill_value=0).astype(int)
    t.index.name = "given ↓ / suggested →"
    t.columns.name = None
    return t


def noise_per_class(df):
    """Per given class: images, flagged, estimated noise rate; true rate when known."""
    import pandas as pd

    cols = ["class", "images", "flagged", "estimated_noise_rate"]
    if df is None or len(df) == 0:
        return pd.DataFrame(columns=cols)
    f = flagged_mask(df)
    g = df.assign(_f=f).groupby("given_label", sort=True)
    out = pd.DataFrame({"class": g.size().index, "images": g.size().to_numpy(),
                        "flagged": g["_f"].sum().astype(int).to_numpy()})
    out["estimated_noise_rate"] = out["flagged"] / out["images"].clip(lower=1)
    if has_truth(df):
        y = truth_mask(df)
        out["true_noise_rate"] = df.assign(_y=y).groupby("given_label", sort=True)["_y"].mean().to_numpy()
    return out.reset_index(drop=True)


def detection_summary(df, metrics: dict | None = None) -> dict | None:
    """P/R/F1/AUROC of the run's flags against the truth (None when truth is unknown)."""
    from .metrics import detection_metrics

    if metrics and isinstance(metrics.get("detection"), dict) and "precision" in metrics["detection"]:
        return dict(metrics["detection"])
    if not has_truth(df):
        return None
    return detection_metrics(truth_mask(df), flagged_mask(df), df["suspicion"].to_numpy(float))


def runs_table(infos: Iterable[Any]):
    """The run picker table from ``rundir.list_runs`` results."""
    import pandas as pd

    rows = []
    for r in infos:
        m = r.metrics or {}
        det = m.get("detection") or {}
        rows.append({
            "run": r.name, "status": r.state, "method": r.method or "",
            "started": _fmt_time(r.started), "duration": _fmt_duration(r.started, r.ended),
            "flagged": det.get("n_flagged"), "F1": _round(det.get("f1")),
            "AUROC": _round(det.get("auroc")), "test acc": _round(m.get("test_accuracy")),
            "error": (r.error or "")[:120],
        })
    return pd.DataFrame(rows, columns=["run", "status", "method", "started", "duration", "flagged",
                                       "F1", "AUROC", "test acc", "error"])


def _round(x, nd=3):
    try:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return None
        return round(float(x), nd)
    except (TypeError, ValueError):
        return None


def _fmt_time(t):
    if not t:
        return ""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _fmt_duration(a, b):
    if not a:
        return ""
    return fmt_seconds((b or time.time()) - a)


def fmt_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s) or s < 0:
        return "–"
    s = int(round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


# --------------------------------------------------------------------------- training progress

PHASE_NAMES = {"cache": "decoding images", "features": "extracting features",
               "lp": "linear probing", "fft": "full fine-tuning", "fft-loss": "loss pass after FFT epoch",
               "test": "testing", "score": "scoring", "done": "done", "data": "loading data",
               "backbone": "loading the model"}


def progress_summary(events: list[dict], now: float | None = None) -> dict:
    """Where a run is, from its events: phase, epoch, step, images/s, ETA, curves.

    Returns a dict with ``phase``, ``phase_name``, ``epoch``, ``epochs``, ``step``, ``steps``,
    ``images_per_s``, ``fraction`` (of the current phase, 0..1), ``eta_s`` (of the current phase,
    None when unknown), ``loss_steps`` (list of dicts phase/x/loss for a curve),
    ``loss_epochs`` (phase/epoch/loss), ``clean`` (FFT epoch → clean count per class),
    ``kept`` (FFT epoch → samples per class whose clean posterior passed τ, before balancing),
    ``tau`` (epoch → τ), ``warnings`` (messages), ``last`` (the last event).
    """
    now = time.time() if now is None else now
    out: dict[str, Any] = {"phase": None, "phase_name": "waiting", "epoch": None, "epochs": None,
                           "step": None, "steps": None, "images_per_s": None, "fraction": None,
                           "eta_s": None, "loss_steps": [], "loss_epochs": [], "clean": [], "kept": [],
                           "tau": [], "warnings": [], "last": events[-1] if events else None,
                           "timings": []}
    phase_start: dict[str, float] = {}
    for ev in events:
        ph, kind = ev.get("phase"), ev.get("kind")
        if ph and ph not in phase_start:
            phase_start[ph] = ev.get("t", now)
        if ph:
            out["phase"] = ph
        if kind == "step":
            out.update(epoch=ev.get("epoch"), epochs=ev.get("epochs"), step=ev.get("step"),
                       steps=ev.get("steps"))
            if ev.get("images_per_s") is not None:
                out["images_per_s"] = ev["images_per_s"]
            if ev.get("loss") is not None and ev.get("steps"):
                x = (ev.get("epoch") or 1) - 1 + (ev.get("step") or 0) / max(ev["steps"], 1)
                out["loss_steps"].append({"phase": ph, "x": x, "loss": float(ev["loss"])})
        elif kind == "epoch":
            out.update(epoch=ev.get("epoch"), epochs=ev.get("epochs"))
            out["step"] = out["steps"] = None
            if ev.get("loss") is not None:
                out["loss_epochs"].append({"phase": ph, "epoch": ev.get("epoch"),
                                           "loss": float(ev["loss"])})
            if ev.get("tau") is not None:
                out["tau"].append({"epoch": ev.get("epoch"), "tau": ev["tau"]})
            cpc = ev.get("clean_per_class")
            if isinstance(cpc, dict):
                for c, n in cpc.items():
                    out["clean"].append({"epoch": ev.get("epoch"), "class": str(c), "clean": n})
        elif kind == "gmm" and isinstance(ev.get("kept_per_class"), dict):
            out["kept"] += [{"epoch": ev.get("epoch"), "class": str(c), "kept": n}
                            for c, n in ev["kept_per_class"].items()]
        elif kind == "start":
            out.update(epoch=None, epochs=ev.get("epochs"), step=None, steps=ev.get("steps"))
        elif kind == "warning":
            out["warnings"].append(str(ev.get("message") or ev.get("msg") or ""))
        elif kind == "timing":
            out["timings"].append({"phase": ph, "seconds": ev.get("seconds")})
    out["phase_name"] = PHASE_NAMES.get(out["phase"], out["phase"] or "waiting")
    # Fraction of the current phase done, and a linear ETA from the time spent in it.
    frac = None
    ep, eps, st_, sts = out["epoch"], out["epochs"], out["step"], out["steps"]
    if eps:
        done_epochs = (ep or 0) - (1 if st_ is not None and ep else 0)
        within = (st_ / sts) if (st_ is not None and sts) else 0.0
        frac = (max(done_epochs, 0) + within) / eps
    elif st_ is not None and sts:
        frac = st_ / sts
    if frac is not None:
        frac = float(min(max(frac, 0.0), 1.0))
        out["fraction"] = frac
        started = phase_start.get(out["phase"])
        if started is not None and 0 < frac < 1:
            spent = max(now - started, 0.0)
            out["eta_s"] = spent * (1 - frac) / frac
    return out


# --------------------------------------------------------------------------- loss distributions

def histogram(values, bins: int | np.ndarray = 40, groups: dict[str, np.ndarray] | None = None,
              value_range: tuple[float, float] | None = None) -> dict:
    """Counts of ``values`` in shared bins, one series per group mask.

    Returns ``{"edges", "centers", "width", "counts": {group: counts}}``; without ``groups`` the
    single series is named "all".
    """
    v = np.asarray(values, dtype=float)
    finite = np.isfinite(v)
    if value_range is None:
        if finite.any():
            lo, hi = float(v[finite].min()), float(v[finite].max())
        else:
            lo, hi = 0.0, 1.0
        if hi <= lo:
            hi = lo + 1.0
        value_range = (lo, hi)
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
    """The GMM fit on a loss column (gmm.json as the pipeline writes it).

    ``loss_history[j]`` is ``loss_lp`` (j = 0) or ``loss_fft_j``. FFT epoch e selects its clean set
    from a GMM fit on ``loss_history[e − 1]``; the last entry (``"final": True``, ``epoch`` = j)
    is the fit on the last losses that produced the clean posterior. An entry naming its
    ``loss_column`` wins.
    """
    if not gmm:
        return None
    for g in gmm:
        if g.get("loss_column") == column:
            return g
    m = re.fullmatch(r"loss_fft_(\d+)", column)
    j = int(m.group(1)) if m else (0 if column == "loss_lp" else None)
    if j is None:
        return None
    for g in gmm:
        if g.get("final") and g.get("epoch") == j:
            return g
    for g in gmm:
        if not g.get("final") and g.get("epoch") == j + 1:
            return g
    return None


def loss_curve_rows(progress: dict) -> list[dict]:
    """Rows (panel, x, loss) for the Training page's loss chart, one panel per phase: LP's GCE
    loss per epoch, and FFT's CE loss per step (x in epochs) or, without steps, per epoch. The
    two losses are different functions, so they get separate panels rather than one axis."""
    rows = [{"panel": "LP (GCE, per epoch)", "x": r["epoch"], "loss": r["loss"]}
            for r in progress["loss_epochs"] if r["phase"] == "lp"]
    fft_steps = [r for r in progress["loss_steps"] if r["phase"] == "fft"]
    if fft_steps:
        rows += [{"panel": "FFT (CE, per step)", "x": r["x"], "loss": r["loss"]} for r in fft_steps]
    else:
        rows += [{"panel": "FFT (CE, per epoch)", "x": r["epoch"], "loss": r["loss"]}
                 for r in progress["loss_epochs"] if r["phase"] == "fft"]
    return rows


def gmm_curves(g: dict, x: np.ndarray, n: int, bin_width: float) -> dict[str, np.ndarray]:
    """Each GMM component's density on ``x``, scaled to histogram counts (n × bin width).

    When the fit was on transformed losses (``g["transform"]`` "minmax" with ``lo``/``hi``, or
    "log1p"), densities are mapped back to the raw-loss axis with the Jacobian.
    """
    x = np.asarray(x, dtype=float)
    means = np.asarray(g.get("means", []), dtype=float).ravel()
    var = np.asarray(g.get("variances", []), dtype=float).ravel()
    w = np.asarray(g.get("weights", np.ones_like(means) / max(len(means), 1)), dtype=float).ravel()
    tr = g.get("transform")
    if tr is None and g.get("lo") is not None and g.get("hi") is not None:
        tr = "minmax"  # selection.GMMFit: fitted on (loss − lo) / (hi − lo)
    if tr == "minmax" and g.get("hi") is not None and g.get("lo") is not None and g["hi"] > g["lo"]:
        lo, hi = float(g["lo"]), float(g["hi"])
        z, jac = (x - lo) / (hi - lo), 1.0 / (hi - lo)
    elif tr == "log1p":
        z, jac = np.log1p(np.clip(x, 0, None)), 1.0 / (1.0 + np.clip(x, 0, None))
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
    """Loss value where the clean posterior crosses τ (None when it does not in [lo, hi])."""
    if not g or not g.get("means"):
        return None
    tau = float(g.get("tau", 0.5))
    x = np.linspace(lo, hi, grid)
    comps = gmm_curves(g, x, 1, 1.0)
    names = list(comps)
    if len(names) < 2:
        return None
    clean_name = "clean component" if "clean component" in comps else names[0]
    total = sum(comps.values()) + 1e-300
    post = comps[clean_name] / total
    below = np.nonzero(post < tau)[0]
    if len(below) == 0:
        return None
    # First crossing to the right of the clean mean.
    i = below[0]
    return float(x[i])


# --------------------------------------------------------------------------- suspicion cut-off

def default_cutoff(df) -> float:
    """The suspicion threshold that flags as many images as the run's own rule."""
    if df is None or len(df) == 0:
        return 0.5
    s = np.sort(df["suspicion"].to_numpy(float))[::-1]
    k = int(flagged_mask(df).sum())
    if k <= 0:
        return float(min(1.0, s[0] + 1e-6)) if len(s) else 1.0
    return float(s[min(k, len(s)) - 1])


def cutoff_stats(df, threshold: float) -> dict:
    """Images flagged by ``suspicion >= threshold`` and, with truth, precision/recall/F1."""
    s = df["suspicion"].to_numpy(float)
    sel = s >= threshold
    out = {"threshold": float(threshold), "n_flagged": int(sel.sum()), "n": int(len(s))}
    if has_truth(df):
        from .metrics import detection_metrics

        m = detection_metrics(truth_mask(df), sel)
        out.update(precision=m["precision"], recall=m["recall"], f1=m["f1"], n_noisy=m["n_noisy"])
    return out


def pr_curve(df, points: int = 101):
    """Precision, recall and flagged count as the cut-off sweeps [0, 1] (truth required)."""
    import pandas as pd

    if not has_truth(df):
        return pd.DataFrame(columns=["threshold", "n_flagged", "precision", "recall"])
    y = truth_mask(df)
    s = df["suspicion"].to_numpy(float)
    rows = []
    for t in np.linspace(0, 1, points):
        sel = s >= t
        tp = int((sel & y).sum())
        n = int(sel.sum())
        rows.append({"threshold": float(t), "n_flagged": n,
                     "precision": tp / n if n else float("nan"),
                     "recall": tp / int(y.sum()) if y.any() else float("nan")})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- review queue

def review_queue(df, *, cutoff: float | None = None, decisions: dict | None = None,
                 classes: Iterable[str] | None = None, pair: tuple[str, str] | None = None,
                 status: str = "all"):
    """Suspects ranked by suspicion (highest first).

    ``cutoff`` None → the run's own flags; else ``suspicion >= cutoff``. ``classes``: keep rows
    whose given or suggested label is one of them. ``pair``: (given, suggested). ``status``:
    "all" | "unreviewed" | "reviewed" (``decisions``: index → decision object/dict/str).
    Adds a ``decision`` column ("" when not reviewed).
    """
    import pandas as pd

    if df is None or len(df) == 0:
        return pd.DataFrame(columns=list(df.columns if df is not None else []) + ["decision"])
    sel = (df["suspicion"].to_numpy(float) >= cutoff) if cutoff is not None else flagged_mask(df)
    q = df[sel].copy()
    decisions = decisions or {}
    q["decision"] = [_decision_name(decisions.get(int(i))) for i in q["index"]]
    if classes:
        cs = set(classes)
        q = q[q["given_label"].isin(cs) | q["suggested_label"].isin(cs)]
    if pair:
        q = q[(q["given_label"] == pair[0]) & (q["suggested_label"] == pair[1])]
    if status == "unreviewed":
        q = q[q["decision"] == ""]
    elif status == "reviewed":
        q = q[q["decision"] != ""]
    q = q.sort_values(["suspicion", "index"], ascending=[False, True], kind="mergesort")
    return q.reset_index(drop=True)


def _decision_name(d) -> str:
    if d is None:
        return ""
    if isinstance(d, str):
        return d
    if isinstance(d, dict):
        return str(d.get("decision", ""))
    return str(getattr(d, "decision", ""))


def pair_counts(q):
    """(given, suggested, count) pairs in a queue, most frequent first."""
    import pandas as pd

    if q is None or len(q) == 0:
        return pd.DataFrame(columns=["given_label", "suggested_label", "count"])
    c = q.groupby(["given_label", "suggested_label"]).size().reset_index(name="count")
    return c.sort_values(["count", "given_label"], ascending=[False, True]).reset_index(drop=True)


def paginate(n: int, page: int, per_page: int) -> tuple[int, int, int]:
    """(start, stop, n_pages) for 1-based ``page`` (clamped to the valid range)."""
    per_page = max(int(per_page), 1)
    n_pages = max(1, math.ceil(n / per_page))
    page = min(max(int(page), 1), n_pages)
    start = (page - 1) * per_page
    return start, min(start + per_page, n), n_pages


def next_in_queue(queue_indices: list[int], current: int | None, decisions: dict | None = None) -> int | None:
    """The next sample after ``current`` in the queue without a decision (wraps around)."""
    if not queue_indices:
        return None
    decisions = decisions or {}
    start = queue_indices.index(current) + 1 if current in queue_indices else 0
    order = queue_indices[start:] + queue_indices[:start]
    for i in order:
        if i != current and not _decision_name(decisions.get(int(i))):
            return int(i)
    return None


# --------------------------------------------------------------------------- neighbours

def normalise_rows(features) -> np.ndarray:
    f = np.asarray(features, dtype=np.float32)
    n = np.linalg.norm(f, axis=1, keepdims=True)
    return f / np.maximum(n, 1e-12)


def nearest_neighbours(features, index: int, k: int = 8, normalised: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other samples to ``index`` by cosine similarity: (indices, similarities)."""
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
    """Neighbours of ``index`` with their given/suggested labels and similarity."""
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


# --------------------------------------------------------------------------- thumbnails

def upscale_nearest(img: np.ndarray, min_side: int = 96) -> np.ndarray:
    """Repeat pixels so the shorter side is at least ``min_side`` (keeps small thumbs crisp)."""
    a = np.asarray(img)
    if a.ndim < 2 or min(a.shape[:2]) == 0:
        return a
    f = max(1, int(math.ceil(min_side / min(a.shape[:2]))))
    if f == 1:
        return a
    return np.repeat(np.repeat(a, f, axis=0), f, axis=1)


def png_bytes(img: np.ndarray, min_side: int = 96) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(upscale_nearest(img, min_side)).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- data preview

def class_count_table(labels, classes: list[str]):
    import pandas as pd

    labels = np.asarray(labels, dtype=int)
    counts = np.bincount(labels, minlength=len(classes)) if labels.size else np.zeros(len(classes), int)
    return pd.DataFrame({"class": list(classes), "images": counts[: len(classes)].astype(int)})


def sample_per_class(labels, n_classes: int, per_class: int = 6, seed: int = 0) -> dict[int, list[int]]:
    """Up to ``per_class`` random sample indices of each class (seeded)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, dtype=int)
    out = {}
    for c in range(n_classes):
        idx = np.nonzero(labels == c)[0]
        if len(idx) > per_class:
            idx = np.sort(rng.choice(idx, per_class, replace=False))
        out[c] = [int(i) for i in idx]
    return out
