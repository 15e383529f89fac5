"""Thin helpers over ``torch.distributed`` for runs started by torchrun.

``torchrun --nproc_per_node=N -m turn_core run ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment (torchrun's multi-node form adds the
nodes); ``world_from_env`` reads them. Every rank runs the same phases. The feature and loss
passes are sharded by global batch (rank r computes batches r, r + N, ...: each batch is the very
batch one process would compute) and gathered back in sample order; the training steps split
each global batch into contiguous shares. Rank 0 decides what one process decides alone (the
GMM, the clean-set draw) and broadcasts it. A run of one process needs none of this: every
helper is then the identity and no process group exists.

No launcher and no collective of our own: torchrun starts the processes, torch.distributed
moves the tensors (gloo on CPU, NCCL on GPUs).
"""
from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

# A rank can wait this long for another (rank 0 builds the image cache while the others wait).
TIMEOUT = datetime.timedelta(hours=4)


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes: ``rank`` of ``size``, ``local_rank`` on
    its machine (its GPU index)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run directory and the progress."""
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's contiguous part of a global batch of ``n`` samples (sizes differ by at
        most one; a rank gets none when n < size). No sample is in two shares."""
        lo, hi = (n * self.rank) // self.size, (n * (self.rank + 1)) // self.size
        return slice(lo, hi)

    def sum(self, value: float) -> float:
        """``value`` summed over all ranks (float64)."""
        if self.size == 1:
            return float(value)
        t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
        torch.distributed.all_reduce(t)
        return float(t.item())


def world_from_env(env: Mapping[str, str] | None = None) -> World:
    """The World torchrun describes in ``env`` (default ``os.environ``); one process without it."""
    env = os.environ if env is None else env
    size = int(env.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return World()
    return World(int(env.get("RANK", "0")), size, int(env.get("LOCAL_RANK", "0")))


def init(world: World, device: torch.device) -> None:
    """Join the process group (NCCL for GPUs, gloo on CPU) when there is more than one rank."""
    if world.size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend, rank=world.rank, world_size=world.size, timeout=TIMEOUT)


def teardown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _comm_device() -> torch.device:
    """Where collective tensors live: the rank's GPU under NCCL, else the CPU."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier(world: World) -> None:
    if world.size > 1:
        torch.distributed.barrier()


@contextlib.contextmanager
def local_first(world: World) -> Iterator[None]:
    """Local rank 0 runs the block first (it writes the demo files, the image cache); the other
    ranks of its machine run it after, finding what it wrote."""
    if world.local_rank != 0:
        barrier(world)
    yield
    if world.local_rank == 0:
        barrier(world)


def pass_positions(n: int, batch_size: int, world: World) -> np.ndarray:
    """Positions (into a pass over ``n`` samples) this rank computes: global batches rank,
    rank + size, ... of ``batch_size`` each, in order (all of 0..n-1 for one process)."""
    starts = np.arange(world.rank * batch_size, n, world.size * batch_size)
    if len(starts) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(s, min(s + batch_size, n)) for s in starts]).astype(np.int64)


def gather_pass(local: np.ndarray, n: int, batch_size: int, world: World) -> np.ndarray:
    """Every rank's ``local`` (its ``pass_positions`` rows, (n_r, ...)) put back in sample
    order: (n, ...) on every rank. One process: ``local`` itself."""
    if world.size == 1:
        return local
    device = _comm_device()
    parts = [pass_positions(n, batch_size, World(r, world.size)) for r in range(world.size)]
    longest = max(len(p) for p in parts)
    t = torch.zeros((longest, *local.shape[1:]), dtype=torch.from_numpy(local[:0]).dtype, device=device)
    t[:len(local)] = torch.from_numpy(np.ascontiguousarray(local)).to(device)
    gathered = [torch.empty_like(t) for _ in range(world.size)]
    torch.distributed.all_gather(gathered, t)
    out = np.empty((n, *local.shape[1:]), dtype=local.dtype)
    for pos, g in zip(parts, gathered):
        out[pos] = g[:len(pos)].cpu().numpy()
    return out


def broadcast_array(arr: np.ndarray | None, world: World) -> np.ndarray:
    """Rank 0's int64 array (any length) on every rank; ``arr`` is ignored on the others."""
    if world.size == 1:
        return np.asarray(arr, dtype=np.int64)
    device = _comm_device()
    n = torch.tensor([0 if arr is None else len(arr)], dtype=torch.int64, device=device)
    torch.distributed.broadcast(n, src=0)
    data = (torch.from_numpy(np.asarray(arr, dtype=np.int64)).to(device) if world.main
            else torch.empty(int(n.item()), dtype=torch.int64, device=device))
    torch.distributed.broadcast(data, src=0)
    return data.cpu().numpy()


def wrap_model(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """``model`` inside DistributedDataParallel when there is more than one rank (its
    construction copies rank 0's parameters to every rank), else ``model``.

    Batch-norm buffers are not broadcast each step: BN is folded or frozen (eval mode), so
    there are no batch statistics to share."""
    if world.size == 1:
        return model
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # torch >= 2.14 names the switch forward_sync_buffers (broadcast_buffers warns there)
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    no_sync = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
    return DistributedDataParallel(model, device_ids=ids, **no_sync)


__all__ = ["TIMEOUT", "World", "barrier", "broadcast_array", "gather_pass", "init", "local_first",
           "pass_positions", "teardown", "world_from_env", "wrap_model"]
