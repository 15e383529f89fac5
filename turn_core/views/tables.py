"""Tables the Overview and Data & run pages show, and the formatting of times and numbers.

Large classes: a K × K grid is readable only for a few classes (``GRID_MAX_CLASSES``); above
that the pages show the given → suggested *pairs* (``changed_pairs``), most frequent first, and
per-class tables through ``search_rows`` (a search box and the top rows), never K × K cells or
a thousand-row table in the browser."""
from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from .queue import pair_counts
from .samples import flagged_mask, has_truth, truth_mask

# Up to this many classes the Overview shows the full given × suggested grid; above it, pairs.
GRID_MAX_CLASSES = 20
TOP_ROWS = 50   # rows a per-class or per-pair table shows before the search narrows it
RUNS_COLUMNS = ["run", "status", "method", "started", "duration", "flagged", "F1", "AUROC",
                "test acc", "error"]


# --------------------------------------------------------------------------- formatting
def fmt_round(x, nd: int = 3) -> float | None:
    """``x`` rounded to ``nd`` digits; None for None, NaN and what is not a number."""
    try:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return None
        return round(float(x), nd)
    except (TypeError, ValueError):
        return None


def fmt_time(t: float | None) -> str:
    """Unix time as local "YYYY-mm-dd HH:MM" ("" when unknown)."""
    if not t:
        return ""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def fmt_seconds(s: float | None) -> str:
    """A duration for people: "5 s", "2 min 05 s", "3 h 02 min"; "–" when unknown."""
    if s is None or not math.isfinite(s) or s < 0:
        return "–"
    s = round(float(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def fmt_duration(start: float | None, end: float | None) -> str:
    """``fmt_seconds`` from ``start`` to ``end`` (to now while ``end`` is None); "" without start."""
    if not start:
        return ""
    return fmt_seconds((end or time.time()) - start)


# --------------------------------------------------------------------------- overview
def runs_table(infos: Iterable[Any]):
    """The Overview's run table (``RUNS_COLUMNS``) from ``rundir.list_runs`` results."""
    import pandas as pd

    rows = []
    for r in infos:
        m = r.metrics or {}
        det = m.get("detection") or {}
        rows.append({
            "run": r.name, "status": r.state, "method": r.method or "",
            "started": fmt_time(r.started), "duration": fmt_duration(r.started, r.ended),
            "flagged": det.get("n_flagged"), "F1": fmt_round(det.get("f1")),
            "AUROC": fmt_round(det.get("auroc")), "test acc": fmt_round(m.get("test_accuracy")),
            "error": (r.error or "")[:120],
        })
    return pd.DataFrame(rows, columns=RUNS_COLUMNS)


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


def changed_pairs(df, *, only_flagged: bool = False):
    """The given → suggested pairs whose labels differ, with their image counts: DataFrame
    (given_label, suggested_label, count), most frequent first (ties by given label). The
    off-diagonal cells of ``confusion_table``, as rows: readable at any number of classes.
    ``only_flagged``: count only the rows the run flagged."""
    if df is None or len(df) == 0:
        return pair_counts(None)
    d = df[flagged_mask(df)] if only_flagged else df
    return pair_counts(d[(d["given_label"] != d["suggested_label"]).to_numpy()])


def n_classes(df) -> int:
    """How many distinct labels the table's given and suggested columns hold."""
    if df is None or len(df) == 0:
        return 0
    return len(set(df["given_label"].unique()) | set(df["suggested_label"].unique()))


def search_rows(table, text: str = "", columns: Iterable[str] = ("class",), top: int | None = TOP_ROWS):
    """(the rows shown, how many match): the rows of ``table`` where any of ``columns``
    contains ``text`` (case-insensitive; "" matches all), the first ``top`` of them (None: all).
    The table keeps its order, so sort it by what matters first."""
    if table is None or len(table) == 0:
        return table, 0
    needle = str(text or "").strip().lower()
    if needle:
        hit = np.zeros(len(table), dtype=bool)
        for c in columns:
            hit |= table[c].astype(str).str.lower().str.contains(needle, regex=False).to_numpy()
        table = table[hit]
    n = len(table)
    shown = table if top is None else table.head(int(top))
    return shown.reset_index(drop=True), n


def noise_per_class(df):
    """Per given class: images, flagged, estimated noise rate (share flagged); the true rate
    (``true_noise_rate``) when the truth is known."""
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
    """P/R/F1/AUROC of the run's flags against the truth (None when truth is unknown);
    ``metrics.json``'s numbers when it has them."""
    from ..metrics import detection_metrics

    if metrics and isinstance(metrics.get("detection"), dict) and "precision" in metrics["detection"]:
        return dict(metrics["detection"])
    if not has_truth(df):
        return None
    return detection_metrics(truth_mask(df), flagged_mask(df), df["suspicion"].to_numpy(float))


# --------------------------------------------------------------------------- data preview
def class_count_table(labels, classes: list[str]):
    """DataFrame (class, images): how many of ``labels`` (N,) int fall in each class."""
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
