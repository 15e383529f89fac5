"""turn_core.knn: exact search against brute force, the approximate index's recall, the choice."""
from __future__ import annotations

import numpy as np
import pytest

from turn_core import knn


def _clustered(n=600, d=64, k_classes=6, seed=0, spread=0.6):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k_classes, d))
    y = rng.integers(0, k_classes, n)
    return (centers[y] + spread * rng.normal(size=(n, d))).astype(np.float32), y


def _brute(f, k):
    u = f / np.linalg.norm(f, axis=1, keepdims=True)
    sims = u @ u.T
    np.fill_diagonal(sims, -np.inf)
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(sims, idx, axis=1)


@pytest.mark.parametrize("chunk", [4096, 37])
def test_exact_matches_brute_force(chunk):
    f, _ = _clustered()
    idx, sims = knn.search(f, 7, method="exact", device="cpu", chunk=chunk)
    b_idx, b_sims = _brute(f, 7)
    assert idx.shape == (600, 7) and idx.dtype == np.int64 and sims.dtype == np.float32
    assert np.allclose(sims, b_sims, atol=1e-5)
    assert knn.recall_at_k(idx, b_idx) > 0.999          # ties may swap, similarities may not
    assert not np.any(idx == np.arange(600)[:, None])    # never your own neighbour


def test_exact_excludes_self_even_for_duplicates():
    f = np.repeat(np.eye(4, dtype=np.float32), 2, axis=0)   # every row has one exact twin
    idx, sims = knn.search(f, 1, method="exact", device="cpu")
    assert idx[:, 0].tolist() == [1, 0, 3, 2, 5, 4, 7, 6]
    assert np.allclose(sims, 1.0)


@pytest.mark.parametrize("method", ["bf16-rerank", "hnsw"])
def test_fast_methods_recall_against_exact(method):
    # d below PCA_DIMS: this checks the index and the re-rank; the PCA step's recall on real
    # 1280-d features is measured by bench/knn.py (isotropic noise would understate it).
    f, _ = _clustered(n=3000, d=100, k_classes=10, spread=1.0)
    exact, _ = knn.search(f, 10, method="exact", device="cpu")
    approx, sims = knn.search(f, 10, method=method, device="cpu")
    assert approx.shape == exact.shape
    assert knn.recall_at_k(approx, exact) >= 0.95
    assert np.all(np.diff(sims, axis=1) <= 1e-6)          # best first
    assert not np.any(approx == np.arange(3000)[:, None])


def test_hnsw_projects_wide_features_and_keeps_recall_on_structured_data():
    # A decaying spectrum, like a CNN's features: PCA keeps what the neighbours depend on.
    rng = np.random.default_rng(3)
    f, _ = _clustered(n=2000, d=64, k_classes=10, spread=0.8, seed=3)
    wide = np.concatenate([f, 0.01 * rng.normal(size=(2000, 200)).astype(np.float32)], axis=1)
    assert wide.shape[1] > knn.PCA_DIMS
    exact, _ = knn.search(wide, 10, method="exact", device="cpu")
    approx, _ = knn.search(wide, 10, method="hnsw", device="cpu")
    assert knn.recall_at_k(approx, exact) >= 0.95


def test_recall_detects_a_wrong_index():
    f, _ = _clustered(n=300)
    exact, _ = knn.search(f, 5, method="exact", device="cpu")
    shuffled = np.random.default_rng(1).permutation(exact)   # rows paired with another sample's
    assert knn.recall_at_k(shuffled, exact) < 0.5


def test_choose_method_by_size_and_device(monkeypatch):
    import importlib.util

    assert knn.choose_method(1000) == "exact"
    assert knn.choose_method(knn.EXACT_MAX + 1) == "hnsw"
    assert knn.choose_method(10 * knn.EXACT_MAX, "cuda") == "exact"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "faiss" else real(name, *a))
    assert knn.choose_method(knn.EXACT_MAX + 1) == "bf16-rerank"      # no faiss: no crash


def test_small_inputs_and_unknown_method():
    one = np.ones((1, 3), dtype=np.float32)
    idx, sims = knn.search(one, 5)
    assert idx.shape == (1, 0) and sims.shape == (1, 0)
    idx, _ = knn.search(np.eye(3, dtype=np.float32), 10, method="exact", device="cpu")
    assert idx.shape == (3, 2)
    with pytest.raises(ValueError, match="exact"):
        knn.search(np.eye(3, dtype=np.float32), 1, method="nope")


def test_float16_memmap_input(tmp_path):
    f, _ = _clustered(n=200)
    path = tmp_path / "f.npy"
    np.save(path, f.astype(np.float16))
    mm = np.load(path, mmap_mode="r")
    idx, _ = knn.search(mm, 4, method="exact", device="cpu")
    ref, _ = knn.search(f.astype(np.float16).astype(np.float32), 4, method="exact", device="cpu")
    assert np.array_equal(idx, ref)


def test_choices_are_auto_and_the_registry():
    assert knn.CHOICES == ("auto", *knn.METHODS)
    assert {"exact", "bf16-rerank", "hnsw"} <= set(knn.METHODS)


def test_a_capped_block_gives_the_same_neighbours(monkeypatch):
    f, _ = _clustered(n=500)
    want = knn.search(f, 6, method="exact", device="cpu")
    monkeypatch.setattr(knn, "BLOCK_FLOATS", 500 * 3)        # 3 rows a block instead of 2048
    import torch

    seen = []
    real = torch.topk
    monkeypatch.setattr(torch, "topk", lambda x, *a, **k: seen.append(x.shape[0]) or real(x, *a, **k))
    got = knn.search(f, 6, method="exact", device="cpu")
    assert max(seen) == 3 and len(seen) == 167
    assert np.array_equal(got[0], want[0]) and np.allclose(got[1], want[1])


def test_hnsw_without_faiss_names_the_package(monkeypatch):
    import importlib.util

    from turn_core.errors import InputError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "faiss" else real(name, *a))
    with pytest.raises(InputError, match="faiss"):
        knn.search(np.eye(4, dtype=np.float32), 2, method="hnsw")


def test_hnsw_recall_on_clustered_wide_features_at_k_10():
    # Many small clusters in 256-d (above PCA_DIMS, so the projection is part of what is checked):
    # the index must find ≥ 95 % of the exact 10 neighbours.
    f, _ = _clustered(n=4000, d=256, k_classes=40, spread=1.5, seed=5)
    exact, _ = knn.search(f, 10, method="exact", device="cpu")
    approx, sims = knn.search(f, 10, method="hnsw", device="cpu")
    assert knn.recall_at_k(approx, exact) >= 0.95
    assert np.all(np.diff(sims, axis=1) <= 1e-6)


def test_exact_on_a_gpu_matches_the_cpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    f, _ = _clustered(n=3000, d=64)
    assert knn.choose_method(10 * knn.EXACT_MAX, "cuda:0") == "exact"
    cpu_idx, cpu_sims = knn.search(f, 10, method="exact", device="cpu")
    gpu_idx, gpu_sims = knn.search(f, 10, device="cuda")          # "auto" on a GPU: exact there
    assert np.allclose(gpu_sims, cpu_sims, atol=1e-4)
    assert knn.recall_at_k(gpu_idx, cpu_idx) > 0.999
