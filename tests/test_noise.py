"""turn_core.noise: seeded synthetic label noise; the truth is never modified."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turn_core.errors import InputError
from turn_core.noise import (
    CIFAR100_COARSE_OF_FINE,
    CIFAR100_FINE_LABELS,
    NOISE_KINDS,
    asymmetric_noise,
    inject_noise,
    instance_noise,
    parse_class_map,
    symmetric_noise,
)

QUICK = settings(max_examples=30, deadline=None)


def _labels(n: int, k: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, k, size=n).astype(np.int64)


def _within_binomial(realised: float, rate: float, n: int, sigmas: float = 5.0) -> bool:
    sd = np.sqrt(max(rate * (1 - rate), 1e-12) / n)
    return abs(realised - rate) <= sigmas * sd + 1.0 / n


# --------------------------------------------------------------------------- symmetric
@QUICK
@given(k=st.integers(2, 20), rate=st.floats(0.0, 0.95), seed=st.integers(0, 2**31 - 1))
def test_symmetric_rate_truth_and_no_self_flip(k, rate, seed):
    y = _labels(4000, k, seed)
    before = y.copy()
    noisy = symmetric_noise(y, k, rate, seed)
    assert np.array_equal(y, before), "input labels were modified"
    assert noisy is not y and noisy.dtype == np.int64 and noisy.shape == y.shape
    assert noisy.min() >= 0 and noisy.max() < k
    flipped = noisy != y
    assert _within_binomial(flipped.mean(), rate, len(y))
    # Same seed, same labels.
    assert np.array_equal(noisy, symmetric_noise(y, k, rate, seed))


def test_symmetric_uniform_over_other_classes():
    k = 5
    y = np.zeros(50_000, dtype=np.int64)
    noisy = symmetric_noise(y, k, 0.5, seed=3)
    counts = np.bincount(noisy[noisy != 0], minlength=k)[1:]
    expected = (noisy != 0).sum() / (k - 1)
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))


def test_different_seeds_differ_for_large_n():
    y = _labels(5000, 10, 0)
    for fn in (lambda s: symmetric_noise(y, 10, 0.3, s),
               lambda s: asymmetric_noise(y, 10, 0.3, s),
               lambda s: instance_noise(y, np.random.default_rng(0).random((5000, 8)), 10, 0.3, s)):
        assert not np.array_equal(fn(1), fn(2))


@pytest.mark.parametrize("kind", ["symmetric", "asymmetric", "instance", "none"])
def test_rate_zero_is_identity(kind):
    y = _labels(500, 4, 1)
    noisy, realised = inject_noise(kind, y, 4, 0.0, 7, features=np.ones((500, 3)))
    assert np.array_equal(noisy, y) and realised == 0.0
    assert noisy is not y


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan"), "abc"])
def test_rate_outside_range_raises(rate):
    with pytest.raises(InputError, match="rate"):
        symmetric_noise(np.array([0, 1]), 2, rate, 0)


def test_bad_labels_raise():
    with pytest.raises(InputError, match="label 5"):
        symmetric_noise(np.array([0, 5]), 3, 0.1, 0)
    with pytest.raises(InputError, match="at least 2 classes"):
        symmetric_noise(np.array([0, 0]), 1, 0.1, 0)


# --------------------------------------------------------------------------- asymmetric
@QUICK
@given(k=st.integers(2, 12), rate=st.floats(0.0, 0.95), seed=st.integers(0, 2**31 - 1))
def test_asymmetric_next_follows_map(k, rate, seed):
    y = _labels(3000, k, seed)
    before = y.copy()
    noisy = asymmetric_noise(y, k, rate, seed, "next")
    assert np.array_equal(y, before)
    changed = noisy != y
    assert np.array_equal(noisy[changed], (y[changed] + 1) % k)
    assert _within_binomial(changed.mean(), rate, len(y))
    assert np.array_equal(noisy, asymmetric_noise(y, k, rate, seed, "next"))


def test_asymmetric_partial_map_leaves_other_classes():
    classes = ["cat", "dog", "truck"]
    y = np.repeat([0, 1, 2], 2000)
    noisy = asymmetric_noise(y, 3, 0.4, 0, "cat:dog", classes=classes)
    assert np.all(noisy[y != 0] == y[y != 0])
    assert set(np.unique(noisy[y == 0])) == {0, 1}
    assert _within_binomial((noisy[y == 0] != 0).mean(), 0.4, 2000)


def test_asymmetric_accepts_parsed_index_map():
    y = np.repeat([0, 1, 2], 1000)
    noisy = asymmetric_noise(y, 3, 0.5, 0, {2: 0})
    assert set(np.unique(noisy[y == 2])) == {0, 2} and np.all(noisy[y < 2] == y[y < 2])


# --------------------------------------------------------------------------- instance
@QUICK
@given(rate=st.floats(0.25, 0.75), seed=st.integers(0, 2**31 - 1), k=st.integers(2, 10))
def test_instance_rate_truth_and_determinism(rate, seed, k):
    n = 3000
    y = _labels(n, k, seed)
    x = np.random.default_rng(seed + 1).normal(size=(n, 16))
    y0, x0 = y.copy(), x.copy()
    noisy = instance_noise(y, x, k, rate, seed)
    assert np.array_equal(y, y0) and np.array_equal(x, x0)
    assert noisy.min() >= 0 and noisy.max() < k
    # q_i varies per sample (sd 0.1), so allow the binomial error plus the truncation bias.
    assert abs((noisy != y).mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / n) + 0.01
    assert np.array_equal(noisy, instance_noise(y, x, k, rate, seed))


def test_instance_depends_on_features():
    """Samples with the same features and class share their flip distribution."""
    n, k = 6000, 5
    y = np.zeros(n, dtype=np.int64)
    x = np.zeros((n, 4))
    x[: n // 2, 0] = 1.0  # two groups of identical points
    x[n // 2:, 1] = 1.0
    noisy = instance_noise(y, x, k, 0.5, seed=0)
    a = np.bincount(noisy[: n // 2], minlength=k)[1:] / (n // 2)
    b = np.bincount(noisy[n // 2:], minlength=k)[1:] / (n // 2)
    assert np.abs(a - b).max() > 0.05, "wrong-class distribution should depend on the features"
    assert np.all(noisy[noisy != 0] != 0)


def test_instance_needs_matching_features():
    with pytest.raises(InputError, match="features"):
        instance_noise(np.array([0, 1, 0]), np.zeros((2, 3)), 2, 0.2, 0)
    with pytest.raises(InputError, match="features"):
        inject_noise("instance", np.array([0, 1]), 2, 0.2, 0)


# --------------------------------------------------------------------------- class maps
def test_parse_next_and_pairs():
    assert parse_class_map("next", ["a", "b", "c"]) == {0: 1, 1: 2, 2: 0}
    assert parse_class_map(" cat : dog , dog:cat", ["cat", "dog", "x"]) == {0: 1, 1: 0}
    assert parse_class_map({"x": "cat"}, ["cat", "dog", "x"]) == {2: 0}


@pytest.mark.parametrize("spec, match", [
    ("cat:lion", "'lion'"),
    ("cat:cat", "cat:cat"),
    ("cat:dog,cat:x", "mapped twice"),
    ("cat-dog", "cat-dog"),
    ("cat:dog:x", "cat:dog:x"),
    ("", "empty"),
])
def test_parse_bad_entries_name_them(spec, match):
    with pytest.raises(InputError, match=match):
        parse_class_map(spec, ["cat", "dog", "x"])


def test_cifar100_map_within_superclass_cycles():
    m = parse_class_map("cifar100", CIFAR100_FINE_LABELS)
    assert len(m) == 100 and sorted(m.values()) == list(range(100))
    coarse = CIFAR100_COARSE_OF_FINE
    assert all(coarse[a] == coarse[b] and a != b for a, b in m.items())
    flowers = {"orchid", "poppy", "rose", "sunflower", "tulip"}
    idx = {n: i for i, n in enumerate(CIFAR100_FINE_LABELS)}
    assert {CIFAR100_FINE_LABELS[m[idx[f]]] for f in flowers} == flowers
    assert CIFAR100_FINE_LABELS[m[idx["orchid"]]] == "poppy"
    # Label indices as names work too (manifests storing numbers).
    assert parse_class_map("cifar100", [str(i) for i in range(100)]) == m


def test_cifar100_map_needs_cifar100_classes():
    with pytest.raises(InputError, match="100"):
        parse_class_map("cifar100", ["a", "b"])
    wrong = list(CIFAR100_FINE_LABELS)
    wrong[3] = "panda"
    with pytest.raises(InputError, match="panda"):
        parse_class_map("cifar100", wrong)


_name = st.text(st.characters(blacklist_characters=",:", blacklist_categories=("Cs",)),
                min_size=1, max_size=8).map(str.strip).filter(bool)


@QUICK
@given(names=st.lists(_name, min_size=2, max_size=8, unique=True), data=st.data())
def test_parse_pairs_round_trip(names, data):
    k = len(names)
    targets = data.draw(st.lists(st.integers(0, k - 1), min_size=k, max_size=k))
    expected = {i: t for i, t in enumerate(targets) if t != i}
    if not expected:
        return
    spec = ",".join(f" {names[i]}:{names[t]} " for i, t in expected.items())
    assert parse_class_map(spec, names) == expected


# --------------------------------------------------------------------------- inject_noise
def test_inject_noise_registry_and_realised_rate():
    assert set(NOISE_KINDS) >= {"symmetric", "asymmetric", "instance", "none"}
    y = _labels(5000, 10, 0)
    noisy, realised = inject_noise("symmetric", y, 10, 0.3, 0)
    assert realised == pytest.approx((noisy != y).mean())
    assert _within_binomial(realised, 0.3, 5000)
    noisy2, _ = inject_noise("asymmetric", y, 10, 0.3, 0, mapping="0:1",
                             classes=[str(i) for i in range(10)])
    assert np.all(noisy2[y != 0] == y[y != 0])
    with pytest.raises(InputError, match="gaussian"):
        inject_noise("gaussian", y, 10, 0.3, 0)
    assert inject_noise(None, y, 10, 0.0, 0)[1] == 0.0
