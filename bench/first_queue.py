"""Time to the first reviewable queue, and how good it is (not part of the test suite).

    .venv/bin/python bench/first_queue.py [--work /tmp/turn-bench] [--settings random1] \
        [--n-train 4000 --n-test 1000 --image-size 64]

For each setting of bench/run_bench.py (same data, same materialisation), one TURN run from
Start: the seconds until the provisional samples.csv is on disk (status.json "provisional"),
against the full run's wall time; the provisional table's precision / recall / F1 / AUROC (the
run's default score and flag rule on the pretrained view alone) beside the final table's and
beside cleanlab's and the k-NN vote's on the same images and features. The last line is one
JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

from run_bench import SETTINGS, add_data_args, fmt_row, manifest, materialise, peers, print_machine

from turn_core.config import RunConfig
from turn_core.pipeline import run
from turn_core.rundir import Run


def one_setting(name: str, args) -> dict:
    """Run TURN once on setting ``name``; the first queue's time and quality beside the rest."""
    label_set, noise = SETTINGS[name]
    data = manifest(materialise(args.work, label_set, args.n_train, args.n_test))
    out = args.work / "first-queue" / f"{name}-turn"
    cfg = RunConfig(data=str(data), out=str(out), method="turn", image_size=args.image_size, seed=args.seed,
                    batch_size=args.batch_size, num_threads=args.threads)
    if noise:
        cfg.inject_noise, cfg.inject_noise_rate = noise
    seen: dict = {}
    start = time.time()

    def on_event(ev: dict) -> None:
        # emitted right after the provisional table and its status flag are on disk
        if ev["phase"] == "provisional" and ev["kind"] == "info":
            seen["seconds"] = time.time() - start
            seen["detection"] = ev.get("detection", {})

    if out.exists():
        import shutil

        shutil.rmtree(out)
    run(cfg, progress=on_event)
    wall = time.time() - start
    r = Run(out)
    res = {"n_train": r.metrics.get("n_train"), "noise_rate": r.metrics.get("noise_rate"),
           "first_queue_s": seen["seconds"], "full_run_s": wall, "share": seen["seconds"] / wall,
           "timings": r.metrics.get("timings"),
           "detection": {"TURN first queue (provisional)": {**seen["detection"], "seconds": seen["seconds"]},
                         "TURN final": {**r.metrics["detection"], "seconds": wall}, **peers(r)}}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/turn-bench"))
    ap.add_argument("--settings", default="random1")
    add_data_args(ap)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print_machine()
    results = {}
    for name in args.settings.split(","):
        res = results[name] = one_setting(name, args)
        print(f"\n### {name} (noise rate {res['noise_rate']:.3f}, {res['n_train']} images, {args.image_size} px)")
        print(f"first reviewable queue after {res['first_queue_s']:.1f} s of a {res['full_run_s']:.1f} s run "
              f"({res['share']:.0%})")
        print("| method | precision | recall | F1 | AUROC | best other class = truth on errors | seconds |")
        print("|---|---|---|---|---|---|---|")
        for k, d in res["detection"].items():
            print(fmt_row(k, d))
    print(json.dumps(results, default=float))


if __name__ == "__main__":
    main()
