"""Wall time per phase and peak RSS of whole runs at growing sizes (CIFAR-10N, 32 px).

    nice -n 10 .venv/bin/python bench/growth.py [--sizes 2000 8000 32000] [--labels random1]
        [--data-script ../shared/data/cifar10n.py] [--work /tmp/turn_growth]

For each size: the CIFAR-10N subset is written as a folder + manifest (the data script), then
``python -m turn_core run --data <manifest> --image-size 32`` (default TURN settings) runs as a
child process; its peak RSS comes from ``os.wait4``, the phase times from metrics.json. Prints
one Markdown row per size, with seconds per 1,000 images to show how it grows.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = ("data", "backbone", "cache", "features", "lp", "fft", "score")


def run_once(manifest: Path, out: Path, env: dict, extra: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one CLI run."""
    cmd = [sys.executable, "-m", "turn_core", "run", "--data", str(manifest), "--image-size", "32",
           "--out", str(out), "--quiet", *extra]
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"run failed ({p.returncode}): {' '.join(cmd)}")
    return time.perf_counter() - t, usage.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 32000])
    ap.add_argument("--labels", default="random1")
    ap.add_argument("--data-script", type=Path, default=REPO.parent / "shared" / "data" / "cifar10n.py")
    ap.add_argument("--work", type=Path, default=Path("/tmp/turn_growth"))
    ap.add_argument("extra", nargs="*", help="more flags for turn_core run, after --")
    a = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO), TURN_AUDIT_CACHE=str(a.work / "cache"))
    print("| images | wall s | s per 1k | peak RSS GB | " + " | ".join(PHASES) + " |")
    print("|---|---|---|---|" + "---|" * len(PHASES))
    for n in a.sizes:
        data = a.work / f"cifar10n-{n}"
        if not (data / "train.csv").exists():
            subprocess.run([sys.executable, str(a.data_script), str(data), "--labels", a.labels,
                            "--n-train", str(n), "--n-test", "0"], check=True, stdout=subprocess.DEVNULL)
        out = a.work / "runs" / f"turn-{n}"
        wall, rss = run_once(data / "train.csv", out, env, a.extra)
        t = json.loads((out / "metrics.json").read_text())["timings"]
        print(f"| {n:,} | {wall:.0f} | {1000 * wall / n:.1f} | {rss / 1e9:.2f} | "
              + " | ".join(f"{t.get(p, 0):.1f}" for p in PHASES) + " |", flush=True)


if __name__ == "__main__":
    main()
