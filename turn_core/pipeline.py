"""``run(config, progress, cancel)``: TURN (or a baseline) end to end, written to a run directory.

A run is a sequence of phase functions (``PHASES``) over one ``RunState``; each phase reads what
the earlier ones put there and adds its own, so a test, a resumed run or another rank can enter
at any phase with a state that holds what that phase needs. Phases and what they add / write:
  1. data      — the dataset (+ optional synthetic noise), split train / test
  2. backbone  — timm model + weights (backbones.py), image size, normalisation, device
  3. cache     — decode + resize every image once into a uint8 memmap (kept on disk: unreadable
                 files are left out by ``rows``, never by copying); when it would not fit on the
                 disk, the files are decoded in the loader's workers instead (a warning event);
                 thumbs.npy, skipped.csv, the full config.json
  4. features  — pretrained features of every training image (frozen θ: computed once)
  5. lp        — Phase I: linear head with GCE (TURN, GCE-LP) or CE (CE-LP, CE-FFT) on cached features
  5b. provisional — (TURN, CE-FFT) the pretrained view's ensemble (out-of-fold GCE probe + k-NN
                 vote): a provisional samples.csv and neighbours_pre.npy to review while FFT
                 runs; status "provisional"
  6. fft       — Phase II (TURN): per epoch, loss pass → GMM → τ → class-balanced clean set →
                 one epoch of full fine-tuning with CE. CE-FFT: the same epochs on all samples.
  7. score     — final GMM, out-of-fold probabilities, suspicion, flags, suggestions (scores.py),
                 metrics
  8. write     — gmm.json, probs.npy, cv_probs.npy, samples.csv, metrics.json, model.safetensors,
                 every view's neighbours (searched once by the scoring step; through ``RunWriter``)
The same function serves the CLI, the app's background job and the benchmark.

Under torchrun every rank runs the phases (turn_core.distributed): local rank 0 runs data,
backbone and cache first; the passes are sharded and gathered; rank 0 draws each clean set and
broadcasts it; only rank 0 writes the run directory, the progress, scores and writes results.
"""
from __future__ import annotations

import logging
import os
import platform
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import RunConfig, cache_dir
from .distributed import World, world_from_env
from .errors import Cancelled, InputError
from .progress import CancelToken, check
from .rundir import RunWriter

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
    from . import noise
    from .demo import load_demo
    from .sources import load_source

    columns = {"image_column": config.image_column, "label_column": config.label_column,
               "truth_column": config.truth_column}

    if config.data == "demo":
        ds = load_demo(n=config.demo_n, noise=config.demo_noise, rate=config.demo_noise_rate,
                            seed=config.seed, asym_map=config.asym_map)
    else:
        ds = load_source(config.data, **columns)
    report = {}
    if config.inject_noise:
        base = ds.true_labels if ds.true_labels is not None else ds.labels
        feats = None
        if config.inject_noise == "instance":
            from .images import build_image_cache, cache_key

            # 16-px pixels as instance features; keyed on the files only, like the run's cache
            imgs, _ = build_image_cache(ds.files, 16, cache_dir(), key=cache_key(ds.files) + "-noise")
            feats = np.asarray(imgs, dtype=np.float32).reshape(len(imgs), -1)
        noisy, realised = noise.inject_noise(config.inject_noise, base, len(ds.classes), config.inject_noise_rate,
                                             config.seed, features=feats, mapping=config.asym_map, classes=ds.classes)
        ds.true_labels = np.asarray(base).copy()
        ds.labels = noisy
        report = {"kind": config.inject_noise, "rate": config.inject_noise_rate, "realised_rate": realised}
    train = ds.subset(ds.splits == "train")
    test = ds.subset(ds.splits != "train") if np.any(ds.splits != "train") else None
    if config.test_data:
        test = load_source(config.test_data, classes=ds.classes, **columns)
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


@dataclass
class RunState:
    """What one run knows so far. Each phase reads the fields earlier phases set and sets its own.

    Training sample i is ``train.paths[i]``; its image is ``images[rows[i]]``: ``images`` is the
    (M, S, S, 3) uint8 cache of every training file as it is on disk (a memmap) and ``rows``
    (N,) int64 leaves out the files that could not be decoded. ``test_images`` / ``test_rows``
    likewise for the test set. ``losses`` holds the per-sample CE (N,) after LP, then after each
    FFT epoch.
    """

    config: RunConfig
    writer: RunWriter
    emit: Callable[[dict], None]
    cancel: CancelToken | None = None
    rng: np.random.Generator | None = None     # the clean-set draws (seeded by run_phases' caller)
    world: World = field(default_factory=World)   # this process among torchrun's ranks
    timings: dict[str, float] = field(default_factory=dict)
    # data
    train: Any = None                          # data.Dataset
    test: Any = None                           # data.Dataset | None
    noise_report: dict = field(default_factory=dict)
    # backbone
    model: Any = None
    rt: Any = None                             # train.Runtime
    size: int = 0
    mean: tuple = ()
    std: tuple = ()
    # cache
    images: np.ndarray | None = None           # the memmap, or images.DecodedImages without a cache
    rows: np.ndarray | None = None
    test_images: np.ndarray | None = None
    test_rows: np.ndarray | None = None
    skipped: list = field(default_factory=list)          # (path, reason)
    # features, lp, fft
    feats_pre: np.ndarray | None = None        # (N, D) f32
    feats_post: np.ndarray | None = None       # (N, D) f32; feats_pre itself when there is no FFT
    logits: np.ndarray | None = None           # (N, K) f32 of the current model
    losses: list = field(default_factory=list)
    gmm_log: list = field(default_factory=list)
    test_logits: np.ndarray | None = None
    lp_test_accuracy: float | None = None
    # score
    clean_prob: np.ndarray | None = None
    probs: np.ndarray | None = None
    cv_probs: list = field(default_factory=list)
    cv_pre: np.ndarray | None = None           # (N, K) out-of-fold probe on feats_pre (provisional → score)
    neighbours: list = field(default_factory=list)   # per view (indices (N, k), sims (N, k)), pretrained first
    ensemble_probs: np.ndarray | None = None   # (N, K): what the suspicion and suggestions come from
    knn_agreement: np.ndarray | None = None
    result: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def k(self) -> int:
        return len(self.train.classes)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.train.labels, dtype=np.int64)

    @property
    def true_labels(self) -> np.ndarray | None:
        t = self.train.true_labels
        return None if t is None else np.asarray(t, dtype=np.int64)

    @property
    def has_test(self) -> bool:
        return self.test is not None and len(self.test.paths) > 0


def run(config: RunConfig, progress: Callable[[dict], None] | None = None,
        cancel: CancelToken | None = None) -> Path:
    """Run ``config.method`` on ``config.data`` into ``config.out``; return the run directory.

    Raises ``InputError`` for bad input, ``Cancelled`` when ``cancel`` is set; either way (and on
    any other exception) status.json records the outcome and run.log the traceback. A setting
    that names no registry entry (score, flag rule, weights, device) fails before anything is
    loaded or written.
    """
    from .settings import check_names

    check_names(config)
    out = Path(config.out)
    world = world_from_env()
    if not world.main:   # only rank 0 writes the run directory and reports progress
        return _run_other_rank(config, world, cancel)
    _refuse_live_run(out)
    writer = RunWriter(out)
    writer.reset()
    emit = _Emitter(writer, progress)
    writer.set_status("running", method=config.method, error=None)
    # The settings go to disk first, so a run killed in any phase can be restarted as it was;
    # the full config.json (classes, dataset, versions) replaces this after the image cache.
    writer.write_json("config.json", {"format": 1, "settings": config.to_dict(), "classes": []})
    try:
        _run_ranked(new_state(config, writer, emit, cancel, world))
        writer.set_status("finished", method=config.method, error=None)
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
        _teardown(world)
    return out


class _NoWriter:
    """RunWriter's stand-in on the ranks other than 0: every write does nothing."""

    def event(self, phase: str, kind: str, **fields: Any) -> dict:
        return {"t": time.time(), "phase": phase, "kind": kind, **fields}

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *a, **k: None


def _run_other_rank(config: RunConfig, world: World, cancel: CancelToken | None) -> Path:
    writer = _NoWriter()
    try:
        _run_ranked(new_state(config, writer, _Emitter(writer, None), cancel, world))
    finally:
        _teardown(world)
    return Path(config.out)


def _run_ranked(state: RunState) -> None:
    """All phases; under torchrun, joins the process group first and lets local rank 0 run
    data, backbone and cache before the other ranks (they then find its demo files and cache)."""
    from .distributed import init, local_first
    from .train import pick_device

    if state.world.size == 1:
        run_phases(state)
        return
    init(state.world, pick_device(state.config.device, state.world))
    with local_first(state.world):
        run_phases(state, stop="cache")
    run_phases(state, start="features")


def _teardown(world: World) -> None:
    if world.size > 1:
        from .distributed import teardown

        teardown()


def _refuse_live_run(out: Path) -> None:
    """InputError when ``out`` belongs to a run still going in another process.

    A "running" status with this process's pid is not refused: the job registry writes it just
    before it starts the run's thread."""
    if not (out / "status.json").exists():
        return
    from .rundir import read_status

    st = read_status(out)   # "running" only while the recorded pid is alive
    ours = st.get("pid") == os.getpid() and st.get("host") in (None, socket.gethostname())
    if st["state"] == "running" and not ours:
        raise InputError(f"run directory {out} belongs to a run that is still going (pid {st.get('pid')})")


def new_state(config: RunConfig, writer: RunWriter, emit: Callable[[dict], None],
              cancel: CancelToken | None = None, world: World | None = None) -> RunState:
    """A fresh state for ``config`` (on ``world``, default one process); seeds torch's global
    generator and the clean-set draws."""
    import torch

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    return RunState(config, writer, emit, cancel, rng=np.random.default_rng(config.seed), world=world or World())


def run_phases(state: RunState, start: str = "data", stop: str | None = None) -> RunState:
    """Run the phases of ``PHASES`` from ``start`` through ``stop`` (default: the last) on
    ``state``; the cancel token is checked between phases. Returns the state."""
    names = [name for name, _ in PHASES]
    for name in (start, stop or names[-1]):
        if name not in names:
            raise ValueError(f"phase {name!r} is not one of {', '.join(names)}")
    first, last = names.index(start), names.index(stop or names[-1])
    for _, phase in PHASES[first:last + 1]:
        check(state.cancel)
        phase(state)
    return state


def _log_exception(out: Path) -> None:
    with open(out / "run.log", "a", encoding="utf-8") as f:
        f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + traceback.format_exc() + "\n")


def _timed(state: RunState, phase: str, t0: float) -> None:
    dt = time.time() - t0
    state.emit({"phase": phase, "kind": "timing", "seconds": dt})
    state.timings[phase] = dt


# --------------------------------------------------------------------------------- phases
def phase_data(state: RunState) -> None:
    """Sets train, test, noise_report."""
    t0 = time.time()
    state.emit({"phase": "data", "kind": "start"})
    state.train, state.test, state.noise_report = load_inputs(state.config)
    _timed(state, "data", t0)


def phase_backbone(state: RunState) -> None:
    """Sets model (on its device, BN folded when asked), rt, size, mean, std."""
    import torch

    from .backbones import create_backbone
    from .train import fold_batchnorm, make_runtime, pick_device

    config = state.config
    t0 = time.time()
    model, data_cfg = create_backbone(config.model, num_classes=state.k, weights=config.weights,
                                      checkpoint=config.checkpoint)
    state.size = config.image_size or (DEMO_IMAGE_SIZE if config.data == "demo" else int(data_cfg["input_size"][-1]))
    state.mean = tuple(config.mean or data_cfg["mean"])
    state.std = tuple(config.std or data_cfg["std"])
    device = pick_device(config.device, state.world)
    if config.bn_mode == "fold":
        fold_batchnorm(model)   # same features; FFT without tiny-variance amplification (config.py)
    # channels_last on every device: measured 1.5x faster training on the CPU (BENCHMARKS.md)
    model.to(device, memory_format=torch.channels_last)
    if config.compile:
        model.forward_features = torch.compile(model.forward_features)
    state.model = model
    state.rt = make_runtime(device, state.mean, state.std, config.batch_size, precision=config.precision,
                            workers=config.loader_workers, world=state.world)
    _timed(state, "backbone", t0)


def _decode_instead(state: RunState) -> bool:
    """True when the image cache the run still needs would not fit on the cache's disk: the
    passes then decode the files in the loader's workers (a warning event says so)."""
    from .images import cache_fits, cache_ready

    root = cache_dir() / "images"
    sets = [ds for ds in (state.train, state.test) if ds is not None]
    missing = sum(len(ds.files) for ds in sets if not cache_ready(ds.files, state.size, root))
    if missing == 0:
        return False
    fits, need, free = cache_fits(missing, state.size, root)
    if not fits:
        state.emit({"phase": "cache", "kind": "warning", "fallback": "decode", "needed_bytes": need,
                    "free_bytes": free, "message":
                    f"the image cache would need {need / 1e9:.2f} GB but its disk ({root}) has "
                    f"{free / 1e9:.2f} GB free: every pass decodes the images in the loader's "
                    "workers instead (slower)"})
    return not fits


def _cached(state: RunState, ds, decode: bool, progress=None, thumbs_to: Path | None = None):
    """(images, rows of the decodable files, ``ds`` without the others, their skips).
    ``images`` is the on-disk memmap, or with ``decode`` ``images.DecodedImages`` (found
    unreadable by one scan, which also writes the thumbnails of the kept rows to ``thumbs_to``
    when given)."""
    from .images import DecodedImages, build_image_cache, scan_images

    if decode:
        images = DecodedImages(ds.files, state.size)
        _, bad = scan_images(ds.files, state.size, state.config.thumb_size if thumbs_to else None, out=thumbs_to,
                             progress=progress, cancel=state.cancel)
    else:
        images, bad = build_image_cache(ds.files, state.size, cache_dir() / "images", progress=progress,
                                        cancel=state.cancel)
    skipped = [(ds.paths[i], reason) for i, reason in sorted(bad.items())]
    rows = np.arange(len(ds.files), dtype=np.int64)
    if bad:
        # Left out by index: the cache stays on disk however many files are unreadable.
        rows = np.setdiff1d(rows, np.fromiter(bad.keys(), np.int64))
        ds = ds.subset(rows)
    return images, rows, ds, skipped


def phase_cache(state: RunState) -> None:
    """Sets images, rows, test_images, test_rows, skipped (the train / test datasets lose their
    undecodable rows); writes skipped.csv, thumbs.npy and the full config.json. Thumbnails are
    written chunk by chunk (rank 0 only): from the cache once it is built, or by the decoding
    scan itself when there is no cache."""
    from .images import write_thumbnails

    config, train = state.config, state.train
    t0 = time.time()
    state.emit({"phase": "cache", "kind": "start", "n": len(train.files)})
    decode = _decode_instead(state)
    thumbs = Path(state.writer.dir) / "thumbs.npy" if state.world.main else None
    state.skipped = list(train.skipped)
    state.images, state.rows, state.train, bad = _cached(state, train, decode, progress=state.emit,
                                                         thumbs_to=thumbs if decode else None)
    state.skipped += bad
    if state.test is not None:
        state.test_images, state.test_rows, state.test, bad = _cached(state, state.test, decode)
        state.skipped += bad + list(state.test.skipped)
    state.writer.write_skipped(state.skipped)
    counts = np.bincount(state.labels, minlength=state.k)
    too_small = [c for c, n in zip(state.classes, counts) if n < 2]
    if too_small:
        raise InputError(f"after skipping unreadable files, class(es) {', '.join(too_small)} have fewer than 2 images")
    if thumbs is not None and not decode:
        write_thumbnails(thumbs, state.images, config.thumb_size, state.rows)
    state.writer.write_json("config.json", _full_config(state))
    _timed(state, "cache", t0)


def _full_config(state: RunState) -> dict:
    from .train import precision_name

    config, train, test = state.config, state.train, state.test
    return {
        "format": 1, "settings": config.to_dict(), "classes": state.classes, "versions": _versions(),
        "resolved": {"image_size": state.size, "mean": state.mean, "std": state.std,
                     "device": str(state.rt.device), "world_size": state.world.size,
                     "precision": {"passes": precision_name(state.rt.infer_dtype),
                                   "training": precision_name(state.rt.train_dtype)},
                     "images": "decoded" if getattr(state.images, "decodes", False) else "cache"},
        "dataset": {"source": train.source, "root": str(train.root), "kind": train.kind,
                    "fingerprint": train.fingerprint(), "n_train": len(train.paths),
                    "n_test": 0 if test is None else len(test.paths), "n_skipped": len(state.skipped),
                    "noise": state.noise_report, **_hf_record(train)}}


def _hf_record(train) -> dict:
    """{"hf": the dataset's `datasets` fingerprint and columns} for a Hugging Face dataset."""
    from .hf import hf_record

    record = hf_record(train)
    return {"hf": record} if record else {}


def _pass(state: RunState, images, rows: np.ndarray, phase: str, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """``train.forward_pass`` over ``images[rows]``: (features (N, D), logits (N, K)) f32.

    Under torchrun each rank computes its global batches (``distributed.pass_positions``) and
    every rank gets all N rows back in sample order."""
    from .distributed import gather_pass, pass_positions
    from .train import forward_pass

    world, bs = state.world, state.rt.batch_size
    mine = rows if world.size == 1 else rows[pass_positions(len(rows), bs, world)]
    feats, logits = forward_pass(state.model, images, state.rt, rows=mine, progress=progress,
                                 cancel=state.cancel, phase=phase)
    return gather_pass(feats, len(rows), bs, world), gather_pass(logits, len(rows), bs, world)


def phase_features(state: RunState) -> None:
    """Sets feats_pre (θ is frozen during LP: one pass serves every LP epoch)."""
    t0 = time.time()
    state.feats_pre, _ = _pass(state, state.images, state.rows, "features", progress=state.emit)
    state.feats_post = state.feats_pre
    if state.config.save_features:
        _write_features(state, "features_pre.npy", state.feats_pre)
    _timed(state, "features", t0)


def _write_features(state: RunState, name: str, feats: np.ndarray) -> None:
    """``feats`` (N, D) float32 to ``name`` as float16, cast chunk by chunk (no float16 copy of
    the whole); readers map the file lazily (``Run.features``)."""
    from .rundir import row_chunks

    state.writer.write_npy_chunks(name, feats.shape, np.float16, row_chunks(feats))


def phase_lp(state: RunState) -> None:
    """Phase I. Sets the model's head, logits, losses[0]; test_logits and lp_test_accuracy."""
    from .metrics import accuracy
    from .train import fit_temperature, linear_logits, per_sample_ce, set_head, train_linear_head

    config, labels, device = state.config, state.labels, state.rt.device
    t0 = time.time()
    lp_loss = "gce" if config.method in ("turn", "gce-lp") else "ce"
    # Every rank fits the same head from the same gathered features; DDP later copies rank 0's.
    w, b, _ = train_linear_head(state.feats_pre, labels, state.k, loss=lp_loss, q=config.gce_q,
                                epochs=config.lp_epochs, lr=config.lp_lr, weight_decay=config.lp_weight_decay,
                                batch_size=config.batch_size, min_steps_per_epoch=config.lp_min_steps,
                                seed=config.seed, progress=state.emit, cancel=state.cancel, device=device)
    logits = linear_logits(state.feats_pre, w, b, device)
    if config.method == "turn" and config.fft_epochs > 0 and config.calibrate_head:
        temperature = fit_temperature(logits, labels, device)
        w, b = w / temperature, b / temperature
        logits = logits / temperature
        state.emit({"phase": "lp", "kind": "info", "head_temperature": temperature})
    set_head(state.model, w, b)
    state.logits = logits
    state.losses = [per_sample_ce(logits, labels)]
    _timed(state, "lp", t0)
    if state.has_test:
        _, state.test_logits = _pass(state, state.test_images, state.test_rows, "test")
        state.lp_test_accuracy = accuracy(state.test_logits.argmax(axis=1), _test_truth(state))
        state.emit({"phase": "lp", "kind": "info", "test_accuracy": state.lp_test_accuracy})


def phase_provisional(state: RunState) -> None:
    """After Phase I (TURN, CE-FFT): the provisional samples.csv, so review starts during FFT.

    The pretrained view's ensemble alone (its out-of-fold GCE probe + k-NN vote; no final model
    yet), flagged by the run's score and flag rule, with Phase I's head as the model and the GMM
    on Phase I's losses. Sets cv_pre, which the score phase reuses (the final ensemble needs the
    same probe). Written whole, then status.json says "provisional": true. The global torch
    generator is left as it was (the probes' heads draw from it), so FFT sees the same random
    numbers as without this phase and the same seeds still give the same results.
    """
    import torch

    from .scores import margin, score_step
    from .selection import clean_posterior
    from .train import softmax

    config, labels = state.config, state.labels
    if config.method not in ("turn", "ce-fft") or config.fft_epochs <= 0 or not state.world.main:
        return  # the final table follows at once (or another rank writes it): nothing to do here
    t0 = time.time()
    state.emit({"phase": "provisional", "kind": "start"})
    clean_prob, _ = clean_posterior(state.losses[0], labels, state.k, per_class=config.gmm_per_class,
                                    seed=config.seed)
    probs = softmax(state.logits)
    with torch.random.fork_rng(devices=[]):
        sig, result, cv = score_step(labels, probs, clean_prob, np.stack(state.losses[:1]), [state.feats_pre],
                                     config, cancel=state.cancel, device=state.rt.device)
    state.cv_pre = cv[0]
    state.neighbours = sig.extra["neighbours"]
    _write_neighbours(state)   # the Review page's neighbour panel reads them during FFT
    suspicion = result["suspicion"]
    state.writer.write_samples(
        paths=state.train.paths, classes=state.classes, given=labels, predicted=probs.argmax(axis=1),
        suggested=result["suggested"], suspicion=suspicion, clean_prob=clean_prob, flagged=result["flagged"],
        confidence=result["confidence"], margin=margin(probs, labels),
        knn_agreement=sig.knn_probs[np.arange(len(labels)), labels], losses=np.stack(state.losses[:1]),
        true=state.true_labels, provisional=True)
    info = {"phase": "provisional", "kind": "info", "n_flagged": int(result["flagged"].sum())}
    if state.true_labels is not None:
        from .metrics import detection_metrics

        info["detection"] = detection_metrics(state.true_labels != labels, result["flagged"], suspicion)
    state.emit(info)
    _timed(state, "provisional", t0)


def _write_neighbours(state: RunState) -> None:
    """neighbours_<view>.npy (int32) and neighbour_sims_<view>.npy (float16) of every view in
    state.neighbours (pretrained first), the compact form the pages and the learning queue read."""
    from .rundir import Run

    for which, (idx, sims) in zip(("pre", "post"), state.neighbours):
        idx_name, sims_name = Run.neighbour_files(which)
        state.writer.write_npy(idx_name, np.asarray(idx, dtype=np.int32))
        state.writer.write_npy(sims_name, np.asarray(sims, dtype=np.float16))


def _test_truth(state: RunState) -> np.ndarray:
    test = state.test
    return test.true_labels if test.true_labels is not None else test.labels


def phase_fft(state: RunState) -> None:
    """Phase II (TURN, CE-FFT): fine-tunes the model; appends to losses and gmm_log, sets
    feats_post and logits. Does nothing for the LP-only methods or zero FFT epochs."""
    from .distributed import broadcast_array, wrap_model
    from .train import fft_epoch, make_fft_optimizer, per_sample_ce, recalibrate_bn

    config, labels, model, world = state.config, state.labels, state.model, state.world
    if config.method not in ("turn", "ce-fft") or config.fft_epochs <= 0:
        return
    t0 = time.time()
    net = wrap_model(model, world, state.rt.device)
    opt = make_fft_optimizer(model, config.fft_lr, config.fft_momentum, config.fft_weight_decay,
                             config.fft_head_lr_mult)
    for epoch in range(1, config.fft_epochs + 1):
        if config.method == "turn":   # rank 0 fits the GMM and draws; every rank trains on its draw
            train_idx, per_class = _clean_set(state, epoch) if world.main else (None, {})
            train_idx = broadcast_array(train_idx, world)
        else:
            train_idx = np.arange(len(labels))
            per_class = dict(zip(state.classes, np.bincount(labels, minlength=state.k).tolist()))
        mean_loss = fft_epoch(model, state.images, train_idx, labels, opt, state.rt, epoch=epoch,
                              epochs=config.fft_epochs, seed=config.seed, rows=state.rows,
                              augment_images=config.fft_augment, flip=config.data != "demo",
                              freeze_bn_stats=config.bn_mode != "recalibrate",
                              grad_clip=config.fft_grad_clip or None, progress=state.emit, cancel=state.cancel,
                              net=net)
        if config.bn_mode == "recalibrate":
            recalibrate_bn(model, state.images, state.rt, rows=state.rows, seed=config.seed + epoch,
                           cancel=state.cancel)
        state.feats_post, state.logits = _pass(state, state.images, state.rows, "fft-loss")
        state.losses.append(per_sample_ce(state.logits, labels))
        state.emit({"phase": "fft", "kind": "epoch", "epoch": epoch, "epochs": config.fft_epochs, "loss": mean_loss,
                    "tau": config.tau, "clean_per_class": per_class, "n_train": len(train_idx),
                    "mean_loss_all": float(state.losses[-1].mean())})
    if state.has_test:   # the fine-tuned model on the test set, sharded like every pass
        _, state.test_logits = _pass(state, state.test_images, state.test_rows, "test")
    _timed(state, "fft", t0)
    if config.save_features:
        _write_features(state, "features_post.npy", state.feats_post)


def _clean_set(state: RunState, epoch: int) -> tuple[np.ndarray, dict]:
    """TURN's per-epoch selection: GMM on the last losses → τ → class-balanced clean set.

    Returns (sample indices to train on, class name → samples drawn) and logs the fit."""
    from .selection import balanced_clean_set, clean_posterior

    config, labels, classes = state.config, state.labels, state.classes
    post, fits = clean_posterior(state.losses[-1], labels, state.k, per_class=config.gmm_per_class,
                                 seed=config.seed)
    train_idx, report = balanced_clean_set(
        post, labels, state.k, config.tau, state.rng, losses=state.losses[-1], min_per_class=config.min_per_class,
        empty_class_policy=config.empty_class_policy, fallback_k=config.fallback_k)
    state.gmm_log.append({"epoch": epoch, "tau": config.tau, "fits": [f.to_dict() for f in fits],
                          **_gmm_summary(fits[0])})
    per_class = dict(zip(classes, report["drawn_per_class"]))
    fallback = [classes[c] for c in report["fallback_classes"]]
    state.emit({"phase": "fft", "kind": "gmm", "epoch": epoch, "epochs": config.fft_epochs, "tau": config.tau,
                "clean_per_class": per_class, "kept_per_class": dict(zip(classes, report["kept_per_class"])),
                "n_train": report["n_train"], "fallback_classes": fallback,
                "clean_set_digest": _digest(train_idx)})
    if fallback:
        state.emit({"phase": "fft", "kind": "warning", "message":
                    f"no clean sample in class(es) {', '.join(fallback)}: "
                    f"kept their {config.fallback_k} lowest-loss samples"})
    return train_idx, per_class


def _digest(indices: np.ndarray) -> str:
    """16 hex digits naming a set of sample indices (the events record each clean set by it)."""
    import hashlib

    return hashlib.sha256(np.sort(np.asarray(indices, dtype=np.int64)).tobytes()).hexdigest()[:16]


def phase_score(state: RunState) -> None:
    """Sets clean_prob (final GMM), probs, cv_probs, knn_agreement, result (suspicion, flagged,
    suggested, confidence) and metrics. Rank 0 only (under torchrun the others are done)."""
    from .scores import score_step, suggestion_probs
    from .selection import clean_posterior
    from .train import softmax

    if not state.world.main:
        return
    config, labels = state.config, state.labels
    t0 = time.time()
    state.clean_prob, fits = clean_posterior(state.losses[-1], labels, state.k, per_class=config.gmm_per_class,
                                             seed=config.seed)
    state.gmm_log.append({"epoch": len(state.losses) - 1, "final": True, "tau": config.tau,
                          "fits": [f.to_dict() for f in fits], **_gmm_summary(fits[0])})
    state.probs = softmax(state.logits)
    # Out-of-fold probabilities of Phase I's GCE linear probe, on the pretrained features and on
    # the fine-tuned ones: no model that saw a sample's own label scores it, so nothing memorised.
    views = [state.feats_pre] if state.feats_post is state.feats_pre else [state.feats_pre, state.feats_post]
    sig, state.result, state.cv_probs = score_step(
        labels, state.probs, state.clean_prob, np.stack(state.losses), views, config,
        cv_probs=None if state.cv_pre is None else [state.cv_pre],  # the provisional table computed it
        neighbours=state.neighbours[:1] or None,  # the pretrained view's too: searched once per run
        cancel=state.cancel, device=state.rt.device)
    state.neighbours = sig.extra["neighbours"]
    names = ["pretrained", "fine-tuned"]
    state.emit({"phase": "score", "kind": "info", "views": names[:len(views)],
                "trusted_views": [names[i] for i in sig.extra["views"]]})
    state.knn_agreement = sig.knn_probs[np.arange(len(labels)), labels]
    # The class probabilities the suspicion and suggestions come from (interop's pred_probs).
    state.ensemble_probs = suggestion_probs(sig)
    state.metrics = _metrics(state)
    _timed(state, "score", t0)


def _metrics(state: RunState) -> dict:
    """metrics.json's content: counts, detection quality against the true labels (when known),
    test accuracy after LP and at the end (when there is a test set)."""
    from .metrics import accuracy, detection_metrics

    config, labels, truth, result = state.config, state.labels, state.true_labels, state.result
    predicted = state.probs.argmax(axis=1)
    metrics = {"method": config.method, "n_train": len(labels), "n_flagged": int(result["flagged"].sum()),
               "n_classes": state.k, "timings": state.timings}
    if truth is not None:
        is_noisy = truth != labels
        metrics["detection"] = detection_metrics(is_noisy, result["flagged"], result["suspicion"])
        metrics["detection_paper_rule"] = detection_metrics(is_noisy, state.clean_prob < config.tau,
                                                            1 - state.clean_prob)
        metrics["noise_rate"] = float(is_noisy.mean())
        if is_noisy.any():
            metrics["suggestion_accuracy_on_errors"] = float(np.mean(result["suggested"][is_noisy] == truth[is_noisy]))
        metrics["train_accuracy_vs_truth"] = accuracy(predicted, truth)
    if state.has_test:   # test_logits: of the final model (phase_fft passes the test set again)
        metrics["test_accuracy"] = accuracy(state.test_logits.argmax(axis=1), _test_truth(state))
        metrics["test_accuracy_lp"] = state.lp_test_accuracy
        metrics["n_test"] = len(state.test.paths)
    return metrics


def phase_write(state: RunState) -> None:
    """Writes gmm.json, probs.npy, cv_probs.npy, ensemble_probs.npy, neighbours_*.npy,
    neighbour_sims_*.npy, samples.csv, metrics.json, model.safetensors. Rank 0 only."""
    from .scores import margin

    if not state.world.main:
        return
    w, result, labels = state.writer, state.result, state.labels
    w.write_json("gmm.json", state.gmm_log)
    w.write_npy("probs.npy", state.probs.astype(np.float32))
    w.write_npy("cv_probs.npy", np.stack(state.cv_probs).astype(np.float32))
    w.write_npy("ensemble_probs.npy", state.ensemble_probs.astype(np.float32))
    _write_neighbours(state)
    w.write_samples(paths=state.train.paths, classes=state.classes, given=labels,
                    predicted=state.probs.argmax(axis=1), suggested=result["suggested"],
                    suspicion=result["suspicion"], clean_prob=state.clean_prob, flagged=result["flagged"],
                    confidence=result["confidence"], margin=margin(state.probs, labels),
                    knn_agreement=state.knn_agreement, losses=np.stack(state.losses), true=state.true_labels)
    w.write_metrics(dict(state.metrics, timings=state.timings))
    w.write_model(state.model, model_name=state.config.model, classes=state.classes)
    state.emit({"phase": "done", "kind": "timing", "seconds": float(sum(state.timings.values()))})


# The run, in order: (name, function of the state). ``run_phases`` walks it.
PHASES: tuple[tuple[str, Callable[[RunState], None]], ...] = (
    ("data", phase_data), ("backbone", phase_backbone), ("cache", phase_cache), ("features", phase_features),
    ("lp", phase_lp), ("provisional", phase_provisional), ("fft", phase_fft), ("score", phase_score),
    ("write", phase_write))


def _gmm_summary(fit) -> dict:
    return {"means": fit.means, "variances": fit.variances, "weights": fit.weights,
            "clean_component": fit.clean_component, "lo": fit.lo, "hi": fit.hi}
