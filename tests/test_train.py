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


# ------------------------------------------------------------------------------ out-of-fold probes
def _epoch_recipe_reference(features, labels, n_classes, folds=5, seed=0, **kw):
    """cross_val_linear_probs as it was before the step recipe (the numbers small runs must keep)."""
    from turn_core.train import linear_logits, softmax

    rng = np.random.default_rng(seed)
    fold_of = np.zeros(len(labels), dtype=int)
    for c in range(n_classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fold_of[idx] = np.arange(len(idx)) % folds
    x = np.asarray(features, dtype=np.float32)
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-6
    x = (x - mu) / sd
    out = np.zeros((len(labels), n_classes), dtype=np.float32)
    for f in range(folds):
        tr, te = fold_of != f, fold_of == f
        w, b, _ = train_linear_head(x[tr], labels[tr], n_classes, seed=seed + f, **kw)
        out[te] = softmax(linear_logits(x[te], w, b))
    return out


def _noisy_blobs(n, d, k=4, noise=0.2, seed=0, scale=3.0):
    """Separable blobs (float16) with ``noise`` of the labels moved to another class: (x, given, true)."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, n)
    x = (rng.normal(size=(k, d)) * scale)[true] + rng.normal(size=(n, d))
    given = true.copy()
    flip = rng.random(n) < noise
    given[flip] = (true[flip] + rng.integers(1, k, flip.sum())) % k
    return x.astype(np.float16), given, true


def test_probe_recipe_switches_above_the_threshold():
    from turn_core.train import PROBE_RECIPES, PROBE_STREAM_ABOVE, probe_recipe

    assert probe_recipe(PROBE_STREAM_ABOVE) == "epochs"
    assert probe_recipe(PROBE_STREAM_ABOVE + 1) == "steps"
    assert set(PROBE_RECIPES) == {"epochs", "steps"}


def test_cross_val_below_the_threshold_keeps_the_epoch_recipes_numbers():
    from turn_core.train import cross_val_linear_probs

    x, y, _ = _noisy_blobs(400, 16, k=3)
    kw = dict(epochs=4, lr=1e-3, batch_size=32, min_steps_per_epoch=8, seed=3)
    got = cross_val_linear_probs(x, y, 3, **kw)            # the size chooses the recipe
    ref = _epoch_recipe_reference(x, y, 3, **kw)
    assert np.array_equal(got, ref)
    assert np.array_equal(cross_val_linear_probs(x, y, 3, recipe="epochs", **kw), ref)


def test_feature_moments_match_numpy_chunk_by_chunk():
    from turn_core.train import feature_moments

    x = (np.random.default_rng(2).normal(size=(1001, 7)) * [1, 2, 3, 4, 5, 6, 0] + 5).astype(np.float16)
    mu, sd = feature_moments(x, chunk=64)
    x64 = x.astype(np.float64)
    assert mu.dtype == sd.dtype == np.float32
    assert np.allclose(mu, x64.mean(0), atol=1e-5) and np.allclose(sd, x64.std(0) + 1e-6, rtol=1e-5, atol=1e-6)
    assert sd[-1] == pytest.approx(1e-6)        # a constant dimension: only the guard remains


def test_step_recipe_finds_wrong_labels_on_separable_data(monkeypatch):
    from turn_core import train
    from turn_core.metrics import auroc
    from turn_core.train import cross_val_linear_probs

    monkeypatch.setattr(train, "PROBE_STEPS", 300)     # a small budget keeps the test fast
    x, given, true = _noisy_blobs(3000, 32, k=4, seed=1)
    p = cross_val_linear_probs(x, given, 4, lr=1e-3, batch_size=64, recipe="steps")
    assert p.shape == (3000, 4) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert np.mean(p.argmax(1) == true) > 0.95                       # out of fold, against the true labels
    assert auroc(given != true, 1 - p[np.arange(3000), given]) > 0.95
    again = cross_val_linear_probs(x, given, 4, lr=1e-3, batch_size=64, recipe="steps")
    assert np.array_equal(p, again)                                  # seeded


def test_step_recipe_streams_a_float16_memmap_without_a_float32_copy(tmp_path, monkeypatch):
    """Large N: the probe reads mini-batches and chunks from the memmap; numpy never holds
    anything near the (N, D) float32 copy the epoch recipe makes."""
    import tracemalloc

    from turn_core import train

    n, d = 30_000, 128
    x, given, true = _noisy_blobs(n, d, k=3, seed=4)
    np.save(tmp_path / "f.npy", x)
    f = np.load(tmp_path / "f.npy", mmap_mode="r")
    monkeypatch.setattr(train, "PROBE_STEPS", 150)
    monkeypatch.setattr(train, "PROBE_CHUNK_BYTES", 1 << 20)
    assert train.probe_recipe(n) == "steps"
    tracemalloc.start()
    try:
        p = train.cross_val_linear_probs(f, given, 3, lr=1e-2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    full_copy = n * d * 4
    assert peak < full_copy / 4, (peak, full_copy)
    assert np.mean(p.argmax(1) == true) > 0.9


def test_step_recipe_is_cancelled_between_steps():
    from turn_core.train import cross_val_linear_probs

    x, y, _ = _noisy_blobs(500, 8)
    tok = CancelToken()
    tok.cancel()
    with pytest.raises(Cancelled):
        cross_val_linear_probs(x, y, 4, recipe="steps", cancel=tok)


def test_unknown_probe_recipe_is_an_input_error():
    from turn_core.errors import InputError
    from turn_core.train import cross_val_linear_probs

    x, y, _ = _noisy_blobs(50, 4)
    with pytest.raises(InputError, match="probe recipe 'closed'"):
        cross_val_linear_probs(x, y, 4, recipe="closed")
