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


# ------------------------------------------------------------------------------ batches on the device
def _loop_augment(x, gen, flip=True):
    """The per-sample crop loop the batched gather replaced (the reference it must equal)."""
    import torch.nn.functional as F

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


@pytest.mark.parametrize("flip", [True, False])
def test_augment_is_the_crop_loop_batched(flip):
    from turn_core.train import augment

    x = torch.randn(16, 3, 12, 12)
    a = augment(x, torch.Generator().manual_seed(4), flip)
    b = _loop_augment(x, torch.Generator().manual_seed(4), flip)
    assert torch.equal(a, b)
    assert a.is_contiguous(memory_format=torch.channels_last)


def test_to_input_normalises_crops_and_keeps_channels_last():
    """Cropping the uint8 batch then normalising gives the values of normalising then cropping."""
    from turn_core.train import augment, crop_flip_indices, make_runtime, to_input

    rt = make_runtime(torch.device("cpu"), (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), 8)
    x8 = np.random.default_rng(1).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    plain = to_input(x8, rt)
    assert plain.shape == (6, 3, 8, 8) and plain.is_contiguous(memory_format=torch.channels_last)
    expect = (torch.from_numpy(x8).permute(0, 3, 1, 2).float() / 255 - rt.mean) / rt.std
    assert torch.allclose(plain, expect, atol=1e-6)
    crop = crop_flip_indices(6, 8, 8, torch.Generator().manual_seed(2))
    cropped = to_input(x8, rt, crop)
    assert torch.equal(cropped, augment(plain, torch.Generator().manual_seed(2)))
    assert cropped.is_contiguous(memory_format=torch.channels_last)


def test_linear_logits_are_the_heads_float32_output():
    from turn_core.train import linear_logits

    x, _ = _blobs(n=50)
    w, b = torch.randn(3, 16), torch.randn(3)
    z = linear_logits(x, w, b, chunk=7)
    assert z.dtype == np.float32 and z.shape == (50, 3)
    assert np.allclose(z, x @ w.numpy().T + b.numpy(), atol=1e-5)


def test_precision_registry():
    from turn_core.train import PRECISIONS, precision_name

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert PRECISIONS["fp32"](cpu) == (None, None)
    assert PRECISIONS["bf16"](cpu) == (torch.bfloat16, torch.bfloat16)
    assert PRECISIONS["auto"](cuda) == (torch.bfloat16, torch.bfloat16)
    assert PRECISIONS["auto"](cpu)[1] is None        # CPU training stays fp32 (measured slower in bf16)
    assert [precision_name(d) for d in (None, torch.bfloat16)] == ["fp32", "bf16"]


def test_fft_epoch_shares_a_global_batch_as_one_process_would(monkeypatch):
    """Two ranks' shares, their scaled losses summed, give one process's gradient of the
    global batch mean (what DDP's gradient average then computes)."""
    from turn_core.distributed import World

    z = torch.randn(10, 4, requires_grad=True)
    y = torch.randint(0, 4, (10,))
    full = torch.nn.functional.cross_entropy(z, y)
    (g_full,) = torch.autograd.grad(full, z)
    g = torch.zeros_like(z)
    for rank in range(2):
        sh = World(rank, 2).share(10)
        loss = torch.nn.functional.cross_entropy(z[sh], y[sh]) * (len(y[sh]) * 2 / 10)
        g += torch.autograd.grad(loss, z)[0] / 2          # DDP averages over the 2 ranks
    assert torch.allclose(g, g_full, atol=1e-7)
