"""Neighbour search: seconds and recall@k of each ``turn_core.knn`` method against exact search,
and the scoring step's k-NN vote through the index against the dense pass it replaced.

    .venv/bin/python bench/knn.py [--n 20000,50000] [--k 10] [--work /tmp/turn-knn] [--methods ...]
                                  [--vote 40000]

Features are real: MobileNetV2 (offline ImageNet weights) on the first N CIFAR-10 training images
of ``../shared/data/cifar10n.npz`` at 32 px, 1280-d, computed once and cached in the work folder
(isotropic random vectors would make any index look worse than it is on real features).
Prints one table row per (N, method), "auto" marking what ``knn.choose_method`` picks at that N;
``exact`` is the reference for recall. ``--vote N`` (0: skip) then times
``scores.knn_label_probs`` (the index, method "auto") against ``dense_vote`` (the quadratic numpy
pass it replaced, kept here as the reference) on N features with the CIFAR-10N random1 labels,
and says how many rows' neighbours and votes differ.
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
    """(n, 1280) float16 pretrained features of the first n CIFAR-10 training images (cached;
    the first n rows of a larger cached array serve too)."""
    path = work / f"features-{n}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    for bigger in sorted(work.glob("features-*.npy")):
        m = int(bigger.stem.split("-")[1])
        if m >= n:
            return np.load(bigger, mmap_mode="r")[:n]
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


def dense_vote(features, labels: np.ndarray, n_classes: int, k: int = 10, chunk: int = 2048):
    """The k-NN vote as ``scores.knn_label_probs`` computed it before the index: float32 numpy
    matmul of each 2048-row chunk against all rows, argpartition, sort. (probs, neighbours)."""
    f = knn.normalise(features)
    n = len(f)
    nbrs = np.zeros((n, k), dtype=np.int64)
    for s in range(0, n, chunk):
        sim = f[s:s + chunk] @ f.T
        rows = np.arange(sim.shape[0])
        sim[rows, s + rows] = -np.inf
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sim, part, axis=1), axis=1)
        nbrs[s:s + chunk] = np.take_along_axis(part, order, axis=1)
    probs = np.zeros((n, n_classes))
    np.add.at(probs, (np.repeat(np.arange(n), k), labels[nbrs].ravel()), 1.0 / k)
    return probs, nbrs


def vote_row(n: int, k: int, work: Path) -> None:
    """Dense vs index k-NN vote on n real features: seconds, rows whose neighbour sets differ."""
    from turn_core.scores import knn_label_probs

    f = cifar_features(n, work)
    labels = np.load(PACK)["train_random1"][:n]
    t0 = time.perf_counter()
    p_dense, n_dense = dense_vote(f, labels, 10, k)
    t_dense = time.perf_counter() - t0
    t0 = time.perf_counter()
    p_index, n_index = knn_label_probs(f, labels, 10, k, device="cpu")
    t_index = time.perf_counter() - t0
    sets = np.mean(np.any(np.sort(n_dense, 1) != np.sort(n_index, 1), axis=1))
    votes = np.mean(np.any(np.abs(p_dense - p_index) > 1e-9, axis=1))
    print(f"| {n:,} | dense numpy (before) | {t_dense:.1f} | index, {knn.choose_method(n, 'cpu')} | {t_index:.1f} "
          f"| {sets:.5f} | {votes:.5f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="20000,50000")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--work", type=Path, default=Path("/tmp/turn-knn"))
    ap.add_argument("--methods", default=",".join(knn.METHODS))
    ap.add_argument("--vote", type=int, default=0, help="N for the dense-vs-index k-NN vote (0: skip)")
    args = ap.parse_args()
    import torch

    print(f"torch threads {torch.get_num_threads()}, k = {args.k}")
    print("| N | method | seconds | recall@k vs exact |")
    print("|---|---|---|---|")
    for n in (int(x) for x in args.n.split(",") if x):
        f = cifar_features(n, args.work)
        ref = None
        for name in ["exact"] + [m for m in args.methods.split(",") if m != "exact"]:
            t0 = time.perf_counter()
            idx, _ = knn.search(f, args.k, method=name, device="cpu")
            dt = time.perf_counter() - t0
            ref = idx if name == "exact" else ref
            auto = " (auto)" if name == knn.choose_method(n, "cpu") else ""
            print(f"| {n:,} | {name}{auto} | {dt:.1f} | {knn.recall_at_k(idx, ref):.3f} |", flush=True)
    if args.vote:
        print(f"\nk-NN vote (scores.knn_label_probs), k = {args.k}")
        print("| N | before | seconds | now | seconds | rows with other neighbours | rows with another vote |")
        print("|---|---|---|---|---|---|---|")
        vote_row(args.vote, args.k, args.work)


if __name__ == "__main__":
    main()
