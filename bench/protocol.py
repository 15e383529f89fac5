"""The honest protocol for choosing TURN Audit's flag rule (not part of the test suite).

    OMP_NUM_THREADS=1 .venv/bin/python bench/protocol.py --stage train --plan dev --threads 1
    OMP_NUM_THREADS=1 .venv/bin/python bench/protocol.py --stage train --plan report --threads 1 [--reverse]
    .venv/bin/python bench/protocol.py --stage dev                        # choose here
    .venv/bin/python bench/protocol.py --stage report [--default RULE]    # then report
    .venv/bin/python bench/protocol.py --stage fresh [--default RULE]     # and on untouched images
    .venv/bin/python bench/protocol.py --stage first-queue                # suspects while it trains

(``--work`` defaults to /tmp/turn-protocol; two ``--plan report`` processes, one with
``--reverse``, share the runs.) Default sizes: 1,000 train / 250 test images per set at 32 px
(33-40 s a run on a free core); the issue's scale is ``--n-train 4000 --n-test 1000 --image-size
64`` (78-129 s). Plans: 24 dev runs, 24 report, 12 fresh.

Rules and settings are chosen on development images and reported on images that chose nothing:

* development: ``cifar10n.py --seed 0`` and ``--seed 3`` (data seeds), training seeds 0, 1 and 2
  (until session 8: data seed 0, training seed 0 only);
* report: ``cifar10n.py --seed 1`` and ``--seed 2``, each with training seeds 0, 1 and 2, as
  mean ± sd over the six runs of a setting;
* fresh: ``cifar10n.py --seed 4``, training seeds 0, 1 and 2. Session 8 re-chose the flag rule
  on the dev runs after the 4,000-image report had shown the old one failing there, so the
  report images had been looked at once; these images had not.

``cifar10n.py --seed S`` draws a random subset, so two seeds' subsets share images (2,000 of
50,000 each: about 80 in common). The report manifests therefore drop every image an earlier
data seed already drew (``disjoint_manifest``), so the four image sets are disjoint.
The four settings are those of ``bench/run_bench.py``. TURN is trained once per (setting,
image set, training seed); every flag rule and both peers are scored from that run's saved
arrays (``scores.signals_from_run``), so adding a rule never retrains.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run_bench import SETTINGS, materialise

from turn_core.config import RunConfig
from turn_core.metrics import detection_metrics
from turn_core.rundir import Run

DEV_DATA_SEEDS = (0, 3)    # seed 3 added in session 8, after the 4,000-image report (BENCHMARKS §1)
DEV_TRAIN_SEEDS = (0, 1, 2)
REPORT_DATA_SEEDS = (1, 2)
REPORT_TRAIN_SEEDS = (0, 1, 2)
DEFAULT_SCORE = RunConfig().score  # every rule ranks by it (and top-k rules by "ensemble" as well)
FRESH_DATA_SEEDS = (4,)    # images no choice and no earlier report saw (session 8); report training seeds


def image_ids(folder: Path, split: str) -> set[str]:
    """The image paths (``images/<split>/<index>.png``, the same name for the same CIFAR image
    in every subset) a materialised subset holds."""
    with open(folder / f"{split}.csv", newline="") as f:
        return {r["path"] for r in csv.DictReader(f)}


def disjoint_manifest(folder: Path, exclude: set[str], name: str = "protocol.csv") -> tuple[Path, int]:
    """One CSV (path,label,split,clean_label) of the subset's train and test rows minus the
    images in ``exclude``; returns (its path, how many rows were dropped)."""
    rows, dropped = [], 0
    for split in ("train", "test"):
        with open(folder / f"{split}.csv", newline="") as f:
            for r in csv.DictReader(f):
                if r["path"] in exclude:
                    dropped += 1
                    continue
                rows.append([r["path"], r["label"], split, r.get("clean_label") or r["label"]])
    out = folder / name
    # through a temp file and a rename: a second bench process rewrites the same manifest (same
    # rows) while the first one's run may be reading it
    tmp = folder / f".{name}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "label", "split", "clean_label"])
        w.writerows(rows)
    os.replace(tmp, out)
    return out, dropped


def manifests(work: Path, args) -> dict[tuple[str, int], Path]:
    """(label set, data seed) -> a manifest disjoint from every lower data seed's images."""
    out, seen, log = {}, {}, {}
    # ascending: a later dev seed (3) drops the report images too, and adding it leaves the
    # report manifests as they were
    for data_seed in sorted({*DEV_DATA_SEEDS, *REPORT_DATA_SEEDS, *FRESH_DATA_SEEDS}):
        for label_set in sorted({v[0] for v in SETTINGS.values()}):
            folder = materialise(work, label_set, args.n_train, args.n_test, data_seed)
            ids = image_ids(folder, "train") | image_ids(folder, "test")
            # the same data seed draws the same images whatever the label set
            earlier = set().union(*[v for d, v in seen.items() if d < data_seed])
            out[(label_set, data_seed)], dropped = disjoint_manifest(folder, earlier)
            log[f"{label_set} data seed {data_seed}"] = {"csv": str(out[(label_set, data_seed)]),
                                                         "dropped_overlap": dropped}
            seen[data_seed] = ids
    (work / "manifests.json").write_text(json.dumps(log, indent=2))
    return out


def run_dir(work: Path, setting: str, data_seed: int, train_seed: int) -> Path:
    return work / "runs" / f"{setting}-d{data_seed}-t{train_seed}"


def train_all(work: Path, args, plan: list[tuple[str, int, int]]) -> None:
    """Train TURN once per (setting, data seed, training seed) whose run folder does not exist
    yet (delete the folder of a run that was interrupted)."""
    from turn_core.pipeline import run

    mans = manifests(work, args)
    for setting, data_seed, train_seed in plan:
        out = run_dir(work, setting, data_seed, train_seed)
        if out.exists():  # finished, or claimed by another process of the same plan
            continue
        label_set, noise = SETTINGS[setting]
        cfg = RunConfig(data=str(mans[(label_set, data_seed)]), out=str(out), method="turn",
                        image_size=args.image_size, seed=train_seed, batch_size=128, num_threads=args.threads)
        if noise:
            cfg.inject_noise, cfg.inject_noise_rate = noise
        t0 = time.time()
        run(cfg)
        print(f"trained {out.name} in {time.time() - t0:.0f} s", flush=True)


def evaluate(r: Run, peers_cache: Path) -> dict:
    """Every flag rule ranked by the default score (``RunConfig().score``), and, when that is
    not "ensemble", every top-k rule ranked by "ensemble" too (as ``"<rule> @ensemble"``; both
    are selectable); every score's AUROC, the peers, and, as diagnostics, each truth-free error
    count and the F1 of flagging exactly the true number of errors (what a perfect count would
    give), under the default score."""
    from run_bench import peers

    from turn_core.scores import ERROR_COUNTS, FLAG_RULES, SCORES, score_and_flag, signals_from_run, top_k

    s = r.samples()
    idx = {c: i for i, c in enumerate(r.classes)}
    truth = s["true_label"].map(idx).to_numpy()
    sig = signals_from_run(r)
    noisy = sig.labels != truth
    out = {"rules": {}, "auroc": {}, "counts": {}, "n_noisy": int(noisy.sum()), "n": int(noisy.size),
           "test_accuracy": r.metrics.get("test_accuracy"), "test_accuracy_lp": r.metrics.get("test_accuracy_lp")}
    for rule in FLAG_RULES:
        o = score_and_flag(sig, DEFAULT_SCORE, rule)
        out["rules"][rule] = detection_metrics(noisy, o["flagged"])
    if DEFAULT_SCORE != "ensemble":
        for rule in (r for r in FLAG_RULES if r.startswith("top-k-")):
            out["rules"][f"{rule} @ensemble"] = detection_metrics(noisy, score_and_flag(sig, "ensemble", rule)["flagged"])
    for score in SCORES:
        out["auroc"][f"TURN {score} score"] = detection_metrics(noisy, noisy, score_and_flag(sig, score)["suspicion"])["auroc"]
    sus = score_and_flag(sig, DEFAULT_SCORE)["suspicion"]
    out["counts"] = {name: fn(sig, sus) for name, fn in ERROR_COUNTS.items()}

    out["top-k at the true count (oracle)"] = detection_metrics(noisy, top_k(sus, noisy.sum()))["f1"]
    if peers_cache.exists():
        out["peers"] = json.loads(peers_cache.read_text())
    else:
        out["peers"] = {k: {m: v[m] for m in ("precision", "recall", "f1", "auroc", "n_flagged")}
                        for k, v in peers(r).items()}
        peers_cache.write_text(json.dumps(out["peers"]))
    return out


def evaluate_plan(work: Path, plan: list[tuple[str, int, int]]) -> dict:
    """setting -> list of per-run evaluations (runs not trained yet are skipped)."""
    res: dict[str, list] = {}
    for setting, data_seed, train_seed in plan:
        d = run_dir(work, setting, data_seed, train_seed)
        if not (d / "metrics.json").exists():
            continue
        e = evaluate(Run(d), d.parent / f"{d.name}.peers.json")
        e["run"] = d.name
        res.setdefault(setting, []).append(e)
    return res


def ms(values, digits: int = 3) -> str:
    """'mean ± sd' (sd over runs, ddof 1; just the mean for one run)."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    return f"{v.mean():.{digits}f}" if len(v) < 2 else f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def table(setting: str, runs: list[dict]) -> list[str]:
    """One markdown table of a setting: every flag rule, then the peers, mean ± sd over runs."""
    noise = np.mean([e["n_noisy"] / e["n"] for e in runs])
    lines = [f"#### {setting} (noise rate {noise:.3f}, {len(runs)} runs, {runs[0]['n']} images each)",
             "| rule or method | precision | recall | F1 | flagged / wrong | AUROC |", "|---|---|---|---|---|---|"]
    auc_turn = ms(e["auroc"][f"TURN {DEFAULT_SCORE} score"] for e in runs)
    for rule in runs[0]["rules"]:
        col = [e["rules"][rule] for e in runs]
        ratio = ms(c["n_flagged"] / max(e["n_noisy"], 1) for c, e in zip(col, runs))
        auc = (ms(e["auroc"]["TURN paper score"] for e in runs) if rule == "paper" else
               ms(e["auroc"]["TURN ensemble score"] for e in runs) if rule.endswith("@ensemble") else auc_turn)
        lines.append(f"| TURN `{rule}` | {ms(c['precision'] for c in col)} | {ms(c['recall'] for c in col)} "
                     f"| {ms(c['f1'] for c in col)} | {ratio} | {auc} |")
    for peer in runs[0]["peers"]:
        col = [e["peers"][peer] for e in runs]
        ratio = ms(c["n_flagged"] / max(e["n_noisy"], 1) for c, e in zip(col, runs))
        lines.append(f"| {peer} | {ms(c['precision'] for c in col)} | {ms(c['recall'] for c in col)} "
                     f"| {ms(c['f1'] for c in col)} | {ratio} | {ms(c['auroc'] for c in col)} |")
    counts = "; ".join(f"{k} {ms(e['counts'][k] / max(e['n_noisy'], 1) for e in runs)}" for k in runs[0]["counts"])
    lines.append(f"\nEstimated / true number of wrong labels: {counts}. F1 of the top-k at the true count "
                 f"(oracle, not selectable): {ms(e['top-k at the true count (oracle)'] for e in runs)}. "
                 f"Test accuracy: TURN {ms(e['test_accuracy'] for e in runs)}, its LP "
                 f"{ms(e['test_accuracy_lp'] for e in runs)}.\n")
    return lines


def shortfalls(res: dict) -> dict[str, dict[str, float]]:
    """rule -> setting -> best rule's mean F1 minus this rule's (0 for the best rule there)."""
    mean_f1 = {st: {rule: float(np.mean([e["rules"][rule]["f1"] for e in runs])) for rule in runs[0]["rules"]}
               for st, runs in res.items()}
    rules = next(iter(mean_f1.values()))
    return {rule: {st: max(f.values()) - f[rule] for st, f in mean_f1.items()} for rule in rules}


def verdict(res: dict, default: str) -> list[str]:
    """The issue's test per setting: the default within 0.02 F1 of the best selectable rule, and
    above both peers (the best k-NN vote and cleanlab) on mean F1 and mean AUROC."""
    short = shortfalls(res)
    lines = [f"| setting | best rule | `{default}` − best rule F1 | − best peer F1 | − best peer AUROC | holds |",
             "|---|---|---|---|---|---|"]
    for st, runs in res.items():
        best = min(short, key=lambda r: short[r][st])
        f1 = np.mean([e["rules"][default]["f1"] for e in runs])
        auc = np.mean([e["auroc"][f"TURN {DEFAULT_SCORE} score"] for e in runs])
        peer_f1 = max(np.mean([e["peers"][p]["f1"] for e in runs]) for p in runs[0]["peers"])
        peer_auc = max(np.mean([e["peers"][p]["auroc"] for e in runs]) for p in runs[0]["peers"])
        ok = short[default][st] <= 0.02 and f1 > peer_f1 and auc > peer_auc
        lines.append(f"| {st} | `{best}` | {-short[default][st]:+.3f} | {f1 - peer_f1:+.3f} | {auc - peer_auc:+.3f} "
                     f"| {'yes' if ok else 'no'} |")
    return lines


def choose(res: dict) -> list[str]:
    """The rule whose worst shortfall from the best rule, over the settings, is smallest."""
    short = shortfalls(res)
    lines = ["| rule | " + " | ".join(res) + " | worst |", "|---" * (len(res) + 2) + "|"]
    for rule, by in sorted(short.items(), key=lambda kv: max(kv[1].values())):
        lines.append(f"| `{rule}` | " + " | ".join(f"{-v:+.3f}" for v in by.values()) + f" | {-max(by.values()):+.3f} |")
    lines.append(f"\nchosen (smallest worst shortfall): `{min(short, key=lambda r: max(short[r].values()))}`")
    return lines


def provisional_signals(r: Run):
    """A finished run's provisional Signals, rebuilt from its directory as the pipeline's
    provisional phase built them: the GMM on Phase I's losses, the pretrained view's saved
    out-of-fold probe and neighbours (Phase I's head probabilities are not saved; no flag rule
    or score reads them on a single view). On the 4,000-image runs the rebuilt F1 and AUROC
    equal those the run's provisional event recorded (session 8)."""
    from turn_core.scores import build_signals
    from turn_core.selection import clean_posterior

    s = r.samples()
    labels = s["given_label"].map({c: i for i, c in enumerate(r.classes)}).to_numpy()
    lp = s["loss_lp"].to_numpy()
    clean_prob, _ = clean_posterior(lp, labels, len(r.classes), per_class=r.settings.get("gmm_per_class", False),
                                    seed=r.settings.get("seed", 0))
    cv = [np.load(r.dir / "cv_probs.npy")[0]]
    return build_signals(labels, cv[0], clean_prob, lp[None], [np.asarray(r.features("pre"), dtype=np.float32)], cv,
                         knn_k=r.settings.get("knn_k", 10), tau=r.settings.get("tau", 0.5),
                         neighbours=[r.neighbours("pre")])


def first_queue(work: Path, plan: list[tuple[str, int, int]], rule: str) -> list[str]:
    """Per setting, over the plan's finished runs: the first reviewable queue's share of the run's
    wall time (the phases up to and including "provisional", from metrics.json's timings), its
    detection (the provisional table re-scored with flag rule ``rule``, so runs trained under an
    older default count the same) beside the final table's under ``rule`` and the peers' (the
    cache ``evaluate`` wrote)."""
    from turn_core.scores import score_and_flag, signals_from_run

    by: dict[str, list[dict]] = {}
    for setting, d, t in plan:
        out = run_dir(work, setting, d, t)
        peers_cache = out.with_name(out.name + ".peers.json")
        if not (out / "metrics.json").exists() or not peers_cache.exists():
            continue
        metrics = json.loads((out / "metrics.json").read_text())
        times = list(metrics["timings"].items())
        if "provisional" not in dict(times):  # a run written before the provisional table
            continue
        r = Run(out)
        tab = r.samples()
        idx = {c: i for i, c in enumerate(r.classes)}
        noisy = tab["given_label"].map(idx).to_numpy() != tab["true_label"].map(idx).to_numpy()
        score = DEFAULT_SCORE  # as today's pipeline would score it, whatever the run was trained under
        first, final = (score_and_flag(sig, score, rule) for sig in (provisional_signals(r), signals_from_run(r)))
        upto = [name for name, _ in times].index("provisional") + 1
        peers = json.loads(peers_cache.read_text())
        by.setdefault(setting, []).append({
            "share": sum(s for _, s in times[:upto]) / sum(s for _, s in times),
            "wall": sum(s for _, s in times),
            "first": detection_metrics(noisy, first["flagged"], first["suspicion"]),
            "final": detection_metrics(noisy, final["flagged"], final["suspicion"]),
            "peer_f1": max(v["f1"] for v in peers.values()), "peer_auroc": max(v["auroc"] for v in peers.values())})
    head = ("| setting | runs | first queue, share of wall | full run wall (s) | first queue F1 | AUROC "
            "| final F1 | AUROC | best peer F1 | AUROC | first queue beats peers (F1, AUROC) |")
    lines = [f"flag rule `{rule}`", "", head, "|---" * 11 + "|"]
    for setting, rs in by.items():
        f1 = [r["first"]["f1"] for r in rs]
        au = [r["first"]["auroc"] for r in rs]
        pf, pa = [r["peer_f1"] for r in rs], [r["peer_auroc"] for r in rs]
        beats = "yes" if np.mean(f1) > np.mean(pf) and np.mean(au) > np.mean(pa) else "no"
        lines.append(f"| {setting} | {len(rs)} | {ms([100 * r['share'] for r in rs], 1)} % | {ms([r['wall'] for r in rs], 0)} "
                     f"| {ms(f1)} | {ms(au)} | {ms([r['final']['f1'] for r in rs])} | {ms([r['final']['auroc'] for r in rs])} "
                     f"| {ms(pf)} | {ms(pa)} | {beats} ({np.mean(f1) - np.mean(pf):+.3f}, {np.mean(au) - np.mean(pa):+.3f}) |")
    return lines


def plan_of(stage: str) -> list[tuple[str, int, int]]:
    dev = [(s, d, t) for t in DEV_TRAIN_SEEDS for d in DEV_DATA_SEEDS for s in SETTINGS]
    # training seed outermost: a budget cut short still covers both report image sets
    rep = [(s, d, t) for t in REPORT_TRAIN_SEEDS for d in REPORT_DATA_SEEDS for s in SETTINGS]
    fresh = [(s, d, t) for t in REPORT_TRAIN_SEEDS for d in FRESH_DATA_SEEDS for s in SETTINGS]
    return {"dev": dev, "report": rep, "fresh": fresh, "all": dev + rep + fresh}[stage]


def plan_arguments(ap: argparse.ArgumentParser, default_plan: str = "dev") -> None:
    """--work and --plan, as every script that reads this protocol's runs takes them."""
    ap.add_argument("--work", type=Path, default=Path("/tmp/turn-protocol"))
    ap.add_argument("--plan", default=default_plan, choices=["dev", "report", "fresh", "all"])


def finished_runs(work: Path, plan: str):
    """(setting, run folder) of each finished run of ``plan`` (metrics.json written), in plan order."""
    for setting, data_seed, train_seed in plan_of(plan):
        d = run_dir(work, setting, data_seed, train_seed)
        if (d / "metrics.json").exists():
            yield setting, d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/turn-protocol"))
    ap.add_argument("--stage", default="train", choices=["train", "dev", "report", "fresh", "first-queue"],
                    help="first-queue: the report runs' first reviewable queue (time share, detection) "
                         "beside the final table and the peers; run after --stage report, which caches the peers")
    ap.add_argument("--plan", default="all", choices=["dev", "report", "fresh", "all"],
                    help="which runs --stage train trains")
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=250)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per training run")
    ap.add_argument("--shard", default="0/1", help="i/n: train every n-th run of the plan from the i-th "
                    "(n processes with --threads 1 share busy cores better than one with n threads)")
    ap.add_argument("--reverse", action="store_true", help="train the plan from its end (a second process)")
    ap.add_argument("--default", default=RunConfig().flag_rule, help="the rule the verdict tests")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.stage == "train":
        import torch

        print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads")
        i, n = (int(x) for x in args.shard.split("/"))
        plan = plan_of(args.plan)[i::n]
        train_all(args.work, args, plan[::-1] if args.reverse else plan)
        return
    if args.stage == "first-queue":
        for plan in ("report", "fresh"):
            print(f"\n{plan} runs:", *first_queue(args.work, plan_of(plan), args.default), sep="\n")
        return
    res = evaluate_plan(args.work, plan_of(args.stage))
    for setting, runs in res.items():
        print("\n".join(table(setting, runs)))
    if res:
        lines = choose(res)
        if args.stage in ("report", "fresh"):  # report images choose nothing
            lines = lines[:-1]
        print("\n".join(["", "F1 minus the best rule's, per setting (mean over runs):", *lines, "",
                          f"Default `{args.default}`:", *verdict(res, args.default)]))
    (args.work / f"{args.stage}.json").write_text(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    main()
