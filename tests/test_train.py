"""Linear probing on cached features (turn_core.train); no images, no backbone."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from turn_core.errors import Cancelled
from turn_core.progress import CancelToken
from turn_core.train import train_linear_head


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    return None

# ------------------------------------------------------------------------------ linear head
def _blobs(n=300, d=16, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 4
    y = rng.integers(0, k, n)
    return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y


@pytest.mark.parametrize("loss", ["gce", "ce"])
def test_train_linear_head_learns_separable_problem(loss):
    x, y = _blobs()
    events = []
    w, b, hist = train_linear_head(x, y, 3, loss=loss, epochs=15, lr=0.05, batch_size=64, progress=events.append)
    assert w.shape == (3, 16) and b.shape == (3,)
    acc = float(((torch.from_numpy(x) @ w.T + b).argmax(1).numpy() == y).mean())
    assert acc > 0.95
    assert len(hist) == 15 and hist[-1] < hist[0]
    assert [e["epoch"] for e in events] == list(range(1, 16))
    assert all(e["phase"] == "lp" and e["kind"] == "epoch" for e in events)


def test_train_linear_head_min_steps_fits_small_data():
    """E_LP counts epochs: on 60 samples one 128-batch per epoch is 20 Adam steps at lr 1e-3,
    too few to fit; with at least 32 steps per epoch the same 20 epochs fit the head."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(3, 16)) * 1.5
    y = np.repeat(np.arange(3), 20)
    x = (centres[y] + rng.normal(size=(60, 16)) * 0.5).astype(np.float32)

    def train_acc(min_steps):
        w, b, hist = train_linear_head(x, y, 3, lr=1e-3, epochs=20, min_steps_per_epoch=min_steps)
        return float(np.mean((x @ w.numpy().T + b.numpy()).argmax(1) == y)), hist[-1]

    (_, loss0), (acc32, loss32) = train_acc(0), train_acc(32)
    assert loss32 < 0.5 * loss0
    assert acc32 == 1.0


def test_train_linear_head_is_seeded():
    x, y = _blobs(n=100)
    a = train_linear_head(x, y, 3, epochs=3, seed=5)
    b = train_linear_head(x, y, 3, epochs=3, seed=5)
    assert torch.equal(a[0], b[0]) and a[2] == b[2]


def test_train_linear_head_cancelled_before_start():
    x, y = _blobs(n=50)
    tok = CancelToken()
    tok.cancel()
    with pytest.raises(Cancelled):
        train_linear_head(x, y, 3, epochs=5, cancel=tok)


def test_train_linear_head_cancelled_mid_training():
    x, y = _blobs(n=200)
    tok = CancelToken()
    seen = []

    def progress(ev):
        seen.append(ev["epoch"])
        if ev["epoch"] == 2:
            tok.cancel()

    with pytest.raises(Cancelled):
        train_linear_head(x, y, 3, epochs=10, batch_size=32, cancel=tok, progress=progress)
    assert seen == [1, 2]
