"""Every setting of a run, with the paper's defaults.

``RunConfig`` is the one object the CLI, the app and the benchmark fill in; it is written to
``config.json`` in the run directory, so a run can be repeated exactly (``RunConfig.from_json``).
Where the TURN paper (Ahn et al., IJCAI 2024) fixes a value, the default is the paper's and the
field's comment says "paper". Where the paper is silent, the comment says why we chose the value.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError

METHODS = ("turn", "ce-lp", "gce-lp", "ce-fft")
CACHE_ENV = "TURN_AUDIT_CACHE"


def cache_dir() -> Path:
    """The one cache folder (demo PNGs, decoded-image memmaps): ``$TURN_AUDIT_CACHE``, or
    ``~/.cache/turn_audit`` when that is unset or empty. Read at call time, so tests and the
    app can point it elsewhere with the environment."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "turn_audit").expanduser()
BN_MODES = ("fold", "frozen", "recalibrate")


@dataclass
class RunConfig:
    # ---- data --------------------------------------------------------------------------------
    data: str = "demo"                 # image folder, CSV manifest, or "demo"
    test_data: str | None = None       # optional held-out set (folder or CSV); else CSV split=test
    out: str = "runs/latest"           # run directory
    demo_noise: str = "symmetric"      # noise kind injected into the built-in demo
    demo_noise_rate: float = 0.2
    demo_n: int = 2000                 # demo subset size (2 min on 2 CPU cores, cache included)
    # Optional synthetic noise on a user dataset (for benchmarking): applied to `clean_label`
    # when the manifest has it, else to the given labels (which then become the truth).
    inject_noise: str | None = None    # None | symmetric | asymmetric | instance
    inject_noise_rate: float = 0.0
    asym_map: str = "next"             # asymmetric map: "next", "cifar100", or "a:b,c:d" pairs
    seed: int = 0

    # ---- model -------------------------------------------------------------------------------
    model: str = "mobilenetv2_100"     # any timm name
    weights: str = "offline"           # offline (pip-installed MobileNetV2) | hub | none
    checkpoint: str | None = None      # local .safetensors / state-dict file (weights_only load)
    image_size: int | None = None      # None: timm's data config (demo: its own small size)
    mean: tuple[float, float, float] | None = None   # None: timm's data config
    std: tuple[float, float, float] | None = None
    device: str = "auto"               # auto | cpu | cuda
    batch_size: int = 128
    num_threads: int | None = None     # torch CPU threads; None = torch default

    # ---- TURN --------------------------------------------------------------------------------
    method: str = "turn"               # turn | ce-lp | gce-lp | ce-fft
    lp_epochs: int = 20                # paper: E_LP = 20
    gce_q: float = 0.7                 # paper: q of GCE (0.7, Zhang & Sabuncu's default, as in TURN)
    # Paper silent. Adam on cached features. Measured on 64-px CIFAR-10N (BENCHMARKS.md): at 1e-2
    # the GCE head never predicts the hardest class ("cat"), so the global GMM keeps ~2 of its
    # images and the paper's n = smallest class count shrinks the clean set to ~20 images; at
    # 1e-3 every class keeps ~300 and the LP's own test accuracy is higher too (0.641 vs 0.621).
    lp_lr: float = 1e-3
    # Paper silent. LP's batch shrinks so an epoch takes at least this many Adam steps (0 = off):
    # at lr 1e-3, 20 epochs of 128-image batches leave the head unfitted on small data (measured
    # on 500 demo digits: test accuracy 0.508 at 4 steps/epoch vs 0.626 at 32; 4,000 CIFAR
    # images, already 32 steps/epoch, are unaffected).
    lp_min_steps: int = 32
    lp_weight_decay: float = 0.0
    fft_epochs: int = 5                # paper: E_FFT = 5
    # Paper silent on FFT optimiser. SGD + momentum with gradient-norm clipping; see bn_mode for
    # why the torchvision MobileNetV2 weights need care (Observation 1: FFT must not wreck θ).
    fft_lr: float = 3e-3
    fft_grad_clip: float = 1.0         # max gradient norm per FFT step (0 = off)
    # Paper silent. Before FFT, divide the GCE head by the temperature that calibrates it for CE
    # (argmax unchanged): a GCE head's large logits otherwise give FFT's first CE steps huge
    # gradients (measured: CE loss 13 after one FFT epoch on CIFAR at 64 px without it).
    calibrate_head: bool = True
    fft_head_lr_mult: float = 1.0
    fft_momentum: float = 0.9
    fft_weight_decay: float = 5e-4
    fft_augment: bool = True           # random crop + flip on the clean set (paper's CIFAR recipe)
    # Batch norm during FFT (paper silent; its backbones use LayerNorm). "fold": BN statistics and
    # scale folded into the convolutions before anything runs (same pretrained features, see
    # train.fold_batchnorm), then eval-mode BN throughout, so FFT trains the very features the
    # LP head saw. "frozen": eval-mode BN without folding. "recalibrate": batch statistics while
    # training, running statistics re-estimated on all images after each epoch (AdaBN).
    # Measured on 64-px CIFAR-10N aggre, TURN's test accuracy after FFT from LP 0.641: fold 0.694,
    # frozen 0.699 (one seed: a tie); fold's stability does not rest on gradient clipping.
    # Recalibration alone took the demo's LP model from 0.79 to 0.09 test accuracy (the LP head
    # was fitted under the ImageNet statistics).
    bn_mode: str = "fold"
    tau: float = 0.5                   # paper: clean posterior threshold τ
    gmm_per_class: bool = False        # paper: one GMM over all losses
    # Paper: n = smallest per-class clean count. With very imbalanced data that can throw away
    # most of the data; `min_per_class` raises n to at least this (capped by each class's count).
    min_per_class: int = 0
    # A class with no clean sample: never train on nothing. "fallback" keeps that class's
    # `fallback_k` lowest-loss samples (documented in events); "error" stops the run.
    empty_class_policy: str = "fallback"
    fallback_k: int = 5

    # ---- suspicion & flags ---------------------------------------------------------------------
    # score: "paper" (1 − clean posterior of the last epoch's GMM), or "ensemble" (see scores.py).
    score: str = "ensemble"
    # flag rule: "paper" (clean posterior < τ), "ensemble" (the ensemble's top class is not the
    # given label) or "confident-learning" (cleanlab on the ensemble; fewer, surer flags).
    flag_rule: str = "ensemble"
    knn_k: int = 10

    # ---- outputs -----------------------------------------------------------------------------
    thumb_size: int = 64
    save_features: bool = True

    # -------------------------------------------------------------------------------------------
    def validate(self) -> "RunConfig":
        if self.method not in METHODS:
            raise InputError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        if not 0.0 < self.gce_q <= 1.0:
            raise InputError(f"gce_q={self.gce_q} must lie in (0, 1]")
        if not 0.0 <= self.tau <= 1.0:
            raise InputError(f"tau={self.tau} must lie in [0, 1]")
        for name in ("lp_epochs", "fft_epochs", "lp_min_steps"):
            if getattr(self, name) < 0:
                raise InputError(f"{name}={getattr(self, name)} must be >= 0")
        if self.batch_size < 1:
            raise InputError(f"batch_size={self.batch_size} must be >= 1")
        if self.image_size is not None and not 8 <= self.image_size <= 1024:
            raise InputError(f"image_size={self.image_size} must lie between 8 and 1024")
        if self.bn_mode not in BN_MODES:
            raise InputError(f"bn_mode={self.bn_mode!r} must be one of {', '.join(BN_MODES)}")
        if self.empty_class_policy not in ("fallback", "error"):
            raise InputError(f"empty_class_policy={self.empty_class_policy!r} must be fallback or error")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and (len(v) != 3 or (name == "std" and min(v) <= 0)):
                raise InputError(f"{name}={v} must be three numbers" + (" above 0" if name == "std" else ""))
        if not 0.0 <= self.demo_noise_rate < 1.0 or not 0.0 <= self.inject_noise_rate < 1.0:
            raise InputError("noise rates must lie in [0, 1)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        """Build from a dict, ignoring unknown keys (run dirs written by other versions)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        for k in ("mean", "std"):
            if kwargs.get(k) is not None:
                kwargs[k] = tuple(kwargs[k])
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> "RunConfig":
        d = json.loads(Path(path).read_text())
        return cls.from_dict(d.get("settings", d))


def setting_help() -> dict[str, str]:
    """Field name → its comment above (the one beside the field, else the comment block right
    above it), for --help and the app's tooltips."""
    import inspect
    import re

    out: dict[str, str] = {}
    block: list[str] = []
    for line in inspect.getsource(RunConfig).splitlines():
        stripped = line.strip()
        if stripped.startswith("# ----"):
            block = []
        elif stripped.startswith("#"):
            block.append(stripped.lstrip("#").strip())
        elif m := re.match(r"^\s+(\w+): [^=\n]+= [^#\n]+?(?:#\s*(.+))?$", line):
            text = (m.group(2) or " ".join(block)).strip()
            if text:
                out[m.group(1)] = text
            block = []
        else:
            block = []
    return out


def config_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(RunConfig))


__all__ = ["RunConfig", "METHODS", "cache_dir", "BN_MODES", "setting_help", "config_fields", "field"]
