"""Torch building blocks of TURN: batches from the uint8 cache, feature/logit passes, linear
probing on cached features, and one full fine-tuning epoch.

Images come from the (M, S, S, 3) uint8 cache built once per run (turn_core.images), so no epoch
re-decodes a file. The passes take the cache as it is on disk (a memmap) plus ``rows``, the cache
row of each sample, and read one batch of rows at a time: leaving out unreadable files never
copies the cache into memory. Every loop checks the cancellation token between batches.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .losses import gce_loss
from .progress import CancelToken, check


@dataclass
class Runtime:
    """Where and how tensors are computed."""

    device: torch.device
    mean: torch.Tensor        # (1, 3, 1, 1) on device
    std: torch.Tensor
    batch_size: int = 128

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        # bf16 autocast on CUDA (no loss scaling needed); full precision on CPU, where bf16 is
        # slower on most hosts.
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else _NullContext()


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from .errors import InputError

        raise InputError("device 'cuda' was asked for but no CUDA GPU is available")
    return torch.device(name)


def make_runtime(device: torch.device, mean, std, batch_size: int) -> Runtime:
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return Runtime(device, m, s, batch_size)


def to_input(images: np.ndarray, rt: Runtime) -> torch.Tensor:
    """(B, S, S, 3) uint8 → normalised (B, 3, S, S) float on the runtime's device."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(rt.device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    x = (x - rt.mean) / rt.std
    return x.contiguous(memory_format=torch.channels_last) if rt.cuda else x


def augment(x: torch.Tensor, gen: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Random crop with S/8 reflect padding and horizontal flip (the standard CIFAR recipe)."""
    b, _, h, w = x.shape
    pad = max(1, h // 8)
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen).tolist()
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).tolist()
    out = torch.stack([xp[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    if flip:
        m = torch.rand(b, generator=gen) < 0.5
        out[m] = out[m].flip(3)
    return out


def features_and_logits(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-logit features f(x; θ) (B, D) and logits g(f) (B, K) in one forward."""
    feats = model.forward_head(model.forward_features(x), pre_logits=True)
    return feats, model.get_classifier()(feats)


@torch.no_grad()
def forward_pass(model, images: np.ndarray, rt: Runtime, *, rows: np.ndarray | None = None,
                 progress: Callable | None = None, cancel: CancelToken | None = None,
                 phase: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode pass over ``images[rows]`` (images (M, S, S, 3) uint8, rows (N,) int, default
    all M): returns (features (N, D) f32, logits (N, K) f32), row i for ``rows[i]``."""
    model.eval()
    idx = np.arange(len(images)) if rows is None else np.asarray(rows)
    feats, logits = [], []
    steps = (len(idx) + rt.batch_size - 1) // rt.batch_size
    t0 = time.time()
    for s in range(steps):
        check(cancel)
        b = idx[s * rt.batch_size:(s + 1) * rt.batch_size]
        with rt.autocast():
            f, z = features_and_logits(model, to_input(images[b], rt))
        feats.append(f.float().cpu().numpy())
        logits.append(z.float().cpu().numpy())
        if progress:
            done = min((s + 1) * rt.batch_size, len(idx))
            progress({"phase": phase, "kind": "step", "step": s + 1, "steps": steps,
                      "images_per_s": done / max(time.time() - t0, 1e-6)})
    d = model.num_features
    k = model.get_classifier().out_features
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
    for s in range(0, len(idx), rt.batch_size):
        check(cancel)
        b = np.sort(idx[s:s + rt.batch_size])
        if len(b) < 2:
            continue
        with rt.autocast():
            model.forward_features(to_input(images[rows[b]], rt))
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
                      progress: Callable | None = None,
                      cancel: CancelToken | None = None) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Phase I: a linear head g(z; φ) on frozen, cached features.

    features (N, D) float; labels (N,) int. ``loss`` is "gce" (TURN, q) or "ce". Adam (the paper
    does not name LP's optimiser). ``min_steps_per_epoch`` > 0 shrinks the batch so an epoch
    takes at least that many steps: E_LP counts epochs, and on a few hundred images 20 epochs of
    128-image batches are too few Adam steps to fit the head at all.
    Returns (weight (K, D), bias (K,), mean loss per epoch).
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.asarray(features, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    head = torch.nn.Linear(x.shape[1], n_classes)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    history = []
    if min_steps_per_epoch > 0:
        batch_size = max(1, min(batch_size, -(-len(x) // min_steps_per_epoch)))
    steps = (len(x) + batch_size - 1) // batch_size
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for s in range(steps):
            check(cancel)
            b = perm[s * batch_size:(s + 1) * batch_size]
            z = head(x[b])
            batch_loss = gce_loss(z, y[b], q) if loss == "gce" else F.cross_entropy(z, y[b])
            opt.zero_grad()
            batch_loss.backward()
            opt.step()
            total += batch_loss.item() * len(b)
        history.append(total / max(len(x), 1))
        if progress:
            progress({"phase": "lp", "kind": "epoch", "epoch": epoch, "epochs": epochs, "loss": history[-1]})
    return head.weight.detach().clone(), head.bias.detach().clone(), history


def cross_val_linear_probs(features: np.ndarray, labels: np.ndarray, n_classes: int, *, folds: int = 5,
                           loss: str = "gce", q: float = 0.7, epochs: int = 20, lr: float = 1e-2,
                           batch_size: int = 128, min_steps_per_epoch: int = 0, seed: int = 0,
                           cancel: CancelToken | None = None) -> np.ndarray:
    """Out-of-fold class probabilities (N, K) of a linear head on cached ``features`` (N, D).

    Each sample is scored by a head that never saw it: unlike the fine-tuned model's own output,
    this cannot have memorised a wrong label (cleanlab's cross-validation idea, on our features).
    Stratified folds; the same LP recipe as Phase I.
    """
    rng = np.random.default_rng(seed)
    fold_of = np.zeros(len(labels), dtype=int)
    for c in range(n_classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fold_of[idx] = np.arange(len(idx)) % folds
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
                                    seed=seed + f, cancel=cancel)
        out[te] = softmax(x[te] @ w.numpy().T + b.numpy())
    return out


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the mean CE of ``logits / T`` (N, K) against ``labels`` (N,).

    Why: a GCE-trained head is not calibrated for CE — GCE keeps pushing confident logits up —
    so its logits can be far larger than CE needs, and the first CE steps of FFT then take huge
    gradients through the backbone. Dividing the head by T keeps every prediction (argmax) and
    gives FFT a calibrated start. A grid over log T is enough for one scalar.
    """
    z = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    grid = np.exp(np.linspace(np.log(0.05), np.log(100.0), 121))
    losses = [float(F.cross_entropy(z / t, y)) for t in grid]
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
              progress: Callable | None = None, cancel: CancelToken | None = None) -> float:
    """One epoch of full fine-tuning with CE on the samples ``indices`` labelled ``labels[indices]``.

    labels (N,) int, one per sample; sample i is the image ``images[rows[i]]`` (rows (N,) int;
    default: sample i is row i). Returns the mean training loss.
    """
    _set_train_mode(model, freeze_bn_stats)
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = np.asarray(indices)[torch.randperm(len(indices), generator=gen).numpy()]
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    steps = (len(order) + rt.batch_size - 1) // rt.batch_size
    total, seen, t0 = 0.0, 0, time.time()
    for s in range(steps):
        check(cancel)
        b = np.sort(order[s * rt.batch_size:(s + 1) * rt.batch_size])
        if len(b) < 2 and not freeze_bn_stats:
            continue  # batch norm in train mode cannot take a batch of one
        x = to_input(images[b if rows is None else rows[b]], rt)
        if augment_images:
            x = augment(x, gen, flip)
        y = y_all[b].to(rt.device)
        with rt.autocast():
            _, z = features_and_logits(model, x)
            loss = F.cross_entropy(z.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        total += loss.item() * len(b)
        seen += len(b)
        if progress:
            progress({"phase": "fft", "kind": "step", "epoch": epoch, "epochs": epochs, "step": s + 1,
                      "steps": steps, "loss": loss.item(), "images_per_s": seen / max(time.time() - t0, 1e-6)})
    return total / max(seen, 1)
