"""TURN Audit vs its peers on CIFAR-10N (not part of the test suite).

    .venv/bin/python bench/run_bench.py [--work /tmp/turn-bench] [--settings aggre,random1,sym40,asym40]

For each label setting, on the same 4,000 train / 1,000 test CIFAR-10 images at 64 px
(``../shared/data/cifar10n.py OUT --n-train 4000 --n-test 1000``):
  * TURN training once; scored with the product's default score + flag rule and with the paper's
    own GMM rule (scoring does not change training, so one run serves both);
  * cleanlab ``find_label_issues`` on 5-fold CV logistic regression over the same backbone's
    pretrained features; k-NN label vote (k = 10, 25, cosine) on those features;
  * test accuracy of TURN, CE-FFT, GCE-LP and CE-LP (each a real pipeline run).
Prints one table per setting plus a summary; writes ``results.json`` into the work folder.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from turn_core.config import RunConfig
from turn_core.metrics import detection_metrics
from turn_core.pipeline import run
from turn_core.rundir import Run

SHARED = ROOT.parent / "shared" / "data" / "cifar10n.py"
SETTINGS = {
    # name: (label set written by cifar10n.py, synthetic noise on the clean labels)
    "aggre": ("aggre", None),
    "random1": ("random1", None),
    "sym40": ("clean", ("symmetric", 0.4)),
    "asym40": ("clean", ("asymmetric", 0.4)),
}


def materialise(work: Path, labels: str, n_train: int, n_test: int, data_seed: int = 0) -> Path:
    """The folder of one ``cifar10n.py`` subset (written once): ``data_seed`` picks the images
    (seed 0 keeps the folder name earlier benchmarks cached)."""
    tail = f"-s{data_seed}" if data_seed else ""
    out = work / f"cifar10n-{labels}-{n_train}{tail}"
    if not (out / "train.csv").exists():
        # write beside it and rename, so a second bench process started meanwhile never reads a
        # half-written folder (it sees either nothing, and writes its own, or the finished one)
        tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run([sys.executable, str(SHARED), str(tmp), "--labels", labels, "--n-train", str(n_train),
                        "--n-test", str(n_test), "--seed", str(data_seed)], check=True)
        if out.exists() and not (out / "train.csv").exists():
            shutil.rmtree(out)  # a half-written folder left by a bench from before the rename
        try:
            tmp.rename(out)
        except OSError:  # another process renamed its copy first: the same images, keep that one
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def manifest(folder: Path) -> Path:
    """One CSV with split=train/test so a single dataset carries both (and clean_label)."""
    out = folder / "all.csv"
    if not out.exists():
        import csv

        rows = []
        with open(folder / "train.csv", newline="") as f:
            for r in csv.DictReader(f):
                rows.append([r["path"], r["label"], "train", r["clean_label"]])
        with open(folder / "test.csv", newline="") as f:
            for r in csv.DictReader(f):
                rows.append([r["path"], r["label"], "test", r["label"]])
        with open(out, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["path", "label", "split", "clean_label"])
            w.writerows(rows)
    return out


def run_method(data: Path, out: Path, method: str, noise, args) -> tuple[Run, float]:
    cfg = RunConfig(data=str(data), out=str(out), method=method, image_size=args.image_size,
                    seed=args.seed, batch_size=args.batch_size, num_threads=args.threads)
    if noise:
        cfg.inject_noise, cfg.inject_noise_rate = noise
    t0 = time.time()
    if not (out / "metrics.json").exists() or args.fresh:
        if args.cached_only:
            return None, 0.0
        run(cfg)
    return Run(out), time.time() - t0


def best_other(probs: np.ndarray, given: np.ndarray) -> np.ndarray:
    """The most probable class other than the given one: what a method would suggest for a
    label it calls wrong (the same rule for every method, so the suggestion figures compare)."""
    p = np.array(probs, dtype=np.float64, copy=True)
    p[np.arange(len(given)), given] = -np.inf
    return p.argmax(axis=1)


def peers(r: Run) -> dict:
    from turn_core.baselines import cleanlab_cv_lr, knn_vote

    s = r.samples()
    classes = r.classes
    idx = {c: i for i, c in enumerate(classes)}
    given = s["given_label"].map(idx).to_numpy()
    truth = s["true_label"].map(idx).to_numpy()
    noisy = given != truth
    feats = np.asarray(r.features("pre"), dtype=np.float32)
    out = {}
    t0 = time.time()
    cl = cleanlab_cv_lr(feats, given)
    out["cleanlab CV-LR"] = {**detection_metrics(noisy, cl["flagged"], cl["suspicion"]),
                             "seconds": time.time() - t0,
                             "suggest_acc": float(np.mean(best_other(cl["probs"], given)[noisy] == truth[noisy]))}
    for k in (10, 25):
        t0 = time.time()
        kv = knn_vote(feats, given, len(classes), k)
        out[f"kNN vote k={k}"] = {**detection_metrics(noisy, kv["flagged"], kv["suspicion"]),
                                  "seconds": time.time() - t0,
                                  "suggest_acc": float(np.mean(best_other(kv["probs"], given)[noisy] == truth[noisy]))}
    return out


def ours(r: Run) -> dict:
    """The product's default score + flag rule and the paper's GMM rule, re-scored from the run's
    saved signals with the current code (scoring never changes training)."""
    from turn_core.scores import score_and_flag, signals_from_run, suggestion_probs

    t = r.metrics["timings"]
    s = r.samples()
    idx = {c: i for i, c in enumerate(r.classes)}
    truth = s["true_label"].map(idx).to_numpy()
    sig = signals_from_run(r)
    noisy = sig.labels != truth
    out = {}
    default = RunConfig()
    rows = {"TURN Audit default": (default.score, default.flag_rule),
            "TURN ensemble + confident learning": ("ensemble", "confident-learning"),
            "TURN paper GMM rule": ("paper", "paper")}
    for name, (score, rule) in rows.items():
        t0 = time.time()
        o = score_and_flag(sig, score, rule)
        sugg = best_other(suggestion_probs(sig) if score == "ensemble" else sig.probs, sig.labels)
        out[name] = {**detection_metrics(noisy, o["flagged"], o["suspicion"]),
                     "seconds": sum(t.values()) + (time.time() - t0),
                     "suggest_acc": float(np.mean(sugg[noisy] == truth[noisy])), "timings": t,
                     "views": sig.extra.get("views")}
    return out


def fmt_row(name: str, d: dict) -> str:
    return (f"| {name} | {d['precision']:.3f} | {d['recall']:.3f} | {d['f1']:.3f} | {d.get('auroc', float('nan')):.3f} "
            f"| {d.get('suggest_acc', float('nan')):.3f} | {d['seconds']:.1f} |")


def add_data_args(ap: argparse.ArgumentParser) -> None:
    """The data and training flags every CIFAR-10N benchmark script shares."""
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)


def print_machine() -> None:
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"cuda={torch.cuda.is_available()}; torch {torch.__version__}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/turn-bench"))
    ap.add_argument("--settings", default=",".join(SETTINGS))
    # GCE-LP is TURN's own Phase I (same code, seed and data): its test accuracy is read from the
    # TURN run ("turn (after LP)") unless gce-lp is listed here as well.
    ap.add_argument("--methods", default="turn,ce-lp,ce-fft")
    add_data_args(ap)
    ap.add_argument("--fresh", action="store_true", help="re-run even when a run directory exists")
    ap.add_argument("--cached-only", action="store_true",
                    help="train nothing: report only the runs already in the work folder")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print_machine()
    results = {}
    for name in args.settings.split(","):
        label_set, noise = SETTINGS[name]
        data = manifest(materialise(args.work, label_set, args.n_train, args.n_test))
        res = {"detection": {}, "test_accuracy": {}, "timings": {}}
        for method in args.methods.split(","):
            r, _ = run_method(data, args.work / "runs" / f"{name}-{method}", method, noise, args)
            if r is None:
                continue
            res["test_accuracy"][method] = r.metrics.get("test_accuracy")
            res["timings"][method] = r.metrics.get("timings")
            if method == "turn":
                res["test_accuracy"]["turn (after LP) = gce-lp"] = r.metrics.get("test_accuracy_lp")
                res["noise_rate"] = r.metrics.get("noise_rate")
                res["detection"].update(ours(r))
                res["detection"].update(peers(r))
        results[name] = res
        print(f"\n### {name} (noise rate {res.get('noise_rate', float('nan')):.3f})")
        print("| method | precision | recall | F1 | AUROC | best other class = truth on errors | seconds |")
        print("|---|---|---|---|---|---|---|")
        for k, d in res["detection"].items():
            print(fmt_row(k, d))
        print("test accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in res["test_accuracy"].items() if v is not None))
        if "turn" in res["timings"]:
            print("TURN wall time per phase (s): " + ", ".join(f"{k} {v:.1f}" for k, v in res["timings"]["turn"].items()))
        (args.work / "results.json").write_text(json.dumps(results, indent=2, default=float))
    print("\n### summary: default minus best peer (F1, AUROC)")
    for name, res in results.items():
        d = res["detection"]
        best_f1 = max(v["f1"] for k, v in d.items() if not k.startswith("TURN"))
        best_auc = max(v["auroc"] for k, v in d.items() if not k.startswith("TURN"))
        o = d["TURN Audit default"]
        print(f"{name}: ΔF1 {o['f1'] - best_f1:+.3f}, ΔAUROC {o['auroc'] - best_auc:+.3f}")


if __name__ == "__main__":
    main()
