"""turn_core.loader: batches of rows from the image cache through a torch DataLoader."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from turn_core.images import DecodedImages, build_image_cache
from turn_core.loader import RowLoader, default_workers, split_batches


@pytest.fixture
def memmap(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (23, 4, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "c.npy", arr)
    return np.load(tmp_path / "c.npy", mmap_mode="r"), arr


def test_split_batches():
    parts = split_batches(np.arange(10, 20), 4)
    assert [p.tolist() for p in parts] == [[10, 11, 12, 13], [14, 15, 16, 17], [18, 19]]
    assert split_batches(np.zeros(0, np.int64), 4) == []


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_yields_the_rows_asked_for_in_order(memmap, workers):
    """Workers read the memmap by its file name (reopened there) and the batches come in order,
    pass after pass from one loader."""
    mm, arr = memmap
    loader = RowLoader(mm, workers=workers)
    for batches in ([np.array([0, 1, 2]), np.array([5, 7]), np.array([22])], [np.array([3, 4])]):
        got = list(loader.batches(batches))
        assert all(isinstance(g, torch.Tensor) and g.dtype == torch.uint8 for g in got)
        assert [g.numpy().tolist() for g in got] == [arr[b].tolist() for b in batches]


def test_loader_pickles_a_memmap_as_its_file_name(memmap):
    import pickle

    from turn_core.loader import ImageRows

    mm, arr = memmap
    blob = pickle.dumps(ImageRows(mm))
    assert len(blob) < arr.nbytes   # not a copy of the cache
    assert np.array_equal(pickle.loads(blob)[np.array([3, 9])].numpy(), arr[[3, 9]])


def test_loader_decodes_files_in_workers(tmp_path):
    from PIL import Image

    files = []
    for i in range(5):
        files.append(tmp_path / f"{i}.png")
        Image.new("RGB", (10, 8 + i), (40 * i, 7, 9)).save(files[-1])
    cached, _ = build_image_cache(files, 6, tmp_path / "cache")
    got = list(RowLoader(DecodedImages(files, 6), workers=2).batches([np.array([4, 0]), np.array([2])]))
    assert np.array_equal(got[0].numpy(), cached[[4, 0]]) and np.array_equal(got[1].numpy(), cached[[2]])


def test_default_workers():
    assert default_workers("cpu", decoding=False) == 0     # reading the memmap: no workers on CPU
    assert default_workers("cuda", decoding=False) >= 1
    assert default_workers("cpu", decoding=True) >= 1


def test_image_rows_release_the_mapped_pages_every_few_batches(tmp_path, monkeypatch):
    """Mapped pages count in RSS: a pass over a big cache hands them back every RELEASE_EVERY batches."""
    from turn_core import loader

    path = tmp_path / "cache.npy"
    np.save(path, np.arange(40 * 4 * 4 * 3, dtype=np.uint8).reshape(40, 4, 4, 3))
    released = []
    monkeypatch.setattr(loader, "release_pages", lambda images: released.append(images))
    ds = loader.ImageRows(np.load(path, mmap_mode="r"))
    monkeypatch.setattr(ds, "RELEASE_EVERY", 3)
    batches = [ds[[i, i + 1]] for i in range(7)]
    assert len(released) == 2 and released[0] is ds.images
    assert batches[2].numpy().tolist() == np.load(path)[[2, 3]].tolist()
