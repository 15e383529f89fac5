"""Every setting of a run, with the paper's defaults and its own help.

``RunConfig`` is the one object the CLI, the app and the benchmark fill in; it is written to
``config.json`` in the run directory, so a run can be repeated exactly (``RunConfig.from_json``).
Where the TURN paper (Ahn et al., IJCAI 2024) fixes a value, the default is the paper's and the
field's comment says "paper". Where the paper is silent, the comment says why we chose the value.

Each field carries its description in ``dataclasses.field(metadata=...)``: ``help`` (one or two
sentences for people), ``group`` (a ``GROUPS`` key), ``advanced``, and where they apply
``choices`` (a fixed list), ``registry`` (the name of a registry further up, checked by
``turn_core.settings``), ``label`` (the app's label), ``min`` / ``max`` (inclusive bounds),
``step`` (the app's increment) and ``methods`` (the methods the setting matters for). ``SETTINGS``
reads that metadata once; the CLI flags, ``--help`` and the app's form are generated from it.
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
FFT_METHODS = ("turn", "ce-fft")      # the methods that fine-tune the backbone
BN_MODES = ("fold", "frozen", "recalibrate")
# Names of turn_core.noise.NOISE_KINDS (config sits below noise; tests/test_config.py checks
# the two agree). The demo may also run with "none"; injected noise is off with None.
NOISE_KINDS = ("symmetric", "asymmetric", "instance")
EMPTY_CLASS_POLICIES = ("fallback", "error")
# Names of turn_core.train.PRECISIONS (config sits below train; tests/test_config.py checks them).
PRECISIONS = ("auto", "fp32", "bf16")
# Names of turn_core.knn.CHOICES ("auto" + the search registry; config sits below knn, so the
# list is repeated here and tests/test_config.py checks the two agree).
KNN_METHODS = ("auto", "exact", "bf16-rerank", "hnsw")
GROUPS = {"data": "Data", "model": "Model", "turn": "TURN", "scores": "Suspicion and flags",
          "outputs": "Outputs"}
CACHE_ENV = "TURN_AUDIT_CACHE"


def cache_dir() -> Path:
    """The one cache folder (demo PNGs, decoded-image memmaps): ``$TURN_AUDIT_CACHE``, or
    ``~/.cache/turn_audit`` when that is unset or empty. Read at call time, so tests and the
    app can point it elsewhere with the environment."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "turn_audit").expanduser()


def _setting(default: Any, help: str, group: str, *, advanced: bool = True, **extra: Any) -> Any:
    """A dataclass field whose metadata describes it (see the module docstring for the keys)."""
    if group not in GROUPS:
        raise ValueError(f"unknown setting group {group!r}")  # a typo in this file, not user input
    return field(default=default, metadata={"help": help, "group": group, "advanced": advanced, **extra})


@dataclass
class RunConfig:
    # ---- data --------------------------------------------------------------------------------
    data: str = _setting("demo", "Image folder (root/<class>/<image>), CSV manifest "
                         "(path,label[,split][,true_label]), a Hugging Face save_to_disk folder, hf://NAME[:split], or 'demo'.", "data", advanced=False)
    test_data: str | None = _setting(None, "Optional held-out set (folder or CSV) for test accuracy; "
                                     "unset: the manifest's rows with split=test.", "data")
    out: str = _setting("runs/latest", "Run directory to write.", "data", advanced=False)
    demo_noise: str = _setting("symmetric", "Label noise the built-in demo injects: symmetric (a uniform "
                               "wrong label), asymmetric (a fixed class → class confusion) or instance "
                               "(harder images are mislabeled more).", "data", advanced=False,
                               choices=("none", *NOISE_KINDS), label="Noise kind")
    demo_noise_rate: float = _setting(0.2, "Fraction of the demo's training labels made wrong on purpose.",
                                      "data", advanced=False, min=0.0, step=0.05, label="Noise rate")
    # 2,000 images take about 2 min on 2 CPU cores, the image cache included.
    demo_n: int = _setting(2000, "Number of demo training images (its test set has 500 more).", "data",
                           advanced=False, min=20, max=4500, step=100, label="Training images")
    # Optional synthetic noise on a user dataset (for benchmarking): applied to `true_label`
    # when the manifest has it, else to the given labels (which then become the truth).
    inject_noise: str | None = _setting(None, "Synthetic label noise to add to your own dataset "
                                        "(for benchmarking); the labels before it become the truth.",
                                        "data", choices=NOISE_KINDS)
    inject_noise_rate: float = _setting(0.0, "Fraction of labels the injected noise changes.", "data",
                                        min=0.0, step=0.05)
    asym_map: str = _setting("next", "Class map of asymmetric noise: 'next' (class i → i+1), 'cifar100' "
                             "(within superclasses) or pairs 'a:b,c:d'.", "data", label="Asymmetric noise map")
    seed: int = _setting(0, "Seed of every random choice (noise, splits, initialisation, sampling); the "
                         "same seed gives the same numbers.", "data", min=0)
    image_column: str | None = _setting(None, "Which column holds the image when the data is a Hugging "
                                        "Face dataset; detected from the features when unset.", "data")
    label_column: str | None = _setting(None, "Which column holds the label when the data is a Hugging "
                                        "Face dataset; detected from the features when unset.", "data")
    truth_column: str | None = _setting(None, "Which column holds the known-true label when the data is "
                                        "a Hugging Face dataset; detected from the features when unset.",
                                        "data")

    # ---- model -------------------------------------------------------------------------------
    model: str = _setting("mobilenetv2_100", "Backbone: any timm model name.", "model", advanced=False)
    weights: str = _setting("offline", "Where the pretrained weights come from: offline (the MobileNetV2 "
                            "installed with the app), hub (Hugging Face hub) or none (random, or "
                            "--checkpoint).", "model", advanced=False, registry="weights")
    checkpoint: str | None = _setting(None, "Local .safetensors or state-dict file to load into the model "
                                      "(loaded with weights_only).", "model")
    image_size: int | None = _setting(None, "Side of the square input images in pixels; unset: the model's "
                                      "own (the demo uses its small native size).", "model", min=8, max=1024)
    mean: tuple[float, float, float] | None = _setting(None, "Per-channel normalisation mean, three numbers; "
                                                       "unset: the model's own.", "model")
    std: tuple[float, float, float] | None = _setting(None, "Per-channel normalisation std, three numbers "
                                                      "above 0; unset: the model's own.", "model")
    device: str = _setting("auto", "Where to compute: auto (a GPU when there is one), cpu, cuda or cuda:N.",
                           "model", registry="device")
    batch_size: int = _setting(128, "Images per batch in the feature, loss and fine-tuning passes.",
                               "model", min=1)
    num_threads: int | None = _setting(None, "CPU threads torch may use; unset: torch's default.", "model",
                                       min=1, label="CPU threads")
    # Measured (bench/throughput.py, BENCHMARKS.md): bf16 autocast on this project's CPU speeds
    # the inference passes up and slows training down, so "auto" uses it for the passes on a CPU
    # with native bf16 and for everything on a GPU.
    precision: str = _setting("auto", "Arithmetic of the passes and of training: auto (bf16 autocast on a "
                              "GPU; on a CPU with native bf16 for the feature and loss passes only), fp32 "
                              "or bf16 (autocast everywhere).", "model", choices=PRECISIONS)
    # Off: compiling takes minutes on a small CPU run and was not measured faster here.
    compile: bool = _setting(False, "Compile the backbone with torch.compile (slow to start; may be "
                             "faster on long GPU runs).", "model", label="torch.compile")
    loader_workers: int | None = _setting(None, "Worker processes that read (or decode) image batches; "
                                          "unset: none on a CPU reading the cache, up to 8 on a GPU or "
                                          "when decoding.", "model", min=0, label="Loader workers")

    # ---- TURN --------------------------------------------------------------------------------
    method: str = _setting("turn", "turn: linear probing (LP) with GCE, then full fine-tuning (FFT) on a "
                           "GMM-selected clean set. Baselines: ce-lp, gce-lp (LP only), ce-fft (FFT on "
                           "all labels).", "turn", advanced=False, choices=METHODS, label="Method")
    lp_epochs: int = _setting(20, "Epochs of linear probing (E_LP).", "turn", advanced=False,  # paper: E_LP = 20
                              min=0, label="LP epochs (E_LP)")
    # paper: q of GCE (0.7, Zhang & Sabuncu's default, as in TURN)
    gce_q: float = _setting(0.7, "q of the generalised cross-entropy loss: 1 is MAE-like (robust), "
                            "towards 0 cross-entropy.", "turn", min=0.01, max=1.0, step=0.05,
                            label="GCE q")
    # Paper silent. Adam on cached features. Measured on 64-px CIFAR-10N (BENCHMARKS.md): at 1e-2
    # the GCE head never predicts the hardest class ("cat"), so the global GMM keeps ~2 of its
    # images and the paper's n = smallest class count shrinks the clean set to ~20 images; at
    # 1e-3 every class keeps ~300 and the LP's own test accuracy is higher too (0.641 vs 0.621).
    lp_lr: float = _setting(1e-3, "Adam learning rate of linear probing.", "turn", min=0.0, step=1e-4,
                            label="LP learning rate")
    # Paper silent. LP's batch shrinks so an epoch takes at least this many Adam steps (0 = off):
    # at lr 1e-3, 20 epochs of 128-image batches leave the head unfitted on small data (measured
    # on 500 demo digits: test accuracy 0.508 at 4 steps/epoch vs 0.626 at 32; 4,000 CIFAR
    # images, already 32 steps/epoch, are unaffected).
    lp_min_steps: int = _setting(32, "Linear probing takes at least this many steps per epoch (smaller "
                                 "batches on small data); 0 = off.", "turn", min=0, label="LP min steps")
    lp_weight_decay: float = _setting(0.0, "Weight decay of linear probing.", "turn", min=0.0, step=1e-4,
                                      label="LP weight decay")
    fft_epochs: int = _setting(5, "Epochs of full fine-tuning (E_FFT).", "turn", advanced=False,  # paper: E_FFT = 5
                               min=0, methods=FFT_METHODS, label="FFT epochs (E_FFT)")
    # Paper silent on FFT optimiser. SGD + momentum with gradient-norm clipping; see bn_mode for
    # why the torchvision MobileNetV2 weights need care (Observation 1: FFT must not wreck θ).
    fft_lr: float = _setting(3e-3, "SGD learning rate of full fine-tuning.", "turn", min=0.0, step=1e-4,
                             methods=FFT_METHODS, label="FFT learning rate")
    fft_grad_clip: float = _setting(1.0, "Largest gradient norm per fine-tuning step; 0 = no clipping.",
                                    "turn", min=0.0, step=0.1, methods=FFT_METHODS, label="FFT gradient clip")
    # Paper silent. Before FFT, divide the GCE head by the temperature that calibrates it for CE
    # (argmax unchanged): a GCE head's large logits otherwise give FFT's first CE steps huge
    # gradients (measured: CE loss 13 after one FFT epoch on CIFAR at 64 px without it).
    calibrate_head: bool = _setting(True, "Before fine-tuning, rescale the GCE head so its cross-entropy is "
                                    "calibrated (its predictions do not change).", "turn",
                                    methods=FFT_METHODS, label="Calibrate the head")
    fft_head_lr_mult: float = _setting(1.0, "The head's learning rate during fine-tuning, as a multiple of "
                                       "the FFT learning rate.", "turn", min=0.0, step=0.1,
                                       methods=FFT_METHODS, label="FFT head lr ×")
    fft_momentum: float = _setting(0.9, "SGD momentum of full fine-tuning.", "turn", min=0.0, max=1.0,
                                   step=0.05, methods=FFT_METHODS, label="FFT momentum")
    fft_weight_decay: float = _setting(5e-4, "Weight decay of full fine-tuning.", "turn", min=0.0, step=1e-4,
                                       methods=FFT_METHODS, label="FFT weight decay")
    # random crop + flip on the clean set: the paper's CIFAR recipe
    fft_augment: bool = _setting(True, "Random crop and flip of the clean set during fine-tuning.", "turn",
                                 methods=FFT_METHODS, label="Augment during FFT")
    # Batch norm during FFT (paper silent; its backbones use LayerNorm). "fold": BN statistics and
    # scale folded into the convolutions before anything runs (same pretrained features, see
    # train.fold_batchnorm), then eval-mode BN throughout, so FFT trains the very features the
    # LP head saw. "frozen": eval-mode BN without folding. "recalibrate": batch statistics while
    # training, running statistics re-estimated on all images after each epoch (AdaBN).
    # Measured on 64-px CIFAR-10N aggre, TURN's test accuracy after FFT from LP 0.641: fold 0.694,
    # frozen 0.699 (one seed: a tie); fold's stability does not rest on gradient clipping.
    # Recalibration alone took the demo's LP model from 0.79 to 0.09 test accuracy (the LP head
    # was fitted under the ImageNet statistics).
    bn_mode: str = _setting("fold", "Batch norm during fine-tuning: fold (statistics folded into the "
                            "convolutions, then fixed), frozen (fixed, not folded) or recalibrate (batch "
                            "statistics, re-estimated after each epoch).", "turn", choices=BN_MODES,
                            methods=FFT_METHODS, label="Batch norm")
    # paper: clean posterior threshold τ
    tau: float = _setting(0.5, "A sample counts as clean when its clean posterior under the GMM is at "
                          "least τ.", "turn", advanced=False, min=0.0, max=1.0, step=0.05,
                          label="τ (clean threshold)")
    # paper: one GMM over all losses
    gmm_per_class: bool = _setting(False, "Fit one GMM per class instead of one over all losses.", "turn",
                                   label="One GMM per class")
    # Paper: n = smallest per-class clean count. With very imbalanced data that can throw away
    # most of the data; `min_per_class` raises n to at least this (capped by each class's count).
    min_per_class: int = _setting(0, "Keep at least this many clean samples per class (capped by the "
                                  "class's size); 0 = the paper's rule, the smallest class's count.",
                                  "turn", min=0, label="Min clean per class")
    # A class with no clean sample: never train on nothing. "fallback" keeps that class's
    # `fallback_k` lowest-loss samples (documented in events); "error" stops the run.
    empty_class_policy: str = _setting("fallback", "When a class has no clean sample: fallback (keep its "
                                       "lowest-loss samples) or error (stop the run).", "turn",
                                       choices=EMPTY_CLASS_POLICIES, label="Empty class")
    fallback_k: int = _setting(5, "How many lowest-loss samples a class without clean samples keeps.",
                               "turn", min=1, label="Fallback samples")

    # ---- suspicion & flags ---------------------------------------------------------------------
    # "ensemble": see scores.py for its five views.
    # "ensemble-flips" (session 10): the ensemble, or a wide neighbour vote when the run shows
    # learned consistent flips (scores.learned_flips), chosen on the 4,000-image dev runs.
    score: str = _setting("ensemble-flips", "How suspicious each label is: paper (1 − the GMM's clean posterior "
                          "in the last epoch), ensemble (several views of the model combined) or ensemble-flips "
                          "(the ensemble, or a wide neighbour vote on the fine-tuned features when labels look "
                          "consistently flipped).", "scores",
                          registry="score", label="Suspicion score")
    # "top-k-cl-flips" (session 10) was chosen with "ensemble-flips" on the 4,000-image development
    # images (bench/protocol.py, cifar10n.py --seed 0 and 3: smallest worst F1 shortfall);
    # "top-k-cl-learned" before it (session 8) was 0.03 short on held-out 4,000-image asymmetric
    # noise, "top-k-cl-structured" 0.04 and "top-k-cl" 0.05 on 1,000 images (BENCHMARKS.md §1).
    flag_rule: str = _setting("top-k-cl-flips", "Which labels get flagged: top-k-<count> (the k most suspicious; k counts wrong "
                              "labels by cl, cl-flips, cl-learned, cl-structured, gmm, gmm-suspicion or expected), paper (clean posterior < τ), "
                              "ensemble (top class ≠ given) or confident-learning (fewer, surer).", "scores",
                              registry="flag_rule", label="Flag rule")
    knn_k: int = _setting(10, "Neighbours in the feature-space label vote.", "scores", min=1,
                          label="k of the neighbour vote")
    # "auto": exact below knn.EXACT_MAX rows on a CPU (the same neighbours as the dense pass it
    # replaced) and always on a GPU; above it an approximate index with recall ≥ 0.95
    # (bench/knn.py), because the exact pass grows as N² (hours at 1M on 2 cores).
    knn_method: str = _setting("auto", "How neighbours are searched: auto (exact up to 60,000 images on a CPU "
                               "and always on a GPU, an approximate index above), exact, bf16-rerank "
                               "(bfloat16 pass re-ranked in float32) or hnsw (PCA + HNSW index re-ranked "
                               "exactly; needs faiss-cpu).", "scores", choices=KNN_METHODS,
                               label="Neighbour search")

    # ---- outputs -----------------------------------------------------------------------------
    thumb_size: int = _setting(64, "Side in pixels of the thumbnails the app shows.", "outputs", min=8,
                               label="Thumbnail size")
    save_features: bool = _setting(True, "Keep the feature arrays in the run directory (for the Clusters "
                                   "page and neighbours).", "outputs", label="Save features")

    # -------------------------------------------------------------------------------------------
    def validate(self) -> RunConfig:
        """Check every value against its field's metadata (type, choices, bounds), then the rules
        that span more than bounds; ``InputError`` naming the setting. Registry names (score,
        flag rule, weights, device) are checked by ``turn_core.settings.check_names``."""
        for s in SETTINGS.values():
            s.check(getattr(self, s.name))
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and name == "std" and min(v) <= 0:
                raise InputError(f"std={v} must be three numbers above 0")
        if not 0.0 <= self.demo_noise_rate < 1.0 or not 0.0 <= self.inject_noise_rate < 1.0:
            raise InputError("noise rates must lie in [0, 1)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Build from a dict, ignoring unknown keys (run dirs written by other versions)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        for k in ("mean", "std"):
            if kwargs.get(k) is not None:
                kwargs[k] = tuple(kwargs[k])
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> RunConfig:
        d = json.loads(Path(path).read_text())
        return cls.from_dict(d.get("settings", d))


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class Setting:
    """One ``RunConfig`` field as the CLI and the app see it, read from the field's metadata.

    ``kind`` is "str", "int", "float", "bool" or "triple" (three floats); ``optional`` means
    None is allowed (it stands for "the model's / the data's own"). ``choices`` is a fixed list,
    ``registry`` the name of a registry checked by ``turn_core.settings``; ``methods`` the
    methods the setting matters for (None: all)."""

    name: str
    default: Any
    kind: str
    optional: bool
    help: str
    group: str
    advanced: bool
    label: str
    choices: tuple | None = None
    registry: str | None = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    methods: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        """The CLI spelling: ``flag_rule`` → ``--flag-rule``."""
        return "--" + self.name.replace("_", "-")

    def parse(self, text: str) -> Any:
        """The value typed as ``text`` (CLI flag, text box); ``InputError`` naming the flag.

        An optional setting reads "" or "none" as None; booleans read 1/0, true/false, yes/no,
        on/off; a triple reads three comma-separated numbers."""
        t = str(text).strip()
        if self.optional and t.lower() in ("", "none"):
            return None
        try:
            if self.kind == "bool":
                if t.lower() not in _TRUE + _FALSE:
                    raise ValueError
                return t.lower() in _TRUE
            if self.kind == "int":
                return int(t)
            if self.kind == "float":
                return float(t)
            if self.kind == "triple":
                values = tuple(float(x) for x in t.split(","))
                if len(values) != 3:
                    raise ValueError
                return values
        except ValueError:
            raise InputError(f"{self.flag} expects {_KIND_WORDS[self.kind]}, not {t!r}") from None
        return t

    def check(self, value: Any) -> None:
        """``InputError`` naming the setting when ``value`` has the wrong type, is not one of
        ``choices`` or lies outside ``min`` / ``max``."""
        if value is None:
            if not self.optional:
                raise InputError(f"{self.name} must be set ({_KIND_WORDS[self.kind]})")
            return
        if not _has_kind(value, self.kind):
            raise InputError(f"{self.name}={value!r} is not {_KIND_WORDS[self.kind]}")
        if self.choices is not None and value not in self.choices:
            raise InputError(f"{self.name}={value!r} is not one of {', '.join(self.choices)}")
        lo, hi = self.min, self.max
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bound = f"lie in [{lo:g}, {hi:g}]" if lo is not None and hi is not None else (
                f"be >= {lo:g}" if lo is not None else f"be <= {hi:g}")
            raise InputError(f"{self.name}={value} must {bound}")


_KIND_WORDS = {"str": "text", "int": "a whole number", "float": "a number", "bool": "true or false",
               "triple": "three numbers separated by commas"}


def _has_kind(value: Any, kind: str) -> bool:
    number = (int, float)
    if kind == "triple":
        return (isinstance(value, (tuple, list)) and len(value) == 3
                and all(isinstance(v, number) and not isinstance(v, bool) for v in value))
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):   # bool is an int subclass: True is not a batch size
        return False
    return isinstance(value, {"int": int, "float": number, "str": str}[kind])


def _kind_of(type_text: str) -> str:
    """The kind of a field from its annotation text (``from __future__ import annotations``)."""
    for word, kind in (("tuple", "triple"), ("bool", "bool"), ("int", "int"), ("float", "float")):
        if word in type_text:
            return kind
    return "str"


def _describe(f: dataclasses.Field) -> Setting:
    m = dict(f.metadata)
    return Setting(name=f.name, default=f.default, kind=_kind_of(str(f.type)), optional="None" in str(f.type),
                   help=m.pop("help"), group=m.pop("group"), advanced=m.pop("advanced"),
                   label=m.pop("label", f.name.replace("_", " ").capitalize()), **m)


# Setting name → its description, in field order (the order of --help and the app's form).
SETTINGS: dict[str, Setting] = {f.name: _describe(f) for f in dataclasses.fields(RunConfig)}


def setting_help() -> dict[str, str]:
    """Setting name → its help (for --help and the app's tooltips)."""
    return {name: s.help for name, s in SETTINGS.items()}


__all__ = [
    "BN_MODES",
    "EMPTY_CLASS_POLICIES",
    "FFT_METHODS",
    "GROUPS",
    "METHODS",
    "NOISE_KINDS",
    "PRECISIONS",
    "SETTINGS",
    "RunConfig",
    "Setting",
    "cache_dir",
    "setting_help",
]
