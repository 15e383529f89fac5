"""Synthetic label noise, for benchmarks and the built-in demo.

Every generator is a plain function ``labels -> noisy labels``:

* takes ``labels`` (int, shape (N,), values in ``[0, n_classes)``), the true labels;
* returns a NEW int64 array of shape (N,); the input is never modified, so the true labels survive;
* is fully determined by ``seed`` (``numpy.random.default_rng(seed)``): same seed, same labels;
* returns the labels unchanged at ``rate == 0``; ``rate`` must lie in ``[0, 1)`` (``InputError``).

Kinds (``NOISE_KINDS``, used by ``inject_noise``):

``symmetric``   each label flips with probability ``rate`` to a uniformly drawn *other* class.
``asymmetric``  each label flips with probability ``rate`` along a class → class map
                (``parse_class_map``: "next", "cifar100", or "a:b,c:d" pairs); classes the map
                does not mention never flip.
``instance``    instance-/part-dependent noise of Xia et al., NeurIPS 2020 (the generator TURN
                uses): the flip probability and the wrong class depend on the sample's features.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from .errors import InputError

# CIFAR-100 fine label names in label-index order (alphabetical, as in the dataset's meta file).
CIFAR100_FINE_LABELS = ["apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm"]

# Superclass (coarse label) of each fine label, index = fine label (CIFAR-100 meta file).
CIFAR100_COARSE_OF_FINE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)


# --------------------------------------------------------------------------- validation
def _check_rate(rate: float) -> float:
    try:
        rate = float(rate)
    except (TypeError, ValueError):
        raise InputError(f"noise rate {rate!r} is not a number") from None
    if not 0.0 <= rate < 1.0:  # also rejects NaN
        raise InputError(f"noise rate {rate} must lie in [0, 1)")
    return rate


def _check_labels(labels, n_classes: int) -> np.ndarray:
    """Validated copy-free int64 view of ``labels`` (callers copy before writing)."""
    n_classes = int(n_classes)
    if n_classes < 2:
        raise InputError(f"label noise needs at least 2 classes, got {n_classes}")
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise InputError(f"labels must be a 1-D array, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"labels must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
        bad = arr[(arr < 0) | (arr >= n_classes)][0]
        raise InputError(f"label {bad} is outside [0, {n_classes})")
    return arr


# --------------------------------------------------------------------------- generators
def symmetric_noise(labels, n_classes: int, rate: float, seed: int) -> np.ndarray:
    """Flip each label with probability ``rate`` to a uniformly drawn other class.

    labels: int (N,). Returns int64 (N,); a flipped label is never its own class.
    """
    y = _check_labels(labels, n_classes)
    rate = _check_rate(rate)
    rng = np.random.default_rng(seed)
    flip = rng.random(y.shape[0]) < rate
    # Adding an offset in 1..K-1 (mod K) is uniform over the K-1 other classes.
    offset = rng.integers(1, n_classes, size=y.shape[0])
    return np.where(flip, (y + offset) % n_classes, y).astype(np.int64)


def asymmetric_noise(labels, n_classes: int, rate: float, seed: int,
                     mapping: str | Mapping = "next", *, classes: list[str] | None = None
                     ) -> np.ndarray:
    """Flip each label with probability ``rate`` along a class → class map.

    labels: int (N,). mapping: a ``parse_class_map`` spec, or an already parsed
    ``{class index: class index}`` dict. classes: class names, needed for "a:b" specs
    (default "0", "1", ...). Samples of a class the map leaves out never flip, so the realised
    rate is ``rate`` times the fraction of samples whose class is mapped.
    """
    y = _check_labels(labels, n_classes)
    rate = _check_rate(rate)
    if classes is None:
        classes = [str(i) for i in range(n_classes)]
    if len(classes) != n_classes:
        raise InputError(f"{len(classes)} class names given for {n_classes} classes")
    if isinstance(mapping, Mapping) and all(isinstance(k, (int, np.integer)) for k in mapping):
        class_map = _check_index_map(mapping, n_classes)
    else:
        class_map = parse_class_map(mapping, classes)
    target = np.arange(n_classes, dtype=np.int64)  # identity for classes the map leaves out
    for src, dst in class_map.items():
        target[src] = dst
    rng = np.random.default_rng(seed)
    flip = rng.random(y.shape[0]) < rate
    return np.where(flip, target[y], y).astype(np.int64)


def _truncated_normal(rng: np.random.Generator, mean: float, sd: float, low: float, high: float,
                      size: int) -> np.ndarray:
    """Exact truncated-normal draws by rejection (acceptance >= ~50% for mean in [low, high])."""
    out = np.empty(size)
    todo = np.arange(size)
    while todo.size:
        draw = rng.normal(mean, sd, size=todo.size)
        ok = (draw >= low) & (draw <= high)
        out[todo[ok]] = draw[ok]
        todo = todo[~ok]
    return out


def instance_noise(labels, features, n_classes: int, rate: float, seed: int) -> np.ndarray:
    """Instance-dependent noise of Xia et al. (NeurIPS 2020, "Part-dependent label noise").

    labels: int (N,); features: float (N, D), e.g. flattened pixels (rows are L2-normalised here
    so the scale of the features does not matter). For each sample i:

    * flip rate q_i ~ truncated normal (mean ``rate``, sd 0.1, on [0, 1]);
    * scores = x_i · W[y_i] with W ~ N(0, 1) of shape (K, D, K), the true class's score set to
      −inf; p = q_i · softmax(scores), p[y_i] = 1 − q_i; the new label is drawn from p.

    The expected realised rate is the mean of the truncated normal, which equals ``rate`` up to
    a small upward bias when ``rate`` is within ~0.2 of 0. ``rate == 0`` returns the labels
    unchanged (the truncated normal at mean 0 would still flip ~8%).
    """
    y = _check_labels(labels, n_classes)
    rate = _check_rate(rate)
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise InputError(f"features must have shape (N={y.shape[0]}, D), got {x.shape}")
    if rate == 0.0 or y.size == 0:
        return y.copy()
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.maximum(norms, 1e-12)  # an all-zero row stays zero: uniform wrong-class choice
    rng = np.random.default_rng(seed)
    n, d = x.shape
    flip_rate = _truncated_normal(rng, rate, 0.1, 0.0, 1.0, n)
    w = rng.standard_normal((n_classes, d, n_classes))
    scores = np.empty((n, n_classes))
    for c in range(n_classes):  # per class, not W[y] at once: (N, D, K) would not fit in memory
        rows = y == c
        scores[rows] = x[rows] @ w[c]
    scores[np.arange(n), y] = -np.inf
    scores -= scores.max(axis=1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=1, keepdims=True)
    p *= flip_rate[:, None]
    p[np.arange(n), y] = 1.0 - flip_rate
    # Inverse-CDF sampling of one class per row.
    cdf = np.cumsum(p, axis=1)
    u = rng.random(n)[:, None] * cdf[:, -1:]
    new = (u >= cdf).sum(axis=1)
    return np.minimum(new, n_classes - 1).astype(np.int64)


# --------------------------------------------------------------------------- class maps
def _check_index_map(mapping: Mapping, n_classes: int) -> dict[int, int]:
    out: dict[int, int] = {}
    for k, v in mapping.items():
        k, v = int(k), int(v)
        if not (0 <= k < n_classes and 0 <= v < n_classes):
            raise InputError(f"class map entry {k}:{v} is outside [0, {n_classes})")
        if k == v:
            raise InputError(f"class map entry {k}:{v} maps a class to itself")
        out[k] = v
    return out


def parse_class_map(spec: str | Mapping, classes: list[str]) -> dict[int, int]:
    """Parse an asymmetric-noise class map into ``{source class index: target class index}``.

    spec:
      * ``"next"``: class i → class (i + 1) mod K;
      * ``"cifar100"``: the standard CIFAR-100 asymmetric noise: each class → the next class of
        the same superclass (circularly, in fine-label order). Needs the 100 CIFAR-100 fine
        labels in their usual (alphabetical) order;
      * ``"a:b,c:d"``: class names, a → b and c → d; surrounding whitespace is ignored;
      * a dict ``{name: name}``.
    classes: class names, index = class index.
    Raises ``InputError`` naming the bad entry (unknown class, class mapped to itself, a source
    given twice, malformed pair).
    """
    classes = [str(c) for c in classes]
    k = len(classes)
    if k < 2:
        raise InputError(f"a class map needs at least 2 classes, got {k}")
    index = {name: i for i, name in enumerate(classes)}

    if isinstance(spec, Mapping):
        pairs = [(str(a), str(b), f"{a}:{b}") for a, b in spec.items()]
    else:
        text = str(spec).strip()
        if text.lower() == "next":
            return {i: (i + 1) % k for i in range(k)}
        if text.lower() == "cifar100":
            return _cifar100_map(classes)
        if not text:
            raise InputError("empty class map: use 'next', 'cifar100' or pairs like 'cat:dog,dog:cat'")
        pairs = []
        for entry in text.split(","):
            if entry.count(":") != 1:
                raise InputError(f"class map entry {entry.strip()!r} is not of the form source:target")
            a, b = entry.split(":")
            pairs.append((a.strip(), b.strip(), entry.strip()))

    out: dict[int, int] = {}
    for a, b, entry in pairs:
        for name in (a, b):
            if name not in index:
                raise InputError(f"class map entry {entry!r}: unknown class {name!r}")
        if a == b:
            raise InputError(f"class map entry {entry!r} maps a class to itself")
        if index[a] in out:
            raise InputError(f"class map entry {entry!r}: class {a!r} is mapped twice")
        out[index[a]] = index[b]
    if not out:
        raise InputError("empty class map")
    return out


def _cifar100_map(classes: list[str]) -> dict[int, int]:
    if len(classes) != 100:
        raise InputError(f"class map 'cifar100' needs the 100 CIFAR-100 classes, got {len(classes)}")
    # Accept the names, or plain indices "0".."99" (a manifest that stores label numbers).
    if classes != list(CIFAR100_FINE_LABELS) and classes != [str(i) for i in range(100)]:
        bad = next((c for c, want in zip(classes, CIFAR100_FINE_LABELS) if c != want), classes[0])
        raise InputError(f"class map 'cifar100' needs the CIFAR-100 fine labels in their usual "
                         f"order; class {bad!r} is not where CIFAR-100 has it")
    members: dict[int, list[int]] = {}
    for fine, coarse in enumerate(CIFAR100_COARSE_OF_FINE):
        members.setdefault(coarse, []).append(fine)
    out = {}
    for group in members.values():
        for j, fine in enumerate(group):
            out[fine] = group[(j + 1) % len(group)]
    return out


# --------------------------------------------------------------------------- registry
def _none(labels, n_classes, rate, seed, **_):
    _check_rate(rate)
    return _check_labels(labels, n_classes).copy()


def _symmetric(labels, n_classes, rate, seed, **_):
    return symmetric_noise(labels, n_classes, rate, seed)


def _asymmetric(labels, n_classes, rate, seed, *, mapping="next", classes=None, **_):
    return asymmetric_noise(labels, n_classes, rate, seed, mapping, classes=classes)


def _instance(labels, n_classes, rate, seed, *, features=None, **_):
    if features is None:
        raise InputError("instance noise needs features (e.g. flattened pixels)")
    return instance_noise(labels, features, n_classes, rate, seed)


NOISE_KINDS: dict[str, Callable[..., np.ndarray]] = {
    "none": _none,
    "symmetric": _symmetric,
    "asymmetric": _asymmetric,
    "instance": _instance,
}


def inject_noise(kind: str | None, labels, n_classes: int, rate: float, seed: int, *,
                 features=None, mapping: str | Mapping = "next",
                 classes: list[str] | None = None) -> tuple[np.ndarray, float]:
    """Apply the noise generator ``kind`` (a ``NOISE_KINDS`` key; None means "none").

    Returns ``(noisy labels int64 (N,), realised rate)`` where the realised rate is the
    fraction of labels that differ from ``labels`` (0.0 for an empty array).
    """
    name = "none" if kind is None else str(kind).strip().lower()
    if name not in NOISE_KINDS:
        raise InputError(f"noise kind {kind!r} is not one of {', '.join(NOISE_KINDS)}")
    truth = _check_labels(labels, n_classes)
    noisy = NOISE_KINDS[name](labels, n_classes, rate, seed, features=features, mapping=mapping,
                              classes=classes)
    realised = float(np.mean(noisy != truth)) if truth.size else 0.0
    return noisy, realised


__all__ = [
    "CIFAR100_COARSE_OF_FINE",
    "CIFAR100_FINE_LABELS",
    "NOISE_KINDS",
    "asymmetric_noise",
    "inject_noise",
    "instance_noise",
    "parse_class_map",
    "symmetric_noise",
]
