"""The learning queue on bench/protocol.py's runs: one table per plan (not part of the tests).

    OMP_NUM_THREADS=1 .venv/bin/python bench/review_protocol.py --work /tmp/turn-protocol --plan dev
    OMP_NUM_THREADS=1 .venv/bin/python bench/review_protocol.py --work /tmp/turn-protocol --plan report \\
        [--variants static,learning,hedge:rebuild,stack,naive] [--budget 50,100,250,500]

For each finished run of the plan (``bench/protocol.py --stage train``; truth: the run's
``true_label`` column, read only here) an oracle walks each variant's order as in
``bench/review_sim.py`` and the table gives, per setting, the errors fixed after each budget
and D90 (mean ± sd over the runs), D90's change against the static order (mean, then per run)
and the worst budget gap: the most negative (errors fixed − static's) ÷ budget over runs and
budgets (issue 11 allows −1 %).

A variant is ``static``, ``naive`` (the issue's naive re-ranking), ``knn``, ``cleanlab``, or a
learner of ``turn_core.rerank.LEARNERS`` run bare, or prefixed ``hedge:`` to run it hedged
(``learning`` = the default learner and hedge, as the Review page runs it) (``rerank.hedge_weight``). The last line is one
JSON object: {setting: {variant: {"d90": [...], "<budget>": [...]}}}.
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
from review_sim import fixed_curve, learning_walk, naive_walk, run_truth, summary

from turn_core import rerank
from turn_core.baselines import cleanlab_cv_lr, knn_vote
from turn_core.rundir import Run


def walk(variant: str, run: Run, base, truth, given, static, stop: int) -> np.ndarray:
    """The order an oracle walks for one variant on one run."""
    if variant == "static":
        return rerank.static_order(static)
    feats = np.asarray(run.features("pre"), dtype=np.float32)
    k = run.settings.get("knn_k", 10)
    if variant == "naive":
        return naive_walk(feats, given, static, truth, len(run.classes), stop_after=stop, k=k)
    if variant == "knn":
        return rerank.static_order(knn_vote(feats, given, len(run.classes), k=k)["suspicion"])
    if variant == "cleanlab":
        return rerank.static_order(cleanlab_cv_lr(feats, given, seed=0)["suspicion"])
    if variant == "learning":   # the Review page's learning queue as it runs by default
        learner, hedge = rerank.LEARNER, rerank.HEDGE
    else:
        hedge = variant.startswith("hedge:")
        learner = variant.split(":", 1)[1] if hedge else variant
    return learning_walk(base, truth, stop_after=stop, learner=learner, hedge=hedge)


def one_run(d: Path, variants: list[str], budgets: list[int]) -> dict:
    """variant -> summary (errors fixed per budget, d90) on the run in ``d``."""
    run = Run(d)
    given, truth, static = run_truth(run)
    is_error = truth != given
    d90_static = summary(fixed_curve(rerank.static_order(static), is_error), int(is_error.sum()), budgets)["d90"]
    stop = max(max(budgets), d90_static or len(given))
    base = rerank.base_from_run(run)
    return {v: summary(fixed_curve(walk(v, run, base, truth, given, static, stop), is_error),
                       int(is_error.sum()), budgets) for v in variants}


def ms(v) -> str:
    v = np.asarray(v, dtype=float)
    return f"{v.mean():.1f}" if len(v) < 2 else f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def table(res: dict, budgets: list[int]) -> list[str]:
    """Markdown rows: setting, variant, budgets, D90, D90 vs static, worst budget gap."""
    head = "| setting | order | " + " | ".join(map(str, budgets)) + " | D90 | D90 vs static | worst budget gap vs static |"
    lines = [head, "|---" * (len(budgets) + 5) + "|"]
    for setting, by in res.items():
        st = by["static"]
        for v, r in by.items():
            rel = [(a - b) / b * 100 for a, b in zip(r["d90"], st["d90"])]
            gap = min((a - b) / bud * 100 for bud in budgets for a, b in zip(r[str(bud)], st[str(bud)]))
            lines.append(f"| {setting} ({len(r['d90'])} runs) | {v} | " + " | ".join(ms(r[str(b)]) for b in budgets)
                         + f" | {ms(r['d90'])} | {np.mean(rel):+.1f} % ({', '.join(f'{x:+.0f}' for x in rel)})"
                         + f" | {gap:+.1f} % |")
    return lines


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    plan_arguments(ap)
    ap.add_argument("--variants", default="static,learning,rebuild,hedge:rebuild,stack,naive,knn,cleanlab")
    ap.add_argument("--budget", default="50,100,250,500")
    a = ap.parse_args(argv)
    budgets = [int(b) for b in a.budget.split(",") if b]
    variants = a.variants.split(",")
    if "static" not in variants:
        variants = ["static", *variants]
    res: dict = {}
    for setting, d in finished_runs(a.work, a.plan):
        one = one_run(d, variants, budgets)
        print(d.name, json.dumps({v: r["d90"] for v, r in one.items()}), flush=True)
        for v, r in one.items():
            slot = res.setdefault(setting, {}).setdefault(v, {})
            for key, val in r.items():
                slot.setdefault(key, []).append(val)
    print("\n".join(table(res, budgets)))
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
