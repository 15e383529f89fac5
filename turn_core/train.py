"""Torch building blocks of TURN: batches from the uint8 cache, feature/logit passes, linear
probing on cached features, and one full fine-tuning epoch.

Images come from the (M, S, S, 3) uint8 cache built once per run (turn_core.images), so no epoch
re-decodes a file. The passes take the cache as it is on disk (a memmap) plus ``rows``, the cache
row of each sample, and read one batch of rows at a time: leaving out unreadable files never
copies the cache into memory. Every loop checks the cancellation token between batches.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .distributed import World
from .errors import InputError
from .loader import RowLoader, default_workers, split_batches
from .losses import gce_loss
from .progress import CancelToken, check

REPORT_EVERY_S = 0.5   # progress reports (the only host syncs of a pass) at most this often


# Where bf16 autocast is used, by ``precision`` setting: name → function(device) → (autocast dtype
# of the feature/loss passes, of the training steps); None = full precision.
def _auto_precision(device: torch.device) -> tuple[torch.dtype | None, torch.dtype | None]:
    if device.type == "cuda":
        return torch.bfloat16, torch.bfloat16
    # Measured on the project's CPU (AVX-512 bf16, bench/throughput.py): bf16 autocast speeds the
    # inference passes up but slows training down (116 vs 245 img/s), so training stays fp32.
    return (torch.bfloat16 if cpu_has_bf16() else None), None


PRECISIONS: dict[str, Callable[[torch.device], tuple]] = {
    "auto": _auto_precision,
    "fp32": lambda device: (None, None),
    "bf16": lambda device: (torch.bfloat16, torch.bfloat16),
}


def cpu_has_bf16() -> bool:
    """True when this CPU has native bf16 instructions (AVX-512 bf16 or AMX)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


@dataclass
class Runtime:
    """Where and how tensors are computed.

    infer_dtype / train_dtype: the autocast dtype of the passes / the training steps (None: full
    precision). channels_last: the layout of the model and of every batch. workers: the loader's
    worker processes (None: ``loader.default_workers``). world: this process's rank among the
    run's processes (turn_core.distributed)."""

    device: torch.device
    mean: torch.Tensor        # (1, 3, 1, 1) on device
    std: torch.Tensor
    batch_size: int = 128
    infer_dtype: torch.dtype | None = None
    train_dtype: torch.dtype | None = None
    channels_last: bool = True
    workers: int | None = None
    world: World = field(default_factory=World)
    _loaders: dict = field(default_factory=dict, repr=False)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self, train: bool = False):
        dtype = self.train_dtype if train else self.infer_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def loader(self, images) -> RowLoader:
        """The run's one loader over ``images`` (made on first use, then reused: persistent workers)."""
        key = id(images)
        if key not in self._loaders:
            decoding = bool(getattr(images, "decodes", False))
            workers = default_workers(self.device.type, decoding) if self.workers is None else self.workers
            self._loaders[key] = RowLoader(images, workers=workers, pin=self.cuda)
        return self._loaders[key]


def pick_device(name: str = "auto", world: World | None = None) -> torch.device:
    """The torch device for the ``device`` setting; under torchrun, "auto" / "cuda" on a GPU
    machine is the rank's own GPU (``LOCAL_RANK``)."""
    from .errors import InputError

    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but no CUDA GPU is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and world is not None and world.size > 1:
        if world.local_rank >= torch.cuda.device_count():
            raise InputError(f"torchrun's LOCAL_RANK {world.local_rank} has no GPU of its own (this machine "
                             f"has {torch.cuda.device_count()}): start fewer processes per node or use --device cpu")
        name = f"cuda:{world.local_rank}"
    device = torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def make_runtime(device: torch.device, mean, std, batch_size: int, *, precision: str = "fp32",
                 workers: int | None = None, world: World | None = None) -> Runtime:
    """A Runtime on ``device``; ``precision`` names an entry of ``PRECISIONS``. Turns on
    ``cudnn.benchmark`` on a GPU (fixed input sizes: the fastest kernels are found once)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    infer, train = PRECISIONS[precision](device)
    return Runtime(device, m, s, batch_size, infer, train, True, workers, world or World())


def precision_name(dtype: torch.dtype | None) -> str:
    return "fp32" if dtype is None else str(dtype).removeprefix("torch.").replace("bfloat16", "bf16")


def to_input(images, rt: Runtime, crop: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """(B, S, S, 3) uint8 (array or tensor) → normalised (B, 3, S, S) float on the runtime's
    device, channels_last in memory when ``rt.channels_last``.

    crop: (rows (B, S), columns (B, S)) index arrays from ``crop_flip_indices``: sample i becomes
    ``image[rows[i]][:, columns[i]]`` (augmentation as one gather on the uint8 batch, on the
    device; the same values as cropping the normalised image, since normalising is per pixel)."""
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    x = x.to(rt.device, non_blocking=True)
    if crop is not None:
        r, c = (t.to(rt.device, non_blocking=True) for t in crop)
        x = x[torch.arange(len(x), device=rt.device)[:, None, None], r[:, :, None], c[:, None, :]]
    x = x.permute(0, 3, 1, 2).float().div_(255.0)   # NHWC memory seen as NCHW: channels_last
    x = (x - rt.mean) / rt.std
    return x.contiguous(memory_format=torch.channels_last if rt.channels_last else torch.contiguous_format)


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of a reflect-padded axis (edge not repeated, as F.pad's "reflect") → 0..n-1."""
    return torch.where(i < 0, -i, torch.where(i >= n, 2 * (n - 1) - i, i))


def crop_flip_indices(b: int, h: int, w: int, gen: torch.Generator,
                      flip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crop with S/8 reflect padding and horizontal flip (the standard CIFAR recipe) as
    index arrays: (rows (b, h), columns (b, w)) int64 into the unpadded (h, w) image.

    Draws from ``gen`` exactly what the per-sample crop loop drew (offsets x, offsets y, then the
    flip coins), so a seed gives the same augmentation as before."""
    pad = max(1, h // 8)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = dy[:, None] + torch.arange(h) - pad
    cols = dx[:, None] + torch.arange(w) - pad
    if flip:
        m = torch.rand(b, generator=gen) < 0.5
        cols[m] = cols[m].flip(1)
    return _reflect(rows, h), _reflect(cols, w)


def augment(x: torch.Tensor, gen: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Random crop + flip (``crop_flip_indices``) of a (B, C, H, W) batch, batched on its device;
    the result is channels_last in memory."""
    r, c = (t.to(x.device) for t in crop_flip_indices(x.shape[0], x.shape[2], x.shape[3], gen, flip))
    nhwc = x.permute(0, 2, 3, 1)
    return nhwc[torch.arange(len(x), device=x.device)[:, None, None], r[:, :, None], c[:, None, :]].permute(0, 3, 1, 2)


def features_and_logits(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-logit features f(x; θ) (B, D) and logits g(f) (B, K) in one forward."""
    feats = model.forward_head(model.forward_features(x), pre_logits=True)
    return feats, model.get_classifier()(feats)


class _Reporter:
    """Progress of one pass: the first step, then at most every ``REPORT_EVERY_S``, and the last.
    ``due(step)`` says when; only then does a pass move results to the host (its one sync)."""

    def __init__(self, steps: int):
        self.steps, self.t0, self.last = steps, time.time(), 0.0

    def due(self, step: int) -> bool:
        now = time.time()
        if step in (1, self.steps) or now - self.last >= REPORT_EVERY_S:
            self.last = now
            return True
        return False

    def rate(self, images: int) -> float:
        return images / max(time.time() - self.t0, 1e-6)


@torch.no_grad()
def forward_pass(model, images: np.ndarray, rt: Runtime, *, rows: np.ndarray | None = None,
                 progress: Callable | None = None, cancel: CancelToken | None = None,
                 phase: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode pass over ``images[rows]`` (images (M, S, S, 3) uint8, rows (N,) int, default
    all M): returns (features (N, D) f32, logits (N, K) f32), row i for ``rows[i]``.

    The backbone runs under ``rt.infer_dtype`` autocast; the head always in float32 on float32
    features, so the losses the GMM sees come from float32 logits in every pass, LP's included
    (``linear_logits``)."""
    model.eval()
    idx = np.arange(len(images)) if rows is None else np.asarray(rows)
    batches = split_batches(idx, rt.batch_size)
    head = model.get_classifier()
    feats, logits, pending = [], [], []
    report, done = _Reporter(len(batches)), 0
    for s, x8 in enumerate(rt.loader(images).batches(batches), 1):
        check(cancel)
        with rt.autocast():
            f = model.forward_head(model.forward_features(to_input(x8, rt)), pre_logits=True)
        f = f.float()
        pending.append((f, head(f)))
        done += len(x8)
        if report.due(s):   # the host sync of this pass, at most a few times a second
            feats += [p[0].cpu().numpy() for p in pending]
            logits += [p[1].cpu().numpy() for p in pending]
            pending = []
            if progress:
                progress({"phase": phase, "kind": "step", "step": s, "steps": len(batches),
                          "images_per_s": report.rate(done)})
    d, k = model.num_features, head.out_features
    return (np.concatenate(feats) if feats else np.zeros((0, d), np.float32),
            np.concatenate(logits) if logits else np.zeros((0, k), np.float32))


@torch.no_grad()
def recalibrate_bn(model, images: np.ndarray, rt: Runtime, *, rows: np.ndarray | None = None,
                   max_images: int = 4096, seed: int = 0, cancel: CancelToken | None = None) -> None:
    """Re-estimate every batch-norm layer's running statistics on the user's images (AdaBN,
    Li et al. 2016), keeping the learned scale and shift.

    Why: ImageNet statistics at 224 px do not match small or off-domain images (64-px CIFAR,
    28-px digits). Features extracted with mismatched statistics are weaker for LP, and FFT in
    train-mode BN would then see different features than the ones the LP head was trained on.
    Running stats are cumulative averages over up to ``max_images`` of the samples
    ``images[rows]`` (rows (N,) int, default all rows of ``images``).
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.eval()
    for m in bns:
        m.train()
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    idx = np.random.default_rng(seed).permutation(len(rows))[:max_images]
    batches = [rows[np.sort(idx[s:s + rt.batch_size])] for s in range(0, len(idx), rt.batch_size)]
    for x8 in rt.loader(images).batches([b for b in batches if len(b) >= 2]):
        check(cancel)
        with rt.autocast():
            model.forward_features(to_input(x8, rt))
    for m, (mom, tr) in zip(bns, saved):
        m.momentum = mom
        m.train(tr)
    model.eval()


@torch.no_grad()
def fold_batchnorm(model) -> int:
    """Fold every batch-norm layer's running statistics and scale into the convolution before it,
    leaving the network's eval-mode function unchanged (up to float rounding). Returns the count.

    Why (``bn_mode="fold"``, the default): FFT then runs with eval-mode batch norm — the same
    features the LP head was trained on — but without eval-mode BN's hazard on these weights: a
    third of torchvision MobileNetV2's BN channels have running variance < 1e-3, so a gradient
    step on the convolution before them is amplified by up to 1/sqrt(eps) ≈ 316 (measured: FFT
    with plain eval-mode BN and no gradient clipping wrecked test accuracy at lr 1e-3). Folded,
    each channel's scale lives in the convolution's weights and an SGD step changes the output
    by the step itself. After folding, a BN layer computes x + shift, its shift trainable.
    Only Conv → BN pairs in module order with matching channels are folded (timm CNNs).
    """
    prev, n = None, 0
    for mod in model.modules():
        if isinstance(mod, torch.nn.Conv2d):
            prev = mod
            continue
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            if (prev is not None and prev.out_channels == mod.num_features and mod.affine
                    and mod.track_running_stats and mod.running_var is not None):
                scale = mod.weight / torch.sqrt(mod.running_var + mod.eps)
                prev.weight.mul_(scale.view(-1, *([1] * (prev.weight.dim() - 1))))
                shift = mod.bias - mod.running_mean * scale
                if prev.bias is not None:
                    shift = shift + prev.bias * scale
                    prev.bias.zero_()
                mod.bias.copy_(shift)
                mod.weight.fill_(1.0)
                mod.running_mean.zero_()
                mod.running_var.fill_(1.0 - mod.eps)   # (x − 0) / sqrt(1 − eps + eps) = x
                n += 1
            prev = None
    return n


def per_sample_ce(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """CE loss of each sample (N,) from logits (N, K) and int labels (N,)."""
    z = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    return F.cross_entropy(z, torch.from_numpy(np.asarray(labels, dtype=np.int64)), reduction="none").numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(np.asarray(logits, dtype=np.float32)), dim=1).numpy()


def train_linear_head(features: np.ndarray, labels: np.ndarray, n_classes: int, *, loss: str = "gce",
                      q: float = 0.7, epochs: int = 20, lr: float = 1e-2, weight_decay: float = 0.0,
                      batch_size: int = 128, min_steps_per_epoch: int = 0, seed: int = 0,
                      progress: Callable | None = None, cancel: CancelToken | None = None,
                      device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Phase I: a linear head g(z; φ) on frozen, cached features, trained on ``device``.

    features (N, D) float; labels (N,) int. ``loss`` is "gce" (TURN, q) or "ce". Adam (the paper
    does not name LP's optimiser). ``min_steps_per_epoch`` > 0 shrinks the batch so an epoch
    takes at least that many steps: E_LP counts epochs, and on a few hundred images 20 epochs of
    128-image batches are too few Adam steps to fit the head at all. The shuffles come from a
    CPU generator, so a seed gives the same batches on any device.
    Returns (weight (K, D), bias (K,), mean loss per epoch), on the CPU.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.asarray(features, dtype=np.float32)).to(device)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
    head = torch.nn.Linear(x.shape[1], n_classes).to(device)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    history = []
    if min_steps_per_epoch > 0:
        batch_size = max(1, min(batch_size, -(-len(x) // min_steps_per_epoch)))
    steps = (len(x) + batch_size - 1) // batch_size
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(len(x), generator=gen).to(device)
        total = torch.zeros((), dtype=torch.float64, device=device)   # summed on the device: no sync per step
        for s in range(steps):
            check(cancel)
            b = perm[s * batch_size:(s + 1) * batch_size]
            z = head(x[b])
            batch_loss = gce_loss(z, y[b], q) if loss == "gce" else F.cross_entropy(z, y[b])
            opt.zero_grad()
            batch_loss.backward()
            opt.step()
            total += batch_loss.detach().double() * len(b)
        history.append(float(total) / max(len(x), 1))
        if progress:
            progress({"phase": "lp", "kind": "epoch", "epoch": epoch, "epochs": epochs, "loss": history[-1]})
    return head.weight.detach().cpu().clone(), head.bias.detach().cpu().clone(), history


def linear_logits(features: np.ndarray, weight: torch.Tensor, bias: torch.Tensor,
                  device: torch.device | str = "cpu", chunk: int = 65536) -> np.ndarray:
    """float32 logits (N, K) of the linear head (weight (K, D), bias (K,)) on ``features`` (N, D),
    computed on ``device`` as the model's own head computes them in ``forward_pass``."""
    w, b = weight.float().to(device), bias.float().to(device)
    out = [F.linear(torch.from_numpy(np.asarray(features[s:s + chunk], dtype=np.float32)).to(device), w, b).cpu()
           for s in range(0, len(features), chunk)]
    return torch.cat(out).numpy() if out else np.zeros((0, len(bias)), np.float32)


# The out-of-fold probe's recipe by size. Up to PROBE_STREAM_ABOVE samples: Phase I's recipe (E_LP
# epochs on a standardised float32 copy), unchanged: the benchmark's runs (1,000-2,000 images), the
# demo, the 8k growth run and every test keep their numbers (the 32k growth run moves). Above it, epochs
# make the cost grow with N (5 folds × 20 epochs × 0.8 N / 128 Adam steps: 10-15 min per view and
# ~9 GB of float32 copies at 1M × 1280) although a linear head has long converged: a fixed budget
# of PROBE_STEPS steps per fold, each reading one mini-batch from the (float16 memmap) features and
# standardising it there. Measured on real 32k CIFAR-10N features (MobileNetV2, 32 px, 17 % noise;
# AUROC / F1 of 1 − p(given) and argmax ≠ given): epochs 0.814 / 0.436 (pretrained) and 0.903 /
# 0.569 (fine-tuned); steps 2,000: 0.818 / 0.444 and 0.905 / 0.577; 4,000: 0.812 / 0.436 and
# 0.902 / 0.569 (more steps memorise more noise). The budget costs what the epoch recipe costs at
# 0.8 N / 128 × 20 = 2,000, N = 16k; the switch is just above that crossover, where the step
# recipe is cheaper and measured at least as good.
PROBE_STREAM_ABOVE = 20_000
PROBE_STEPS = 2_000
PROBE_CHUNK_BYTES = 32 << 20   # float32 bytes of the rows the streamed recipe reads at a time


def _chunk_rows(width: int) -> int:
    """Rows of ``width`` float32 values that fit PROBE_CHUNK_BYTES."""
    return max(1, PROBE_CHUNK_BYTES // (4 * max(1, width)))


def _float_rows(rows: np.ndarray) -> torch.Tensor:
    """``rows`` (M, D) of any float dtype as a float32 tensor (torch converts float16 several
    times faster than numpy does). A read-only block (a slice of a memmap) is copied first, as
    torch will not wrap memory it may not write."""
    rows = np.ascontiguousarray(rows)
    return torch.from_numpy(rows if rows.flags.writeable else rows.copy()).float()


def _stratified_folds(labels: np.ndarray, n_classes: int, folds: int, seed: int) -> np.ndarray:
    """Fold number (N,) of each sample: each class's samples dealt round-robin in random order."""
    rng = np.random.default_rng(seed)
    fold_of = np.zeros(len(labels), dtype=int)
    for c in range(n_classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fold_of[idx] = np.arange(len(idx)) % folds
    return fold_of


def feature_moments(features: np.ndarray, chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation (+1e-6), both (D,) float32, of ``features``
    (N, D), read ``chunk`` rows at a time (default: PROBE_CHUNK_BYTES of float32) and summed in
    float64: no full-size copy."""
    n, d = features.shape
    chunk = chunk or _chunk_rows(d)
    total, squares = np.zeros(d), np.zeros(d)
    for s in range(0, n, chunk):
        x = _float_rows(features[s:s + chunk]).double()
        total += x.sum(dim=0).numpy()
        squares += x.square().sum(dim=0).numpy()
    mu = total / max(n, 1)
    var = np.maximum(squares / max(n, 1) - mu ** 2, 0.0)
    return mu.astype(np.float32), (np.sqrt(var) + 1e-6).astype(np.float32)


def train_linear_head_streamed(features: np.ndarray, rows: np.ndarray, labels: np.ndarray, n_classes: int,
                               mu: np.ndarray, sd: np.ndarray, *, steps: int = PROBE_STEPS, loss: str = "gce",
                               q: float = 0.7, lr: float = 1e-3, batch_size: int = 128, seed: int = 0,
                               cancel: CancelToken | None = None,
                               device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """A linear head trained for a fixed number of Adam ``steps`` on the ``rows`` (M,) of
    ``features`` (N, D, any float dtype, a memmap is fine), each mini-batch read from
    ``features`` and standardised there with ``mu``, ``sd`` (D,): nothing of size M × D is
    copied. labels (N,) int, indexed by the same rows. Batches walk seeded shuffles of ``rows``
    (a new one each time a pass ends); each batch is read in row order, which the mean loss
    does not see. Returns (weight (K, D), bias (K,)) on the CPU.
    """
    gen = torch.Generator().manual_seed(seed)
    rows = np.asarray(rows)
    mu_t, sd_t = torch.from_numpy(mu).to(device), torch.from_numpy(sd).to(device)
    head = torch.nn.Linear(features.shape[1], n_classes).to(device)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    batch_size = max(1, min(batch_size, len(rows)))
    perm, at = np.zeros(0, dtype=np.int64), 0
    for _ in range(steps if len(rows) else 0):
        check(cancel)
        if at + batch_size > len(perm):
            perm, at = rows[torch.randperm(len(rows), generator=gen).numpy()], 0
        b = np.sort(perm[at:at + batch_size])
        at += batch_size
        x = (_float_rows(features[b]).to(device) - mu_t) / sd_t
        y = torch.from_numpy(np.asarray(labels[b], dtype=np.int64)).to(device)
        z = head(x)
        batch_loss = gce_loss(z, y, q) if loss == "gce" else F.cross_entropy(z, y)
        opt.zero_grad()
        batch_loss.backward()
        opt.step()
    return head.weight.detach().cpu().clone(), head.bias.detach().cpu().clone()


def _cv_epochs(features, labels, n_classes, fold_of, *, folds, loss, q, epochs, lr, batch_size,
               min_steps_per_epoch, seed, cancel, device) -> np.ndarray:
    """Phase I's recipe per fold on a standardised float32 copy (today's sizes; see PROBE_STREAM_ABOVE)."""
    x = np.asarray(features, dtype=np.float32)
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-6  # standardise: one lr fits any backbone
    x = (x - mu) / sd
    out = np.zeros((len(labels), n_classes), dtype=np.float32)
    for f in range(folds):
        tr, te = fold_of != f, fold_of == f
        if not te.any():
            continue
        w, b, _ = train_linear_head(x[tr], labels[tr], n_classes, loss=loss, q=q, epochs=epochs, lr=lr,
                                    batch_size=batch_size, min_steps_per_epoch=min_steps_per_epoch,
                                    seed=seed + f, cancel=cancel, device=device)
        out[te] = softmax(linear_logits(x[te], w, b, device))
    return out


def _cv_steps(features, labels, n_classes, fold_of, *, folds, loss, q, epochs, lr, batch_size,
              min_steps_per_epoch, seed, cancel, device) -> np.ndarray:
    """A fixed budget of streamed steps per fold (large N; see PROBE_STREAM_ABOVE), then one
    chunked pass scoring every row with its own fold's head."""
    mu, sd = feature_moments(features)
    chunk = _chunk_rows(features.shape[1])
    heads = [train_linear_head_streamed(features, np.flatnonzero(fold_of != f), labels, n_classes, mu, sd,
                                        steps=PROBE_STEPS, loss=loss, q=q, lr=lr, batch_size=batch_size,
                                        seed=seed + f, cancel=cancel, device=device) for f in range(folds)]
    w, b = torch.cat([h[0] for h in heads]), torch.cat([h[1] for h in heads])   # (folds·K, D), (folds·K,)
    out = np.zeros((len(labels), n_classes), dtype=np.float32)
    for s in range(0, len(labels), chunk):
        check(cancel)
        x = ((_float_rows(features[s:s + chunk]) - torch.from_numpy(mu)) / torch.from_numpy(sd)).numpy()
        z = linear_logits(x, w, b, device).reshape(-1, folds, n_classes)
        out[s:s + chunk] = softmax(z[np.arange(len(z)), fold_of[s:s + chunk]])
    return out


# recipe name → function(features, labels, n_classes, fold_of, **recipe settings) → (N, K) probabilities
PROBE_RECIPES: dict[str, Callable[..., np.ndarray]] = {"epochs": _cv_epochs, "steps": _cv_steps}


def probe_recipe(n: int) -> str:
    """The out-of-fold probe's recipe for ``n`` samples (see PROBE_STREAM_ABOVE)."""
    return "steps" if n > PROBE_STREAM_ABOVE else "epochs"


def cross_val_linear_probs(features: np.ndarray, labels: np.ndarray, n_classes: int, *, folds: int = 5,
                           loss: str = "gce", q: float = 0.7, epochs: int = 20, lr: float = 1e-2,
                           batch_size: int = 128, min_steps_per_epoch: int = 0, seed: int = 0,
                           cancel: CancelToken | None = None, device: torch.device | str = "cpu",
                           recipe: str | None = None) -> np.ndarray:
    """Out-of-fold class probabilities (N, K) of a linear head on cached ``features`` (N, D).

    Each sample is scored by a head that never saw it: unlike the fine-tuned model's own output,
    this cannot have memorised a wrong label (cleanlab's cross-validation idea, on our features).
    Stratified folds; the same LP recipe as Phase I, on ``device``, up to PROBE_STREAM_ABOVE
    samples, and a fixed budget of steps streamed from ``features`` above (``recipe`` names one
    of PROBE_RECIPES to force it; None chooses by size).
    """
    recipe = probe_recipe(len(labels)) if recipe is None else recipe
    if recipe not in PROBE_RECIPES:
        raise InputError(f"probe recipe {recipe!r} is not one of {', '.join(PROBE_RECIPES)}")
    fold_of = _stratified_folds(labels, n_classes, folds, seed)
    return PROBE_RECIPES[recipe](features, labels, n_classes, fold_of, folds=folds, loss=loss, q=q, epochs=epochs,
                                 lr=lr, batch_size=batch_size, min_steps_per_epoch=min_steps_per_epoch,
                                 seed=seed, cancel=cancel, device=device)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, device: torch.device | str = "cpu") -> float:
    """The T > 0 minimising the mean CE of ``logits / T`` (N, K) against ``labels`` (N,).

    Why: a GCE-trained head is not calibrated for CE — GCE keeps pushing confident logits up —
    so its logits can be far larger than CE needs, and the first CE steps of FFT then take huge
    gradients through the backbone. Dividing the head by T keeps every prediction (argmax) and
    gives FFT a calibrated start. A grid over log T is enough for one scalar.
    """
    z = torch.from_numpy(np.asarray(logits, dtype=np.float32)).to(device)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
    grid = np.exp(np.linspace(np.log(0.05), np.log(100.0), 121))
    losses = torch.stack([F.cross_entropy(z / t, y) for t in grid]).cpu().numpy()   # one sync
    return float(grid[int(np.argmin(losses))])


def set_head(model, weight: torch.Tensor, bias: torch.Tensor) -> None:
    head = model.get_classifier()
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight.device))
        head.bias.copy_(bias.to(head.bias.device))


def make_fft_optimizer(model, lr: float, momentum: float, weight_decay: float, head_lr_mult: float = 1.0):
    """SGD over θ and φ (FFT). The paper does not name FFT's optimiser; SGD with a small learning
    rate keeps the pretrained features (Observation 1)."""
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    return torch.optim.SGD([{"params": body, "lr": lr},
                            {"params": list(model.get_classifier().parameters()), "lr": lr * head_lr_mult}],
                           lr=lr, momentum=momentum, weight_decay=weight_decay)


def _set_train_mode(model, freeze_bn_stats: bool) -> None:
    model.train()
    if freeze_bn_stats:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def fft_epoch(model, images: np.ndarray, indices: np.ndarray, labels: np.ndarray, opt, rt: Runtime, *,
              epoch: int, epochs: int, seed: int, rows: np.ndarray | None = None,
              augment_images: bool = True, flip: bool = True,
              freeze_bn_stats: bool = True, grad_clip: float | None = None,
              progress: Callable | None = None, cancel: CancelToken | None = None, net=None) -> float:
    """One epoch of full fine-tuning with CE on the samples ``indices`` labelled ``labels[indices]``.

    labels (N,) int, one per sample; sample i is the image ``images[rows[i]]`` (rows (N,) int;
    default: sample i is row i). Returns the mean training loss over all ranks.

    net: what computes the logits (the DDP wrapper of ``model`` under torchrun; default
    ``model``). Every rank draws the same seeded order and augmentation for each global batch of
    ``rt.batch_size`` and trains on its own contiguous share (``World.share``); its loss is
    scaled so DDP's gradient average is the global batch's mean, as one process computes it.
    """
    net = model if net is None else net
    world = rt.world
    _set_train_mode(model, freeze_bn_stats)
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = np.asarray(indices)[torch.randperm(len(indices), generator=gen).numpy()]
    rows = np.arange(len(labels)) if rows is None else np.asarray(rows)
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    batches = [np.sort(b) for b in split_batches(order, rt.batch_size)]
    if not freeze_bn_stats:
        batches = [b for b in batches if len(b) >= 2]   # batch norm in train mode cannot take one
    shares = [world.share(len(b)) for b in batches]
    size = images.shape[1]
    total = torch.zeros((), dtype=torch.float64, device=rt.device)   # summed on the device: no sync per step
    report, seen = _Reporter(len(batches)), 0
    for s, x8 in enumerate(rt.loader(images).batches([rows[b[sh]] for b, sh in zip(batches, shares)]), 1):
        check(cancel)
        b, share = batches[s - 1], shares[s - 1]
        crop = None
        if augment_images:   # drawn for the whole global batch on every rank, then this rank's share
            crop = tuple(t[share] for t in crop_flip_indices(len(b), size, size, gen, flip))
        with rt.autocast(train=True):
            z = net(to_input(x8, rt, crop))
        if len(x8):
            loss = F.cross_entropy(z.float(), y_all[b[share]].to(rt.device, non_blocking=True))
        else:
            loss = z.float().sum() * 0.0   # an empty share still joins DDP's gradient average
        local = loss * (len(x8) * world.size / len(b)) if world.size > 1 else loss
        opt.zero_grad(set_to_none=True)
        local.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        total += loss.detach().double() * len(x8)
        seen += len(b)
        if progress and report.due(s):
            progress({"phase": "fft", "kind": "step", "epoch": epoch, "epochs": epochs, "step": s,
                      "steps": len(batches), "loss": float(loss.detach()), "images_per_s": report.rate(seen)})
    return world.sum(float(total)) / max(seen, 1)
