"""Neighbour search: seconds and recall@k of each ``turn_core.knn`` method against exact search.

    .venv/bin/python bench/knn.py [--n 20000,50000] [--k 10] [--work /tmp/turn-knn] [--methods ...]

Features are real: MobileNetV2 (offline ImageNet weights) on the first N CIFAR-10 training images
of ``../shared/data/cifar10n.npz`` at 32 px, 1280-d, computed once and cached in the work folder
(isotropic random vectors would make any index look worse than it is on real features).
Prints one table row per (N, method); ``exact`` is the reference for recall.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from turn_core import knn

PACK = ROOT.parent / "shared" / "data" / "cifar10n.npz"


def cifar_features(n: int, work: Path) -> np.ndarray:
    """(n, 1280) float16 pretrained features of the first n CIFAR-10 training images (cached)."""
    path = work / f"features-{n}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    from PIL import Image

    from turn_core.backbones import create_backbone
    from turn_core.train import forward_pass, make_runtime, pick_device

    z = np.load(PACK)
    jpeg, off = z["train_jpeg"], z["train_offsets"]
    images = np.stack([np.asarray(Image.open(io.BytesIO(jpeg[off[i]:off[i + 1]].tobytes())).convert("RGB"))
                       for i in range(n)])
    model, cfg = create_backbone("mobilenetv2_100", num_classes=10, weights="offline")
    rt = make_runtime(pick_device("cpu"), cfg["mean"], cfg["std"], 256)
    feats, _ = forward_pass(model, images, rt)
    work.mkdir(parents=True, exist_ok=True)
    np.save(path, feats.astype(np.float16))
    return np.load(path, mmap_mode="r")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="20000,50000")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--work", type=Path, default=Path("/tmp/turn-knn"))
    ap.add_argument("--methods", default=",".join(knn.METHODS))
    args = ap.parse_args()
    import torch

    print(f"torch threads {torch.get_num_threads()}, k = {args.k}")
    print("| N | method | seconds | recall@k vs exact |")
    print("|---|---|---|---|")
    for n in (int(x) for x in args.n.split(",")):
        f = cifar_features(n, args.work)
        ref = None
        for name in ["exact"] + [m for m in args.methods.split(",") if m != "exact"]:
            t0 = time.perf_counter()
            idx, _ = knn.search(f, args.k, method=name, device="cpu")
            dt = time.perf_counter() - t0
            ref = idx if name == "exact" else ref
            print(f"| {n:,} | {name} | {dt:.1f} | {knn.recall_at_k(idx, ref):.3f} |", flush=True)


if __name__ == "__main__":
    main()
