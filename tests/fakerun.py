"""A synthetic, finished run directory in the real on-disk format, for fast tests.

Pages, review and export tests use this instead of training a model: it writes every file the
pipeline writes (see turn_core/rundir.py), with seeded random content and a known truth, in
well under a second. Tests that need real training run the tiny demo instead.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from turn_core.config import RunConfig
from turn_core.rundir import SAMPLE_COLUMNS, RunWriter

CLASSES = ["cat", "dog", "bird, small", 'say "hi"', "café"]  # commas, quotes, unicode on purpose


def make_fake_run(run_dir: str | Path, n: int = 60, *, seed: int = 0, state: str = "finished",
                  classes: list[str] | None = None, dataset_root: str | Path | None = None,
                  fft_epochs: int = 2) -> Path:
    """Write a finished run with ``n`` samples; ~20 % of labels are wrong (truth known).

    When ``dataset_root`` is given, tiny PNGs are written there under ``img/`` so that exports
    producing a manifest point at real files.
    """
    rng = np.random.default_rng(seed)
    classes = list(classes or CLASSES)
    k = len(classes)
    truth = rng.integers(0, k, n)
    given = truth.copy()
    noisy = rng.random(n) < 0.2
    given[noisy] = (truth[noisy] + rng.integers(1, k, noisy.sum())) % k
    noisy = given != truth
    suspicion = np.clip(np.where(noisy, rng.beta(5, 2, n), rng.beta(2, 5, n)), 0, 1)
    flagged = suspicion >= 0.5
    suggested = np.where(flagged, truth, given)
    paths = [f"img/{i:04d}.png" for i in range(n)]

    run_dir = Path(run_dir)
    w = RunWriter(run_dir)
    cfg = RunConfig(data=str(dataset_root or "demo"), out=str(run_dir), fft_epochs=fft_epochs)
    w.set_status("running", method=cfg.method)
    w.write_json("config.json", {
        "format": 1, "settings": cfg.to_dict(), "classes": classes, "versions": {},
        "dataset": {"source": str(dataset_root or "fake"), "root": str(dataset_root or ""),
                    "kind": "csv", "fingerprint": f"fake-{seed}", "n_train": n, "n_test": 0}})
    for phase, epochs in (("lp", 3), ("fft", fft_epochs)):
        for e in range(1, epochs + 1):
            w.event(phase, "epoch", epoch=e, epochs=epochs, loss=float(1.0 / e),
                    **({"tau": cfg.tau, "n_train": n // 2,
                        "clean_per_class": {c: n // (2 * k) for c in classes}} if phase == "fft" else {}))
    w.event("done", "timing", seconds=1.0)

    header = SAMPLE_COLUMNS + [f"loss_fft_{e}" for e in range(1, fft_epochs + 1)] + ["true_label", "is_noisy"]
    rows = []
    for i in range(n):
        p = np.full(k, (1 - 0.7) / (k - 1))
        p[suggested[i]] = 0.7
        rows.append([i, paths[i], classes[given[i]], classes[suggested[i]], classes[suggested[i]],
                     round(float(suspicion[i]), 6), round(float(1 - suspicion[i]), 6), int(flagged[i]),
                     0.7, round(float(p[given[i]] - 0.7 if given[i] != suggested[i] else 0.4), 6),
                     round(float(rng.random()), 6), round(float(rng.exponential()), 6)]
                    + [round(float(rng.exponential()), 6) for _ in range(fft_epochs)]
                    + [classes[truth[i]], int(noisy[i])])
    w.write_csv("samples.csv", header, rows)
    feats = rng.normal(size=(n, 16)).astype(np.float32) + truth[:, None]
    w.write_npy("features_pre.npy", feats.astype(np.float16))
    w.write_npy("features_post.npy", (feats * 1.5).astype(np.float16))
    thumbs = (rng.random((n, 16, 16, 3)) * 255).astype(np.uint8)
    w.write_npy("thumbs.npy", thumbs)
    # gmm.json as pipeline.py writes it: one entry per FFT epoch (fitted on the losses before
    # it), then the final fit on the last losses; fits on (loss − lo) / (hi − lo).
    fit = {"means": [0.1, 0.6], "variances": [0.01, 0.05], "weights": [0.8, 0.2],
           "clean_component": 0, "lo": 0.0, "hi": 4.0}
    w.write_json("gmm.json", [{"epoch": e, "tau": cfg.tau, "fits": [fit], **fit}
                              for e in range(1, fft_epochs + 1)]
                 + [{"epoch": fft_epochs, "final": True, "tau": cfg.tau, "fits": [fit], **fit}])
    from turn_core.metrics import detection_metrics
    w.write_json("metrics.json", {"detection": detection_metrics(noisy, flagged, suspicion),
                                  "test_accuracy": 0.9})
    w.write_csv("skipped.csv", ["path", "reason"], [["img/broken.png", "cannot identify image file"]])
    if dataset_root is not None:
        from PIL import Image

        root = Path(dataset_root)
        (root / "img").mkdir(parents=True, exist_ok=True)
        for i, rel in enumerate(paths):
            Image.fromarray(thumbs[i]).save(root / rel)
    w.set_status(state, method=cfg.method, **({"error": "boom: synthetic failure"} if state == "failed" else {}))
    w.close()
    return run_dir
