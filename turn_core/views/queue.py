"""The reviewer's queue: suspects ranked by suspicion (or by the learning queue, re-ranked in a
background thread from the decisions), filtered, paged, what comes next, and the near-duplicate
conflicts decided as pairs."""
from __future__ import annotations

import io
import math
import os
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .. import rerank
from ..rundir import atomic_write_bytes
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


def suspect_order(suspicion, index, cutoff: float | None = None, *, flagged=None, learned=None) -> np.ndarray:
    """The review queue's order: (M,) int64 row positions of the suspects, most suspicious first.

    ``suspicion`` (N,) float and ``index`` (N,) int (each row's sample index) by row;
    ``cutoff``: the suspects are the rows with ``suspicion >= cutoff``; None → the rows where
    ``flagged`` (N,) bool is True (the run's own rule). ``learned``: the learning queue's
    suspicion (N,) by sample index (``read_learned``) or None: with it the rows are ranked by
    it, and a row whose learned suspicion rose to the cut-off joins the suspects. Ties go by
    sample index. Depends on the table, the cut-off and the learned suspicion only, never on the
    decisions, so a page computes it once per (table, cut-off, re-ranking) and caches it.
    """
    suspicion = np.asarray(suspicion, dtype=float)
    index = np.asarray(index, dtype=np.int64)
    sel = suspicion >= cutoff if cutoff is not None else np.asarray(flagged, dtype=bool)
    key = suspicion
    if learned is not None and len(learned) == len(suspicion):
        key = np.asarray(learned, dtype=float)[index]
        if cutoff is not None:
            sel = sel | (key >= cutoff)
    rows = np.flatnonzero(sel)
    # lexsort: last key first; -key ascending is key descending (NaN last, as pandas sorts it)
    return rows[np.lexsort((index[rows], -key[rows]))].astype(np.int64)


def review_queue(df, *, cutoff: float | None = None, decisions: dict | None = None,
                 classes: Iterable[str] | None = None, pair: tuple[str, str] | None = None,
                 status: str = "all", learned=None, order: np.ndarray | None = None):
    """Suspects ranked by suspicion (highest first, ties by index).

    ``cutoff``: suspects are the rows with ``suspicion >= cutoff``; None → the run's flagged
    rows. ``classes``: keep rows whose given or suggested label is one of them. ``pair``:
    (given, suggested). ``status``: one of REVIEW_STATUSES (``decisions``: index → decision
    object/dict/str). Adds a ``decision`` column ("" when not reviewed).
    ``learned``: the learning queue's suspicion (N,) by sample index (``read_learned``), or
    None for the original order. With it the queue is ranked by it, and an image whose learned
    suspicion rose to the cut-off joins the suspects (column ``learned``).
    ``order``: ``suspect_order`` of the same table, cut-off and learned suspicion when the
    caller has it cached; only the M suspects' rows are then touched, never the whole table.
    """
    import pandas as pd

    if df is None or len(df) == 0:
        return pd.DataFrame(columns=list(df.columns if df is not None else []) + ["decision"])
    if order is None:
        order = suspect_order(df["suspicion"].to_numpy(float), df["index"].to_numpy(np.int64), cutoff,
                              flagged=flagged_mask(df) if cutoff is None else None, learned=learned)
    q = df.iloc[order].reset_index(drop=True)
    use_learned = learned is not None and len(learned) == len(df)
    q["learned"] = (np.asarray(learned, dtype=float)[q["index"].to_numpy(np.int64)] if use_learned
                    else q["suspicion"].to_numpy(float))
    decisions = decisions or {}
    q["decision"] = [decision_name(decisions.get(int(i))) for i in q["index"]]
    return filter_queue(q, classes=classes, pair=pair, status=status)


def filter_queue(q, *, classes: Iterable[str] | None = None, pair: tuple[str, str] | None = None,
                 status: str = "all"):
    """The rows of a ``review_queue`` result that pass the filters (order kept, index reset):
    ``classes`` (given or suggested label among them), ``pair`` (given, suggested) and
    ``status`` (REVIEW_STATUSES, by the ``decision`` column)."""
    keep = np.ones(len(q), dtype=bool)
    if classes:
        cs = list(classes)
        keep &= (q["given_label"].isin(cs) | q["suggested_label"].isin(cs)).to_numpy()
    if pair:
        keep &= ((q["given_label"] == pair[0]) & (q["suggested_label"] == pair[1])).to_numpy()
    if status == "unreviewed":
        keep &= (q["decision"] == "").to_numpy()
    elif status == "reviewed":
        keep &= (q["decision"] != "").to_numpy()
    return q if keep.all() else q[keep].reset_index(drop=True)


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


# ------------------------------------------------------------------ the learning queue
# The Review page never waits for a re-ranking: it reads the last one from LEARNED_FILE in the
# run directory and, when REFRESH_EVERY decisions have come since, asks a background thread
# (``start_learning``) for the next. The thread never touches Streamlit.
LEARNED_FILE = "queue_learned.npz"   # suspicion (N,) after n_decisions decisions (+ errors_left)
DUPLICATES_FILE = "duplicates.csv"    # a, b, similarity, label_a, label_b, kind (see duplicates.py)
_running: set[str] = set()            # run dirs with a re-ranking in flight (one at a time each)
_bases: dict[str, tuple[float, object]] = {}  # run dir → (samples.csv mtime, RerankBase)
_lock = threading.Lock()


def trusted_labels(decisions: dict, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(indices (M,) int, labels (M,) int) the reviewer's decisions say, oldest decision first
    (the hedge of ``rerank.learned_suspicion`` holds out the latest): each decision's final
    label as a class index, ``rerank.UNKNOWN`` for an excluded image or a label not in ``classes``."""
    idx = {c: i for i, c in enumerate(classes)}
    items = sorted(((int(i), d) for i, d in (decisions or {}).items() if decision_name(d)),
                   key=lambda it: (it[1].created_at, it[1].id, it[0]))
    lab = [idx.get(getattr(d, "final_label", None) or "", rerank.UNKNOWN) for _, d in items]
    return np.array([i for i, _ in items], dtype=np.int64), np.array(lab, dtype=np.int64)


def decisions_changed(decisions: dict, given: dict[int, str]) -> list[bool]:
    """Per decision, oldest first: did it change the image's label (relabel/accept to another
    class, or exclude)? ``given``: index → given label."""
    ds = sorted((d for d in (decisions or {}).values() if decision_name(d)), key=lambda d: (d.created_at, d.id))
    return [d.decision == "exclude" or (d.final_label is not None and d.final_label != given.get(int(d.index)))
            for d in ds]


def read_learned(run_dir) -> dict | None:
    """The last re-ranking of a run: {"suspicion": (N,), "n_decisions": int, "seconds": float};
    None when there is none yet or the file is unreadable (a new one will be made)."""
    p = Path(run_dir) / LEARNED_FILE
    try:
        if p.stat().st_mtime < (Path(run_dir) / "samples.csv").stat().st_mtime:
            return None  # made from an earlier table (e.g. the provisional one): stale
        with np.load(p) as z:
            return {"suspicion": z["suspicion"], "n_decisions": int(z["n_decisions"]), "seconds": float(z["seconds"])}
    except (OSError, KeyError, ValueError):
        return None


def learning_due(learned: dict | None, n_decisions: int, every: int = rerank.REFRESH_EVERY,
                 start: int = rerank.WARMUP) -> bool:
    """Whether a new re-ranking should start: ``start`` decisions made, and ``every`` since the
    last re-ranking (or none made yet)."""
    if n_decisions < start:
        return False
    return learned is None or abs(n_decisions - learned["n_decisions"]) >= every


def _base(run_dir: Path):
    from ..rundir import Run

    stamp = (run_dir / "samples.csv").stat().st_mtime
    with _lock:
        hit = _bases.get(str(run_dir))
    if hit and hit[0] == stamp:
        return hit[1]
    base = rerank.base_from_run(Run(run_dir))
    with _lock:
        _bases[str(run_dir)] = (stamp, base)
    return base


def compute_learned(run_dir, decisions: dict, classes: list[str]) -> dict:
    """Re-rank now (seconds; the thread's job): write LEARNED_FILE and return what
    ``read_learned`` will. Raises ``InputError`` when the run lacks the arrays it needs."""
    run_dir = Path(run_dir)
    t0 = time.time()
    base = _base(run_dir)
    idx, lab = trusted_labels(decisions, classes)
    order = rerank.static_order(base.static)
    s = rerank.learned_suspicion(base, idx, lab)
    if len(order) > rerank.TOP_N:  # re-rank the head only: the tail keeps its static suspicion
        s[order[rerank.TOP_N:]] = np.minimum(base.static[order[rerank.TOP_N:]], s[order[:rerank.TOP_N]].min())
    out = {"suspicion": s.astype(np.float32), "n_decisions": len(idx), "seconds": time.time() - t0}
    buf = io.BytesIO()
    np.savez(buf, **out)
    atomic_write_bytes(run_dir / LEARNED_FILE, buf.getvalue())
    return out


def _yield_cpu() -> None:
    """Lower the calling thread's CPU priority (Linux: nice is per thread), so that a re-ranking
    on a few cores slows the page's rerun after a keystroke less (the numpy/torch pool threads it
    uses keep theirs; BENCHMARKS.md §6)."""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:
            pass


def _in_background(run_dir, job: str, fn) -> bool:
    """Run ``fn()`` in a daemon thread unless ``job`` already runs for this run; True when
    started. Errors go to the run's run.log: a thread has nobody to raise to."""
    key = f"{job}:{Path(run_dir)}"
    with _lock:
        if key in _running:
            return False
        _running.add(key)

    def work():
        try:
            _yield_cpu()
            fn()
        except Exception as e:  # noqa: BLE001 (log whatever went wrong; the page shows the old result)
            with open(Path(run_dir) / "run.log", "a", encoding="utf-8") as f:
                f.write(f"{job}: {type(e).__name__}: {e}\n")
        finally:
            with _lock:
                _running.discard(key)

    threading.Thread(target=work, name=f"{job}-{Path(run_dir).name}", daemon=True).start()
    return True


def start_learning(run_dir, decisions: dict, classes: list[str]) -> bool:
    """``compute_learned`` in a background thread unless one is already running for this run;
    True when one was started."""
    decisions, classes = dict(decisions), list(classes)
    return _in_background(run_dir, "learning", lambda: compute_learned(run_dir, decisions, classes))


def start_duplicates(run_dir) -> bool:
    """``compute_duplicates`` in a background thread (once at a time per run)."""
    return _in_background(run_dir, "duplicates", lambda: compute_duplicates(run_dir))


def busy(run_dir, job: str = "learning") -> bool:
    """Whether ``job`` ("learning" or "duplicates") is in flight for this run."""
    with _lock:
        return f"{job}:{Path(run_dir)}" in _running


def can_learn(run_dir) -> bool:
    """Whether the run holds the arrays a re-ranking needs (cv_probs, probs, features_pre)."""
    d = Path(run_dir)
    return all((d / f).exists() for f in ("cv_probs.npy", "probs.npy", "features_pre.npy", "samples.csv"))


def error_count(run_dir, given_labels, classes: list[str]) -> float | None:
    """Confident learning's count of the wrong labels in the whole run (``rerank.error_count``)
    on the ensemble probabilities the run saved (ensemble_probs.npy, row i = samples row i);
    given_labels (N,) class names in table order. None when the run has no such file or it does
    not match the table (an older run): "errors left" then rests on the decisions alone."""
    p = Path(run_dir) / "ensemble_probs.npy"
    if not p.exists():
        return None
    try:
        probs = np.load(p, mmap_mode="r")
    except (OSError, ValueError):
        return None
    idx = {c: i for i, c in enumerate(classes)}
    labels = np.array([idx.get(str(c), -1) for c in given_labels], dtype=np.int64)
    if probs.ndim != 2 or len(probs) != len(labels) or probs.shape[1] != len(classes) or (labels < 0).any():
        return None
    return rerank.error_count(labels, np.asarray(probs, dtype=np.float64))


# ------------------------------------------------------------------ duplicates in the queue
CONFLICT_CHOICES = ("a", "b", "keep", "exclude")   # both get a's label, both b's, each keeps its own, both out


def compute_duplicates(run_dir, threshold: float | None = None):
    """Near-duplicate pairs (among the run's saved neighbours of the pretrained features) and
    exact duplicates (thumbnail pixels) of a run as ``duplicates.duplicate_table``; written to
    DUPLICATES_FILE and returned. A run without saved neighbours gets them searched and saved
    once (``neighbours.saved_neighbours``). An empty table when the run has no features, no
    neighbours and no thumbnails."""
    from .. import duplicates as dup
    from ..rundir import Run
    from .neighbours import saved_neighbours

    run = Run(run_dir)
    s = run.samples(["given_label"])
    names = run.classes or sorted(set(s["given_label"]))
    labels = s["given_label"].map({c: i for i, c in enumerate(names)}).to_numpy()
    graph = saved_neighbours(run, "pre")
    pairs, sims = (np.zeros((0, 2), dtype=np.int64), np.zeros(0))
    if graph is not None and len(graph[0]) == len(s):
        pairs, sims = dup.near_duplicate_pairs(None, dup.NEAR_DUPLICATE_SIMILARITY if threshold is None else threshold,
                                               neighbours=graph[0], similarities=graph[1])
    thumbs = run.thumbs()
    exact = dup.exact_duplicate_groups(thumbs) if thumbs is not None and len(thumbs) == len(s) else []
    table = dup.duplicate_table(pairs, sims, labels, names, exact)
    atomic_write_bytes(Path(run_dir) / DUPLICATES_FILE, table.to_csv(index=False).encode("utf-8"))
    return table


def read_duplicates(run_dir):
    """DUPLICATES_FILE as a DataFrame, or None when it was not made yet (or is unreadable)."""
    import pandas as pd

    p = Path(run_dir) / DUPLICATES_FILE
    try:
        return pd.read_csv(p, keep_default_na=False, dtype={"label_a": str, "label_b": str})
    except (OSError, ValueError, pd.errors.ParserError):
        return None


def conflict_queue(table, decisions: dict | None = None, status: str = "unreviewed"):
    """The near-duplicate pairs whose labels conflict, most similar first, with a ``decided``
    column (True when both images have a decision); ``status`` as in ``review_queue``."""
    import pandas as pd

    cols = ["a", "b", "similarity", "label_a", "label_b", "kind", "decided"]
    if table is None or len(table) == 0:
        return pd.DataFrame(columns=cols)
    q = table[table["kind"] == "conflict"].copy()
    decisions = decisions or {}
    q["decided"] = np.array([bool(decision_name(decisions.get(int(a)))) and bool(decision_name(decisions.get(int(b))))
                             for a, b in zip(q["a"], q["b"])], dtype=bool)
    if status == "unreviewed":
        q = q[~q["decided"]]
    elif status == "reviewed":
        q = q[q["decided"]]
    return q.reset_index(drop=True)[cols]


def conflict_decisions(a: int, b: int, label_a: str, label_b: str, choice: str) -> list[tuple[int, str, str | None]]:
    """The two decisions (index, decision, final_label) a conflict choice makes, stored together:
    "a"/"b" give both images that image's label (relabel the other), "keep" keeps both labels,
    "exclude" excludes both. Raises ``InputError`` for another choice."""
    from ..errors import InputError

    if choice == "a":
        return [(int(a), "keep", label_a), (int(b), "relabel", label_a)]
    if choice == "b":
        return [(int(a), "relabel", label_b), (int(b), "keep", label_b)]
    if choice == "keep":
        return [(int(a), "keep", label_a), (int(b), "keep", label_b)]
    if choice == "exclude":
        return [(int(a), "exclude", None), (int(b), "exclude", None)]
    raise InputError(f"conflict choice {choice!r} is not one of {', '.join(CONFLICT_CHOICES)}")
