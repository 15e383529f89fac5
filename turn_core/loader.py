"""Batches of uint8 images for the passes: a torch ``DataLoader`` over an image array by row.

The array is the decoded cache (an (M, S, S, 3) uint8 memmap, turn_core.images) or, when the
cache would not fit on the disk, ``images.DecodedImages``, which decodes the files when a batch
is asked for. Either way a batch is a list of rows; the loader reads ``images[rows]`` in one
call (one contiguous memmap read for sorted rows) and hands back a (B, S, S, 3) uint8 tensor,
pinned when it goes to a GPU. Normalising, augmenting and the layout change happen on the device
(turn_core.train), so workers move bytes only.

``RowLoader`` keeps one ``DataLoader`` per image array for the whole run: its batch list is
replaced before each pass, so persistent workers live across every pass and epoch.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .images import release_pages


class ImageRows(torch.utils.data.Dataset):
    """``dataset[rows]`` = ``images[rows]`` as a (B, S, S, 3) uint8 tensor, rows (B,) int.

    A memmap travels to worker processes as its file name and is reopened there (pickling a
    memmap would copy the whole cache into every worker)."""

    # Batches between two ``images.release_pages``: mapped pages count in RSS, so a pass over a
    # 1M-image cache would otherwise show the whole cache (150 GB at 224 px) as resident.
    RELEASE_EVERY = 64

    def __init__(self, images):
        self.images = images
        self._reads = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, rows) -> torch.Tensor:
        batch = torch.from_numpy(np.ascontiguousarray(self.images[np.asarray(rows)]))
        self._reads += 1
        if self._reads % self.RELEASE_EVERY == 0:
            release_pages(self.images)
        return batch

    def __getstate__(self) -> dict:
        if isinstance(self.images, np.memmap) and self.images.filename:
            return {"memmap": os.fspath(self.images.filename)}
        return {"images": self.images}

    def __setstate__(self, state: dict) -> None:
        self.images = (np.load(state["memmap"], mmap_mode="r", allow_pickle=False)
                       if "memmap" in state else state["images"])
        self._reads = 0


class _Batches(torch.utils.data.Sampler):
    """The current pass's batches (each an array of rows); replaced between passes."""

    def __init__(self):
        self.batches: list[np.ndarray] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def default_workers(device_type: str, decoding: bool) -> int:
    """Worker processes of the loader when the ``loader_workers`` setting is unset.

    Reading rows of the memmap takes microseconds: on a CPU run, workers would only take cores
    from the model (0, the main process reads). A GPU run or decoding files needs real workers.
    """
    cores = os.cpu_count() or 1
    if decoding:
        return max(1, min(8, cores - 1)) if device_type == "cuda" or cores > 2 else 1
    return min(8, cores) if device_type == "cuda" else 0


class RowLoader:
    """One DataLoader over ``images`` (anything indexed by a row array: memmap, DecodedImages).

    workers: worker processes (0 = the main process reads); pin: pinned host memory (CUDA);
    prefetch: batches each worker prepares ahead. ``batches(list of row arrays)`` yields one
    (B, S, S, 3) uint8 tensor per batch, in order."""

    def __init__(self, images, *, workers: int = 0, pin: bool = False, prefetch: int = 2):
        self.images = images
        self._sampler = _Batches()
        extra = {"prefetch_factor": prefetch, "persistent_workers": True} if workers > 0 else {}
        self._loader = torch.utils.data.DataLoader(ImageRows(images), sampler=self._sampler, batch_size=None,
                                                   num_workers=workers, pin_memory=pin, **extra)

    def batches(self, batches: Sequence[np.ndarray]) -> Iterator[torch.Tensor]:
        self._sampler.batches = [np.asarray(b, dtype=np.int64) for b in batches]
        return iter(self._loader)


def split_batches(rows: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """``rows`` (N,) cut into consecutive batches of ``batch_size`` (the last may be short)."""
    rows = np.asarray(rows, dtype=np.int64)
    return [rows[s:s + batch_size] for s in range(0, len(rows), batch_size)]


__all__ = ["ImageRows", "RowLoader", "default_workers", "split_batches"]
