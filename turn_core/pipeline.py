"""``run(config, progress, cancel)``: TURN (or a baseline) end to end, written to a run directory.

Steps and the files they write (see rundir.py):
  1. data      — load the dataset (+ optional synthetic noise), split train / test
  2. backbone  — timm model + weights (backbones.py)
  3. cache     — decode + resize every image once into a uint8 memmap; thumbs.npy, skipped.csv
  4. features  — pretrained features of every training image (frozen θ: computed once)
  5. LP        — Phase I: linear head with GCE (TURN, GCE-LP) or CE (CE-LP, CE-FFT) on cached features
  6. FFT       — Phase II (TURN): per epoch, loss pass → GMM → τ → class-balanced clean set →
                 one epoch of full fine-tuning with CE. CE-FFT: the same epochs on all samples.
  7. score     — final pass; suspicion, flags, suggestions (scores.py); samples.csv, metrics.json
The same function serves the CLI, the app's background job and the benchmark.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np

from .config import RunConfig, cache_dir
from .errors import Cancelled, InputError
from .progress import CancelToken, check
from .rundir import SAMPLE_COLUMNS, RunWriter

DEMO_IMAGE_SIZE = 32     # the demo's 28-px digits: 32 px keeps `turn_core demo` under 2 min on 2 cores
log = logging.getLogger("turn_core")


def _versions() -> dict:
    import sklearn
    import timm
    import torch

    from . import __version__

    return {"turn_core": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "sklearn": sklearn.__version__, "numpy": np.__version__, "python": platform.python_version()}


def load_inputs(config: RunConfig):
    """(train Dataset, test Dataset | None, noise report) for ``config``."""
    from . import data, noise
    from .demo import load_demo

    if config.data == "demo":
        ds = load_demo(n=config.demo_n, noise=config.demo_noise, rate=config.demo_noise_rate,
                            seed=config.seed, asym_map=config.asym_map)
    else:
        ds = data.load_dataset(config.data)
    report = {}
    if config.inject_noise:
        base = ds.clean_labels if ds.clean_labels is not None else ds.labels
        feats = None
        if config.inject_noise == "instance":
            from .images import build_image_cache

            imgs, _ = build_image_cache(ds.files, 16, cache_dir(), key=ds.fingerprint() + "-noise")
            feats = np.asarray(imgs, dtype=np.float32).reshape(len(imgs), -1)
        noisy, realised = noise.inject_noise(config.inject_noise, base, len(ds.classes), config.inject_noise_rate,
                                             config.seed, features=feats, mapping=config.asym_map, classes=ds.classes)
        ds.clean_labels = np.asarray(base).copy()
        ds.labels = noisy
        report = {"kind": config.inject_noise, "rate": config.inject_noise_rate, "realised_rate": realised}
    train = ds.subset(ds.splits == "train")
    test = ds.subset(ds.splits != "train") if np.any(ds.splits != "train") else None
    if config.test_data:
        test = data.load_dataset(config.test_data, classes=ds.classes)
    return train, test, report


def estimate_seconds(config: RunConfig, n_images: int, device: str = "cpu") -> float:
    """Rough wall time of a run; calibrated on 2 CPU cores with MobileNetV2 (see BENCHMARKS.md)."""
    size = config.image_size or 224
    per_image = 1.1e-3 * (size / 32) ** 2   # seconds per image-pass (forward) at this size on CPU
    if device == "cuda":
        per_image /= 40
    passes = 2 + config.fft_epochs            # features + loss passes
    train_passes = 3 * config.fft_epochs * (0.6 if config.method == "turn" else 1.0)
    if config.method in ("ce-lp", "gce-lp"):
        passes, train_passes = 1, 0
    return n_images * per_image * (passes + train_passes) + 0.002 * n_images + 5


class _Emitter:
    """Writes each event to events.jsonl and forwards it to the caller's progress callback."""

    def __init__(self, writer: RunWriter, progress: Callable | None):
        self.writer, self.progress = writer, progress
        self._last_step = 0.0

    def __call__(self, ev: dict) -> None:
        ev = dict(ev)
        phase, kind = ev.pop("phase"), ev.pop("kind")
        if kind == "step":  # steps go to the callback always, to disk at most 2× per second
            full = {"t": time.time(), "phase": phase, "kind": kind, **ev}
            if time.time() - self._last_step > 0.5 or ev.get("step") == ev.get("steps"):
                self.writer.event(phase, kind, **ev)
                self._last_step = time.time()
        else:
            full = self.writer.event(phase, kind, **ev)
        if self.progress:
            try:
                self.progress(full)
            except Exception:  # a broken UI callback must not kill the run
                log.exception("progress callback failed")


def run(config: RunConfig, progress: Callable[[dict], None] | None = None,
        cancel: CancelToken | None = None) -> Path:
    """Run ``config.method`` on ``config.data`` into ``config.out``; return the run directory.

    Raises ``InputError`` for bad input, ``Cancelled`` when ``cancel`` is set; either way (and on
    any other exception) status.json records the outcome and run.log the traceback.
    """
    config.validate()
    out = Path(config.out)
    if (out / "status.json").exists() and any(out.iterdir()):
        from .rundir import read_status

        if read_status(out)["state"] == "running":
            raise InputError(f"run directory {out} belongs to a run that is still going")
    writer = RunWriter(out)
    writer.reset()
    emit = _Emitter(writer, progress)
    writer.set_status("running", method=config.method, error=None)
    # The settings go to disk first, so a run killed in any step can be restarted as it was;
    # the full config.json (classes, dataset, versions) replaces this after the image cache.
    writer.write_json("config.json", {"format": 1, "settings": config.to_dict(), "classes": []})
    try:
        _run(config, writer, emit, cancel)
    except (Cancelled, KeyboardInterrupt):
        writer.event("done", "info", message="cancelled")
        writer.set_status("cancelled", error="cancelled by the user")
        raise
    except InputError as e:
        _log_exception(out)
        writer.set_status("failed", error=str(e))
        raise
    except BaseException as e:
        _log_exception(out)
        writer.set_status("failed", error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])
        raise
    finally:
        writer.close()
    return out


def _log_exception(out: Path) -> None:
    with open(out / "run.log", "a", encoding="utf-8") as f:
        f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + traceback.format_exc() + "\n")


def _timed(emit, phase: str, t0: float) -> float:
    dt = time.time() - t0
    emit({"phase": phase, "kind": "timing", "seconds": dt})
    return dt


def _run(config: RunConfig, writer: RunWriter, emit: _Emitter, cancel: CancelToken | None) -> None:
    import torch

    from . import images as images_mod
    from .backbones import create_backbone
    from .scores import build_signals, margin, score_and_flag
    from .selection import balanced_clean_set, clean_posterior
    from .train import (cross_val_linear_probs, fft_epoch, fit_temperature, fold_batchnorm, forward_pass,
                        make_fft_optimizer, make_runtime, per_sample_ce, pick_device, recalibrate_bn, set_head,
                        softmax, train_linear_head)

    timings: dict[str, float] = {}
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)

    # 1. data ------------------------------------------------------------------------------
    t0 = time.time()
    emit({"phase": "data", "kind": "start"})
    train, test, noise_report = load_inputs(config)
    classes = train.classes
    k = len(classes)
    timings["data"] = _timed(emit, "data", t0)
    check(cancel)

    # 2. backbone --------------------------------------------------------------------------
    t0 = time.time()
    model, data_cfg = create_backbone(config.model, num_classes=k, weights=config.weights,
                                      checkpoint=config.checkpoint)
    size = config.image_size or (DEMO_IMAGE_SIZE if config.data == "demo" else int(data_cfg["input_size"][-1]))
    mean = tuple(config.mean or data_cfg["mean"])
    std = tuple(config.std or data_cfg["std"])
    device = pick_device(config.device)
    if config.bn_mode == "fold":
        fold_batchnorm(model)   # same features; FFT without tiny-variance amplification (config.py)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    rt = make_runtime(device, mean, std, config.batch_size)
    timings["backbone"] = _timed(emit, "backbone", t0)

    # 3. image cache -----------------------------------------------------------------------
    t0 = time.time()
    emit({"phase": "cache", "kind": "start", "n": len(train.files)})
    image_cache = cache_dir() / "images"
    imgs, bad = images_mod.build_image_cache(train.files, size, image_cache, key=train.fingerprint(),
                                             progress=emit, cancel=cancel)
    skipped = list(train.skipped) + [(train.paths[i], r) for i, r in sorted(bad.items())]
    if bad:
        keep = np.setdiff1d(np.arange(len(train.files)), np.fromiter(bad.keys(), int))
        train = train.subset(keep)
        imgs = imgs[keep]  # copies the kept rows into memory; fine for the sizes we run here
    test_imgs = None
    if test is not None:
        test_imgs, tbad = images_mod.build_image_cache(test.files, size, image_cache, key=test.fingerprint(),
                                                       cancel=cancel)
        skipped += [(test.paths[i], r) for i, r in sorted(tbad.items())]
        if tbad:
            keep = np.setdiff1d(np.arange(len(test.files)), np.fromiter(tbad.keys(), int))
            test, test_imgs = test.subset(keep), test_imgs[keep]
        skipped += list(test.skipped)
    writer.write_csv("skipped.csv", ["path", "reason"], skipped)
    counts = np.bincount(train.labels, minlength=k)
    too_small = [classes[c] for c in range(k) if counts[c] < 2]
    if too_small:
        raise InputError(f"after skipping unreadable files, class(es) {', '.join(too_small)} have fewer than 2 images")
    writer.write_npy("thumbs.npy", images_mod.make_thumbnails(imgs, config.thumb_size))
    writer.write_json("config.json", {
        "format": 1, "settings": config.to_dict(), "classes": classes, "versions": _versions(),
        "resolved": {"image_size": size, "mean": mean, "std": std, "device": str(device)},
        "dataset": {"source": train.source, "root": str(train.root), "kind": train.kind,
                    "fingerprint": train.fingerprint(), "n_train": len(train.paths),
                    "n_test": 0 if test is None else len(test.paths), "n_skipped": len(skipped),
                    "noise": noise_report}})
    timings["cache"] = _timed(emit, "cache", t0)

    labels = np.asarray(train.labels, dtype=np.int64)
    truth = None if train.clean_labels is None else np.asarray(train.clean_labels, dtype=np.int64)

    # 4. pretrained features (θ frozen during LP: one pass serves all 20 epochs) -------------
    t0 = time.time()
    feats_pre, _ = forward_pass(model, imgs, rt, progress=emit, cancel=cancel, phase="features")
    if config.save_features:
        writer.write_npy("features_pre.npy", feats_pre.astype(np.float16))
    timings["features"] = _timed(emit, "features", t0)

    # 5. Phase I: linear probing -----------------------------------------------------------
    t0 = time.time()
    lp_loss = "gce" if config.method in ("turn", "gce-lp") else "ce"
    w, b, _ = train_linear_head(feats_pre, labels, k, loss=lp_loss, q=config.gce_q, epochs=config.lp_epochs,
                                lr=config.lp_lr, weight_decay=config.lp_weight_decay,
                                batch_size=config.batch_size, min_steps_per_epoch=config.lp_min_steps,
                                seed=config.seed, progress=emit, cancel=cancel)
    logits = feats_pre @ w.numpy().T + b.numpy()
    temperature = 1.0
    if config.method == "turn" and config.fft_epochs > 0 and config.calibrate_head:
        temperature = fit_temperature(logits, labels)
        w, b = w / temperature, b / temperature
        logits = logits / temperature
        emit({"phase": "lp", "kind": "info", "head_temperature": temperature})
    set_head(model, w, b)
    loss_history = [per_sample_ce(logits, labels)]
    timings["lp"] = _timed(emit, "lp", t0)
    from .metrics import accuracy, detection_metrics

    test_truth = None
    lp_test_accuracy = None
    if test is not None and len(test.paths):
        test_truth = test.clean_labels if test.clean_labels is not None else test.labels
        _, test_logits = forward_pass(model, test_imgs, rt, cancel=cancel, phase="test")
        lp_test_accuracy = accuracy(test_logits.argmax(axis=1), test_truth)
        emit({"phase": "lp", "kind": "info", "test_accuracy": lp_test_accuracy})

    # 6. Phase II ----------------------------------------------------------------------------
    gmm_log = []
    feats_post = feats_pre
    if config.method in ("turn", "ce-fft") and config.fft_epochs > 0:
        t0 = time.time()
        opt = make_fft_optimizer(model, config.fft_lr, config.fft_momentum, config.fft_weight_decay,
                                 config.fft_head_lr_mult)
        for epoch in range(1, config.fft_epochs + 1):
            if config.method == "turn":
                post, fits = clean_posterior(loss_history[-1], labels, k, per_class=config.gmm_per_class,
                                             seed=config.seed)
                train_idx, report = balanced_clean_set(
                    post, labels, k, config.tau, rng, losses=loss_history[-1], min_per_class=config.min_per_class,
                    empty_class_policy=config.empty_class_policy, fallback_k=config.fallback_k)
                gmm_log.append({"epoch": epoch, "tau": config.tau, "fits": [f.to_dict() for f in fits],
                                **_gmm_summary(fits[0])})
                per_class = dict(zip(classes, report["drawn_per_class"]))
                emit({"phase": "fft", "kind": "gmm", "epoch": epoch, "epochs": config.fft_epochs, "tau": config.tau,
                      "clean_per_class": per_class, "kept_per_class": dict(zip(classes, report["kept_per_class"])),
                      "n_train": report["n_train"], "fallback_classes": [classes[c] for c in report["fallback_classes"]]})
                if report["fallback_classes"]:
                    emit({"phase": "fft", "kind": "warning", "message":
                          f"no clean sample in class(es) {', '.join(classes[c] for c in report['fallback_classes'])}: "
                          f"kept their {config.fallback_k} lowest-loss samples"})
            else:
                train_idx = np.arange(len(labels))
                per_class = dict(zip(classes, np.bincount(labels, minlength=k).tolist()))
            mean_loss = fft_epoch(model, imgs, train_idx, labels, opt, rt, epoch=epoch, epochs=config.fft_epochs,
                                  seed=config.seed, augment_images=config.fft_augment,
                                  flip=config.data != "demo", freeze_bn_stats=config.bn_mode != "recalibrate",
                                  grad_clip=config.fft_grad_clip or None, progress=emit, cancel=cancel)
            if config.bn_mode == "recalibrate":
                recalibrate_bn(model, imgs, rt, seed=config.seed + epoch, cancel=cancel)
            feats_post, logits = forward_pass(model, imgs, rt, cancel=cancel, phase="fft-loss")
            loss_history.append(per_sample_ce(logits, labels))
            emit({"phase": "fft", "kind": "epoch", "epoch": epoch, "epochs": config.fft_epochs, "loss": mean_loss,
                  "tau": config.tau, "clean_per_class": per_class, "n_train": int(len(train_idx)),
                  "mean_loss_all": float(loss_history[-1].mean())})
        timings["fft"] = _timed(emit, "fft", t0)
        if config.save_features:
            writer.write_npy("features_post.npy", feats_post.astype(np.float16))

    # 7. scores -------------------------------------------------------------------------------
    t0 = time.time()
    final_loss = loss_history[-1]
    clean_prob, fits = clean_posterior(final_loss, labels, k, per_class=config.gmm_per_class, seed=config.seed)
    gmm_log.append({"epoch": len(loss_history) - 1, "final": True, "tau": config.tau,
                    "fits": [f.to_dict() for f in fits], **_gmm_summary(fits[0])})
    writer.write_json("gmm.json", gmm_log)
    probs = softmax(logits)
    writer.write_npy("probs.npy", probs.astype(np.float32))
    # Out-of-fold probabilities of Phase I's GCE linear probe, on the pretrained features and on
    # the fine-tuned ones: no model that saw a sample's own label scores it, so nothing memorised.
    cv_probs = [cross_val_linear_probs(f, labels, k, q=config.gce_q, epochs=config.lp_epochs, lr=config.lp_lr,
                                       batch_size=config.batch_size, min_steps_per_epoch=config.lp_min_steps,
                                       seed=config.seed, cancel=cancel)
                for f in ([feats_pre] if feats_post is feats_pre else [feats_pre, feats_post])]
    writer.write_npy("cv_probs.npy", np.stack(cv_probs).astype(np.float32))
    views = [feats_pre] if feats_post is feats_pre else [feats_pre, feats_post]
    sig = build_signals(labels, probs, clean_prob, np.stack(loss_history), views, cv_probs,
                        knn_k=config.knn_k, tau=config.tau)
    emit({"phase": "score", "kind": "info", "views": ["pretrained", "fine-tuned"][:len(views)],
          "trusted_views": [["pretrained", "fine-tuned"][i] for i in sig.extra["views"]]})
    knn_probs = sig.knn_probs
    result = score_and_flag(sig, config.score, config.flag_rule)
    # metrics.json must describe samples.csv exactly, so both use the 6 decimals written there
    result["suspicion"] = np.round(result["suspicion"], 6)
    mrg = margin(probs, labels)
    predicted = probs.argmax(axis=1)
    knn_agree = knn_probs[np.arange(len(labels)), labels]

    n_fft = len(loss_history) - 1
    header = SAMPLE_COLUMNS + [f"loss_fft_{e}" for e in range(1, n_fft + 1)]
    if truth is not None:
        header += ["clean_label", "is_noisy"]
    rows = []
    for i in range(len(labels)):
        row = [i, train.paths[i], classes[labels[i]], classes[predicted[i]], classes[result["suggested"][i]],
               f"{result['suspicion'][i]:.6f}", f"{clean_prob[i]:.6f}", int(result["flagged"][i]),
               f"{result['confidence'][i]:.6f}", f"{mrg[i]:.6f}", f"{knn_agree[i]:.4f}",
               f"{loss_history[0][i]:.6f}"] + [f"{loss_history[e][i]:.6f}" for e in range(1, n_fft + 1)]
        if truth is not None:
            row += [classes[truth[i]], int(truth[i] != labels[i])]
        rows.append(row)
    writer.write_csv("samples.csv", header, rows)

    metrics = {"method": config.method, "n_train": int(len(labels)), "n_flagged": int(result["flagged"].sum()),
               "n_classes": k, "timings": timings}
    if truth is not None:
        is_noisy = truth != labels
        metrics["detection"] = detection_metrics(is_noisy, result["flagged"], result["suspicion"])
        metrics["detection_paper_rule"] = detection_metrics(is_noisy, clean_prob < config.tau, 1 - clean_prob)
        metrics["noise_rate"] = float(is_noisy.mean())
        if is_noisy.any():
            metrics["suggestion_accuracy_on_errors"] = float(np.mean(result["suggested"][is_noisy] == truth[is_noisy]))
        metrics["train_accuracy_vs_truth"] = accuracy(predicted, truth)
    if test_truth is not None:
        if len(loss_history) > 1:  # the model changed since LP
            _, test_logits = forward_pass(model, test_imgs, rt, cancel=cancel, phase="test")
        metrics["test_accuracy"] = accuracy(test_logits.argmax(axis=1), test_truth)
        metrics["test_accuracy_lp"] = lp_test_accuracy
        metrics["n_test"] = int(len(test.paths))
    timings["score"] = _timed(emit, "score", t0)
    metrics["timings"] = timings
    writer.write_json("metrics.json", metrics)

    from safetensors.torch import save_file

    sd = {k_: v.detach().cpu().contiguous() for k_, v in model.state_dict().items()}
    tmp = writer.dir / ".model.safetensors.tmp"
    save_file(sd, str(tmp), metadata={"model": config.model, "classes": json.dumps(classes)})
    os.replace(tmp, writer.dir / "model.safetensors")
    emit({"phase": "done", "kind": "timing", "seconds": float(sum(timings.values()))})
    writer.set_status("finished", method=config.method, error=None)


def _gmm_summary(fit) -> dict:
    return {"means": fit.means, "variances": fit.variances, "weights": fit.weights,
            "clean_component": fit.clean_component, "lo": fit.lo, "hi": fit.hi}
