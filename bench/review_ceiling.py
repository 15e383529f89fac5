"""How far could any learning queue cut D90 on a run? A ceiling that reads the truth (not part of the tests).

    OMP_NUM_THREADS=1 .venv/bin/python bench/review_ceiling.py --work /tmp/p4k --plan dev

The learning queue (``turn_core.rerank``) learns from the reviewer's answers: the true labels
of the images reviewed so far, never more than the budget. This script asks what a learner
could do if it knew far more: **the true label of every other image**. For each finished run of
the plan (``bench/protocol.py``) it fits, per feature view, a 5-fold cross-fitted logistic
regression on the unit-normalised saved features against the *true* labels (each image scored
by a fit that never saw it), and a neighbour vote over the run's saved neighbour graph with
every neighbour's true label. Each ranks by 1 − p(given label). Each is walked alone and
blended (by rank, half and half) with the run's suspicion, as an oracle walks the static order
(``bench/review_sim.py``). Reported: the D90 of each order, its change against static, and
the best of them all (``ceiling``: the maximum over orders chosen after seeing the truth, so it
flatters the ceiling).

No learner that sees only the reviewer's answers (at most the ~1,500 images of a D90 walk,
instead of every image) and the run's saved arrays can be expected to beat this ceiling: if it
is short of the issue's −10 %, the limit is what the features say about the remaining errors,
not the learner. The last line is one JSON object {run: {order: d90}}.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from protocol import finished_runs, plan_arguments
from review_sim import fixed_curve, run_truth, summary

from turn_core import rerank
from turn_core.rundir import Run
from turn_core.scores import normalise_rows


def truth_probe(features: np.ndarray, truth: np.ndarray, n_classes: int, folds: int = 5, seed: int = 0) -> np.ndarray:
    """(N, K) class probabilities of a logistic regression fitted on the true labels, cross-fitted
    over ``folds`` so no image is scored by a fit that saw it. features (N, D); truth (N,) int."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    x = normalise_rows(np.asarray(features, dtype=np.float32))
    out = np.full((len(truth), n_classes), 1.0 / n_classes)
    for fit, score in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, truth):
        m = LogisticRegression(C=1.0, max_iter=300).fit(x[fit], truth[fit])
        out[np.ix_(score, m.classes_)] = m.predict_proba(x[score])
    return out


def orders(run: Run, given: np.ndarray, truth: np.ndarray, static: np.ndarray) -> dict[str, np.ndarray]:
    """order name → suspicion (N,) to walk: static, and per view the truth probe and the truth
    vote, alone and blended with static by rank."""
    k, n = len(run.classes), len(given)
    ar = np.arange(n)
    out = {"static": static}
    everyone = np.ones(n, dtype=bool)
    for view in ("pre", "post"):
        feats = run.features(view)
        if feats is None:
            continue
        out[f"truth-probe:{view}"] = 1 - truth_probe(feats, truth, k)[ar, given]
        graph = run.neighbours(view)
        if graph is not None:
            nb = np.asarray(graph[0], dtype=np.int64)
            out[f"truth-vote:{view}"] = 1 - rerank.trusted_vote(nb, truth, everyone, k)[ar, given]
    singles = [o for o in out if o != "static"]
    for name in singles:
        out[f"{name}+static"] = rerank.rank01(out[name]) + rerank.rank01(static)
    out["truth-stack"] = truth_stack([out[o] for o in ["static", *singles]] + run_signals(run, given), truth != given)
    return out


def run_signals(run: Run, given: np.ndarray) -> list[np.ndarray]:
    """The run's own per-image signals the stacked learner weighs (``rerank.stack_signals``):
    the out-of-fold probe's and the final model's disagreement with the given label."""
    ar = np.arange(len(given))
    out = [1 - np.mean(np.load(run.dir / "cv_probs.npy"), axis=0)[ar, given]]
    if (run.dir / "probs.npy").exists():
        out.append(1 - np.load(run.dir / "probs.npy")[ar, given])
    return out


def truth_stack(signals: list[np.ndarray], is_error: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """(N,) cross-fitted probability of an error from a logistic regression over the rank-scaled
    ``signals`` (each (N,)) fitted on the true error indicator (N,) bool: the best weighing of
    every signal above, learned from every other image's truth."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    x = np.column_stack([rerank.rank01(v) for v in signals])
    out = np.zeros(len(is_error))
    for fit, score in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, is_error):
        out[score] = LogisticRegression(C=1.0, max_iter=500).fit(x[fit], is_error[fit]).predict_proba(x[score])[:, 1]
    return out


def one_run(d: Path) -> dict[str, int]:
    """order → D90 on the run in ``d`` (the truth: its ``true_label`` column, read only here)."""
    run = Run(d)
    given, truth, suspicion = run_truth(run)
    is_error = truth != given
    res = {name: summary(fixed_curve(rerank.static_order(v), is_error), int(is_error.sum()), [])["d90"]
           for name, v in orders(run, given, truth, suspicion).items()}
    res["ceiling"] = min(res.values())
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    plan_arguments(ap)
    a = ap.parse_args(argv)
    res: dict = {}
    for _, d in finished_runs(a.work, a.plan):
        res[d.name] = one_run(d)
        print(d.name, json.dumps(res[d.name]), flush=True)
    by: dict = {}
    for name, r in res.items():
        by.setdefault(name.split("-")[0], []).append(r)
    names = sorted({o for r in res.values() for o in r if o != "static"})
    print("| setting | runs | static D90 | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 3) + "|")
    for setting, rs in by.items():
        st = np.array([r["static"] for r in rs], dtype=float)
        cells = []
        for o in names:
            v = np.array([r.get(o, np.nan) for r in rs], dtype=float)
            cells.append(f"{np.nanmean((v - st) / st) * 100:+.1f} %")
        print(f"| {setting} | {len(rs)} | {st.mean():.0f} | " + " | ".join(cells) + " |")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
