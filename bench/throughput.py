"""Images/s of the engine's feature pass and FFT step against bare timm loops, side by side.

    nice -n 10 .venv/bin/python bench/throughput.py [--size 64] [--batch 128] [--threads 2] [--rounds 3]

Same model (MobileNetV2 ``mobilenetv2_100``), size, batch and threads on both sides. The engine
reads uint8 rows of an on-disk memmap through ``train.forward_pass`` / ``train.fft_epoch`` (loader,
normalising, augmentation, float32 head) with the run's defaults (BN folded, channels_last,
``precision=auto``). The bare loops run ``model(x)`` on a ready normalised tensor in each layout
(NCHW / channels_last) and precision (fp32 / bf16 autocast), eval-mode BN; the training loop is
forward, CE, backward, SGD step. Rounds interleave every variant, so load on the machine hits
all alike; the medians are printed with the ratio engine / best bare variant.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the checkout, as the other bench scripts

from turn_core.train import (
    fft_epoch,
    fold_batchnorm,
    forward_pass,
    make_fft_optimizer,
    make_runtime,
    precision_name,
)

LAYOUTS = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}
PRECISION = {"fp32": None, "bf16": torch.bfloat16}


def _autocast(dtype):
    return torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()


def bare_infer(model, x, dtype, n_batches) -> float:
    model.eval()
    t = time.perf_counter()
    with torch.no_grad():
        for _ in range(n_batches):
            with _autocast(dtype):
                model(x)
    return n_batches * len(x) / (time.perf_counter() - t)


def bare_train(model, x, y, dtype, n_batches) -> float:
    model.eval()   # eval-mode BN, as the engine's folded / frozen BN
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    t = time.perf_counter()
    for _ in range(n_batches):
        with _autocast(dtype):
            z = model(x)
        loss = F.cross_entropy(z.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return n_batches * len(x) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--infer-batches", type=int, default=8)
    ap.add_argument("--train-batches", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    s, b = a.size, a.batch
    n_inf, n_tr = a.infer_batches * b, a.train_batches * b
    tmp = Path(tempfile.mkdtemp())
    np.save(tmp / "cache.npy", np.random.default_rng(0).integers(0, 256, (n_inf, s, s, 3), dtype=np.uint8))
    images = np.load(tmp / "cache.npy", mmap_mode="r")
    labels = np.random.default_rng(1).integers(0, 10, n_inf)

    engine = timm.create_model("mobilenetv2_100", num_classes=10)
    fold_batchnorm(engine)
    engine.to(memory_format=torch.channels_last)
    rt = make_runtime(torch.device("cpu"), (0.5,) * 3, (0.25,) * 3, b, precision="auto")
    opt = make_fft_optimizer(engine, 1e-4, 0.9, 5e-4)
    bare = {lay: timm.create_model("mobilenetv2_100", num_classes=10).to(memory_format=fmt)
            for lay, fmt in LAYOUTS.items()}
    x = {lay: torch.randn(b, 3, s, s).contiguous(memory_format=fmt) for lay, fmt in LAYOUTS.items()}
    y = torch.randint(0, 10, (b,))

    results: dict[str, list[float]] = {}
    for r in range(a.rounds + 1):   # round 0 warms every variant up and is not counted
        got = {}
        t = time.perf_counter()
        forward_pass(engine, images, rt)
        got["infer engine"] = n_inf / (time.perf_counter() - t)
        for lay in LAYOUTS:
            for p, dtype in PRECISION.items():
                got[f"infer bare {lay} {p}"] = bare_infer(bare[lay], x[lay], dtype, a.infer_batches)
        t = time.perf_counter()
        fft_epoch(engine, images, np.arange(n_tr), labels, opt, rt, epoch=1, epochs=1, seed=r, grad_clip=1.0)
        got["train engine"] = n_tr / (time.perf_counter() - t)
        for lay in LAYOUTS:
            for p, dtype in PRECISION.items():
                got[f"train bare {lay} {p}"] = bare_train(bare[lay], x[lay], y, dtype, a.train_batches)
        if r:
            for k, v in got.items():
                results.setdefault(k, []).append(v)

    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"mobilenetv2_100, {s} px, batch {b}, {a.threads} threads, {a.rounds} interleaved rounds "
          f"(engine precision: passes {precision_name(rt.infer_dtype)}, training {precision_name(rt.train_dtype)})")
    print("| pass | variant | img/s (median) | all rounds |\n|---|---|---|---|")
    for k, v in med.items():
        kind, _, variant = k.partition(" ")
        print(f"| {kind} | {variant} | {v:,.0f} | {', '.join(f'{x:,.0f}' for x in results[k])} |")
    for kind in ("infer", "train"):
        best = max((v, k) for k, v in med.items() if k.startswith(f"{kind} bare"))
        print(f"{kind}: engine / best bare ({best[1].removeprefix(kind + ' bare ')}) = {med[f'{kind} engine'] / best[0]:.2f}")


if __name__ == "__main__":
    main()
