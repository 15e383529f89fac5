"""A simulated reviewer on a finished run (not part of the test suite).

    .venv/bin/python bench/review_sim.py --run RUN_DIR --truth TRUTH_CSV [--budget 100,250,500,1000]

An oracle answers every decision with the true label (TRUTH_CSV: columns path,clean_label, read
only here). Each order is walked image by image over the whole training set (the suspects first,
then the rest by suspicion, so recall can reach 100 %), and the simulator reports the true errors
fixed after each budget and D90, the decisions needed to fix 90 % of them:

* static: the run's suspicion;
* learning: the Review page's learning queue (``turn_core.rerank``: ``base_from_run``,
  ``learned_order`` every ``REFRESH_EVERY`` decisions), the functions the page calls;
* cleanlab: ``find_label_issues``'s ranking (label quality) on 5-fold CV logistic regression over
  the run's pretrained features;
* knn: the k-NN vote ranking on the same features;
* naive: the naive re-ranking issue 11 names as the bar to beat: every 100 decisions a logistic
  probe fitted on the reviewed images (their true labels) and a k-NN vote over the reviewed
  images only, both on the pretrained features, are blended (mean) with the run's suspicion.

The last line is one JSON object: {"static": {"100": n, ..., "d90": d}, "learning": ..., ...}.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from turn_core import rerank
from turn_core.baselines import cleanlab_cv_lr, knn_vote
from turn_core.errors import InputError
from turn_core.rundir import Run


def read_truth(path: Path, samples, classes: list[str]) -> np.ndarray:
    """(N,) int true class of each sample row, from TRUTH_CSV (path,clean_label) matched on path."""
    with open(path, newline="") as f:
        rows = {r["path"]: r["clean_label"] for r in csv.DictReader(f)}
    idx = {c: i for i, c in enumerate(classes)}
    missing = [p for p in samples["path"] if p not in rows]
    if missing:
        raise InputError(f"{path}: no clean_label for {len(missing)} run paths, e.g. {missing[0]!r}")
    return np.array([idx[rows[p]] for p in samples["path"]], dtype=np.int64)


def run_truth(run: Run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(given (N,) int, truth (N,) int, suspicion (N,) float) of a run that kept the truth it
    was given (its ``true_label`` column, as bench/protocol.py's runs do; read only in benchmarks)."""
    s = run.samples(columns=["given_label", "true_label", "suspicion"])
    idx = {c: i for i, c in enumerate(run.classes)}
    return (s["given_label"].map(idx).to_numpy(), s["true_label"].map(idx).to_numpy(),
            s["suspicion"].to_numpy(float))


def fixed_curve(order: np.ndarray, is_error: np.ndarray) -> np.ndarray:
    """(len(order),) errors fixed after each decision walking ``order``."""
    return np.cumsum(is_error[np.asarray(order)])


def summary(curve: np.ndarray, n_errors: int, budgets: list[int]) -> dict:
    """{"<budget>": errors fixed after that many decisions, ..., "d90": decisions to fix 90 %}."""
    out = {str(b): int(curve[min(b, len(curve)) - 1]) for b in budgets}
    need = math.ceil(0.9 * n_errors)
    hit = np.flatnonzero(curve >= need)
    out["d90"] = int(hit[0] + 1) if len(hit) else None
    return out


def learning_walk(base: rerank.RerankBase, truth: np.ndarray, stop_after: int,
                  every: int = rerank.REFRESH_EVERY, learner: str = rerank.LEARNER,
                  hedge: bool = rerank.HEDGE) -> np.ndarray:
    """The images in the order the learning queue shows them to an oracle reviewer: ``every``
    decisions from the current order, then a re-ranking with what they revealed, and so on
    until ``stop_after`` decisions (the rest in the last order)."""
    order = rerank.static_order(base.static)
    walked: list[int] = []
    while len(walked) < min(stop_after, len(truth)):
        take = order[:every]
        walked.extend(int(i) for i in take)
        reviewed = np.array(walked, dtype=np.int64)
        order = rerank.learned_order(base, reviewed, truth[reviewed], order=order[every:], learner=learner,
                                     hedge=hedge)
    return np.concatenate([np.array(walked, dtype=np.int64), order])[:len(truth)]


def reviewed_knn_vote(feats: np.ndarray, reviewed: np.ndarray, labels: np.ndarray, n_classes: int,
                      k: int = 10) -> np.ndarray:
    """(N, K) vote of each image's ``k`` most similar reviewed images (cosine) with their true
    ``labels`` (M,); a reviewed image does not vote for itself."""
    f = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    sim = f @ f[reviewed].T
    sim[reviewed, np.arange(len(reviewed))] = -np.inf
    k = max(1, min(k, len(reviewed) - 1))
    nb = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    out = np.zeros((len(f), n_classes))
    np.add.at(out, (np.repeat(np.arange(len(f)), k), labels[nb].ravel()), 1.0 / k)
    return out


def naive_suspicion(feats: np.ndarray, given: np.ndarray, static: np.ndarray, reviewed: np.ndarray,
                    labels: np.ndarray, n_classes: int, k: int = 10) -> np.ndarray:
    """(N,) the naive blend: mean of the run's suspicion, 1 − p(given) of a logistic probe fitted
    on the reviewed images' true ``labels``, and 1 − the reviewed images' k-NN vote for the given
    label."""
    from sklearn.linear_model import LogisticRegression

    probe = np.full((len(given), n_classes), 1e-3)
    if len(np.unique(labels)) > 1:
        m = LogisticRegression(max_iter=500).fit(feats[reviewed], labels)
        probe[:, m.classes_] = m.predict_proba(feats)
    probe /= probe.sum(axis=1, keepdims=True)
    vote = reviewed_knn_vote(feats, reviewed, labels, n_classes, k)
    ar = np.arange(len(given))
    return (static + (1 - probe[ar, given]) + (1 - vote[ar, given])) / 3


def naive_walk(feats: np.ndarray, given: np.ndarray, static: np.ndarray, truth: np.ndarray, n_classes: int,
               stop_after: int, every: int = 100, k: int = 10) -> np.ndarray:
    """The order the naive re-ranking shows an oracle: ``every`` decisions, then
    ``naive_suspicion`` over the reviewed images re-ranks the rest, and so on."""
    order = rerank.static_order(static)
    walked: list[int] = []
    while len(walked) < min(stop_after, len(truth)) and len(order):
        walked.extend(int(i) for i in order[:every])
        rest = order[every:]
        reviewed = np.array(walked, dtype=np.int64)
        keep = truth[reviewed] >= 0
        s = naive_suspicion(feats, given, static, reviewed[keep], truth[reviewed][keep], n_classes, k)
        order = rest[np.argsort(-s[rest], kind="stable")]
    return np.concatenate([np.array(walked, dtype=np.int64), order])[:len(truth)]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--truth", type=Path, required=True)
    ap.add_argument("--budget", default="100,250,500,1000")
    ap.add_argument("--every", type=int, default=rerank.REFRESH_EVERY, help="decisions between re-rankings")
    ap.add_argument("--orders", default="static,learning,cleanlab,knn,naive")
    ap.add_argument("--learner", default=rerank.LEARNER,
                    help=f"one of {', '.join(rerank.LEARNERS)}, or several joined by + (with --hedge 1)")
    ap.add_argument("--hedge", type=int, choices=(0, 1), default=int(rerank.HEDGE),
                    help="1: blend the learned and static orders by how each ranked the latest decisions")
    a = ap.parse_args(argv)
    budgets = [int(b) for b in a.budget.split(",") if b]
    run = Run(a.run)
    s = run.samples()
    if s is None or len(s) == 0:
        raise InputError(f"{a.run / 'samples.csv'}: missing or empty (has the run finished?)")
    classes = run.classes
    given = s["given_label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    truth = read_truth(a.truth, s, classes)
    is_error = truth != given
    n_err = int(is_error.sum())
    print(f"run {a.run}: {len(s)} images, {n_err} true errors ({n_err / len(s):.1%})")
    feats = np.asarray(run.features("pre"), dtype=np.float32)
    orders, times = {}, {}
    wanted = a.orders.split(",")
    t0 = time.time()
    if "static" in wanted:
        orders["static"] = rerank.static_order(s["suspicion"].to_numpy(float))
        times["static"] = time.time() - t0
    static_curve = fixed_curve(rerank.static_order(s["suspicion"].to_numpy(float)), is_error)
    d90_static = summary(static_curve, n_err, budgets)["d90"] or len(s)
    if "learning" in wanted:
        t0 = time.time()
        base = rerank.base_from_run(run)
        orders["learning"] = learning_walk(base, truth, stop_after=max(max(budgets), d90_static),
                                           every=a.every, learner=a.learner, hedge=bool(a.hedge))
        times["learning"] = time.time() - t0
    if "cleanlab" in wanted:
        t0 = time.time()
        orders["cleanlab"] = rerank.static_order(cleanlab_cv_lr(feats, given, seed=0)["suspicion"])
        times["cleanlab"] = time.time() - t0
    if "knn" in wanted:
        t0 = time.time()
        orders["knn"] = rerank.static_order(knn_vote(feats, given, len(classes), k=run.settings.get("knn_k", 10))
                                            ["suspicion"])
        times["knn"] = time.time() - t0
    if "naive" in wanted:
        t0 = time.time()
        orders["naive"] = naive_walk(feats, given, s["suspicion"].to_numpy(float), truth, len(classes),
                                     stop_after=max(max(budgets), d90_static), k=run.settings.get("knn_k", 10))
        times["naive"] = time.time() - t0
    result = {name: summary(fixed_curve(o, is_error), n_err, budgets) for name, o in orders.items()}
    print(f"{'order':10s}" + "".join(f"{b:>8d}" for b in budgets) + f"{'D90':>8s}{'sec':>8s}")
    for name, r in result.items():
        print(f"{name:10s}" + "".join(f"{r[str(b)]:>8d}" for b in budgets) + f"{r['d90'] or -1:>8d}"
              f"{times[name]:>8.1f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
