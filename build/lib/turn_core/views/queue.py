"""The reviewer's queue: suspects ranked by suspicion, filtered, paged, and what comes next."""
from __future__ import annotations

import math
from collections.abc import Iterable

from .samples import flagged_mask

REVIEW_STATUSES = ("all", "unreviewed", "reviewed")


def decision_name(d) -> str:
    """The decision of ``d`` (a ``review.Decision``, a dict with "decision", a string or None)
    as a string; "" when not reviewed."""
    if d is None:
        return ""
    if isinstance(d, str):
        return d
    if isinstance(d, dict):
        return str(d.get("decision", ""))
    return str(getattr(d, "decision", ""))


def review_queue(df, *, cutoff: float | None = None, decisions: dict | None = None,
                 classes: Iterable[str] | None = None, pair: tuple[str, str] | None = None,
                 status: str = "all"):
    """Suspects ranked by suspicion (highest first, ties by index).

    ``cutoff``: suspects are the rows with ``suspicion >= cutoff``; None → the run's flagged
    rows. ``classes``: keep rows whose given or suggested label is one of them. ``pair``:
    (given, suggested). ``status``: one of REVIEW_STATUSES (``decisions``: index → decision
    object/dict/str). Adds a ``decision`` column ("" when not reviewed).
    """
    import pandas as pd

    if df is None or len(df) == 0:
        return pd.DataFrame(columns=list(df.columns if df is not None else []) + ["decision"])
    sel = (df["suspicion"].to_numpy(float) >= cutoff) if cutoff is not None else flagged_mask(df)
    q = df[sel].copy()
    decisions = decisions or {}
    q["decision"] = [decision_name(decisions.get(int(i))) for i in q["index"]]
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


def pair_counts(q):
    """DataFrame (given_label, suggested_label, count) of a queue, most frequent pair first."""
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
        if i != current and not decision_name(decisions.get(int(i))):
            return int(i)
    return None


def after_decision(queue_indices: list[int], current: int, decisions: dict | None = None) -> int | None:
    """Where the Review page goes after a decision on ``current``: the next unreviewed suspect,
    else simply the next one in the queue (wrapping; ``current`` itself when it is alone)."""
    nxt = next_in_queue(queue_indices, current, decisions)
    if nxt is not None or not queue_indices:
        return nxt
    if len(queue_indices) == 1:
        return current
    i = queue_indices.index(current) if current in queue_indices else -1
    return queue_indices[(i + 1) % len(queue_indices)]


def step(queue_indices: list[int], current: int | None, delta: int) -> int | None:
    """The suspect ``delta`` places from ``current`` in the queue (wrapping); None when empty."""
    if not queue_indices:
        return None
    i = queue_indices.index(current) if current in queue_indices else 0
    return queue_indices[(i + delta) % len(queue_indices)]
