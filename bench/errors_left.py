"""How close is the Review page's "errors left" estimate to the truth? (not part of the tests)

    OMP_NUM_THREADS=1 .venv/bin/python bench/errors_left.py --work /tmp/p4k --plan dev [--walks static,learning]

For each finished run of the plan (``bench/protocol.py``; truth: the run's ``true_label``
column, read only here) an oracle walks the static order and the learning queue
(``review_sim.learning_walk``, as the Review page re-ranks). After each budget it compares
``rerank.errors_left`` over the unreviewed images (the simulator's queue is the whole data set)
with the errors really left there, for each variant:

* ``p<power>``: ``errors_left`` with that ``power`` and no count (``p1`` = the estimate of
  sessions 3-10);
* ``p<power>+count``: the same, capped by confident learning's count on the run's ensemble
  (``rerank.error_count``) minus the errors found;
* ``count``: that count minus the errors found alone.

The error of an estimate is |estimate − truth| / max(truth, 20) (20: a few errors left either
way is not worth telling apart); the table gives its mean per setting and budget, the mean over
budgets, and the mean signed ratio estimate / truth (above 1: too many). The last line is one
JSON object {setting: {variant: mean error}}.
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
from review_sim import learning_walk, run_truth

from turn_core import rerank
from turn_core.rundir import Run

BUDGETS = (100, 250, 500, 1000, 1500, 2000)
POWERS = (1, 2, 3, 4, 6)
FLOOR = 20


def estimates(suspicion: np.ndarray, reviewed: np.ndarray, unreviewed: np.ndarray, changed: np.ndarray,
              count: float) -> dict[str, float]:
    """variant → estimated errors among ``unreviewed`` after the ``reviewed`` decisions."""
    out = {"count": max(count - float(changed.sum()), 0.0)}
    for p in POWERS:
        out[f"p{p}"] = rerank.errors_left(suspicion, unreviewed, suspicion[reviewed], changed, power=p)
        out[f"p{p}+count"] = rerank.errors_left(suspicion, unreviewed, suspicion[reviewed], changed,
                                                count=count, power=p)
    return out


def one_run(d: Path, walks: list[str]) -> dict:
    """{walk: {budget: (truth, {variant: estimate})}} on the run in ``d``."""
    run = Run(d)
    given, truth, suspicion = run_truth(run)
    is_error = truth != given
    count = rerank.error_count(given, np.load(d / "ensemble_probs.npy"))
    out = {}
    for walk in walks:
        if walk == "static":
            order = rerank.static_order(suspicion)
        else:
            order = learning_walk(rerank.base_from_run(run), truth, stop_after=max(BUDGETS))
        by = {}
        for b in BUDGETS:
            reviewed, unreviewed = order[:b], order[b:]
            by[b] = (int(is_error[unreviewed].sum()),
                     estimates(suspicion, reviewed, unreviewed, is_error[reviewed], count))
        out[walk] = by
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    plan_arguments(ap)
    ap.add_argument("--walks", default="static,learning")
    a = ap.parse_args(argv)
    walks = a.walks.split(",")
    err: dict = {}     # setting → variant → budget → [relative errors]
    ratio: dict = {}   # setting → variant → [estimate / truth]
    for setting, d in finished_runs(a.work, a.plan):
        res = one_run(d, walks)
        for by in res.values():
            for b, (true, est) in by.items():
                for v, e in est.items():
                    err.setdefault(setting, {}).setdefault(v, {}).setdefault(b, []).append(abs(e - true) / max(true, FLOOR))
                    ratio.setdefault(setting, {}).setdefault(v, []).append(e / max(true, FLOOR))
        print(d.name, json.dumps({w: {b: [t, round(e["p1"]), round(e["p3+count"]), round(e["count"])]
                                      for b, (t, e) in by.items()} for w, by in res.items()}), flush=True)
    print(f"\n| setting | estimate | {' | '.join(map(str, BUDGETS))} | mean error | mean estimate ÷ truth |")
    print("|---" * (len(BUDGETS) + 4) + "|")
    summary: dict = {}
    for setting, by in err.items():
        for v, per in by.items():
            m = float(np.mean([np.mean(x) for x in per.values()]))
            summary.setdefault(setting, {})[v] = round(m, 3)
            print(f"| {setting} | {v} | " + " | ".join(f"{np.mean(per[b]):.2f}" for b in BUDGETS)
                  + f" | {m:.2f} | {np.mean(ratio[setting][v]):.2f} |")
    variants = list(next(iter(summary.values()))) if summary else []
    print("\nover settings: " + ", ".join(
        f"{v} mean {np.mean([summary[s][v] for s in summary]):.3f} worst {max(summary[s][v] for s in summary):.3f}"
        for v in variants))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
