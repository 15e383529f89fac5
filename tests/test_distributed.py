"""turn_core.distributed: the shares of a global batch, the sharded passes, and a real torchrun.

The last test starts ``torchrun --nproc_per_node=2`` (gloo, 2 CPU processes) on the tiny demo and
compares it with one process on the same seed: the same clean set in every epoch, the same flags
(at least 97 %) and suspicion (Spearman at least 0.97).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from turn_core.distributed import World, broadcast_array, gather_pass, pass_positions, world_from_env

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.parametrize("n,size", [(10, 2), (3, 4), (128, 3), (0, 2)])
def test_shares_split_a_global_batch_once(n, size):
    parts = [np.arange(n)[World(r, size).share(n)] for r in range(size)]
    assert np.array_equal(np.concatenate(parts), np.arange(n))   # contiguous, in order, none twice
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("n,batch,size", [(10, 3, 2), (7, 4, 3), (64, 64, 2), (5, 8, 2)])
def test_pass_positions_are_whole_batches_covering_every_sample_once(n, batch, size):
    parts = [pass_positions(n, batch, World(r, size)) for r in range(size)]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))
    for r, p in enumerate(parts):   # rank r holds global batches r, r + size, ...
        batches = {int(i) // batch for i in p}
        assert all(b % size == r for b in batches)


def test_one_process_is_the_identity():
    w = World()
    assert w.main and w.share(5) == slice(0, 5) and w.sum(2.5) == 2.5
    x = np.arange(12.0).reshape(6, 2)
    assert gather_pass(x, 6, 4, w) is x
    assert broadcast_array(np.array([3, 1]), w).tolist() == [3, 1]
    assert np.array_equal(pass_positions(6, 4, w), np.arange(6))


def test_world_from_env():
    assert world_from_env({}) == World()
    assert world_from_env({"WORLD_SIZE": "1", "RANK": "0"}) == World()
    assert world_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == World(3, 4, 1)


# ------------------------------------------------------------------------------ torchrun
ARGS = ["run", "--data", "demo", "--demo-n", "200", "--image-size", "32", "--lp-epochs", "3",
        "--fft-epochs", "2", "--batch-size", "48", "--seed", "3", "--num-threads", "1", "--quiet",
        "--device", "cpu"]   # bit-comparable ranks (and a GPU machine may have fewer GPUs than ranks)


def _env(cache: Path) -> dict:
    env = dict(os.environ, TURN_AUDIT_CACHE=str(cache), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _clean_sets(run_dir: Path) -> list[str]:
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return [e["clean_set_digest"] for e in events if e["kind"] == "gmm"]


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_torchrun_two_ranks_match_one_process(tmp_path):
    import pandas as pd
    from scipy.stats import spearmanr

    env = _env(tmp_path / "cache")
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "turn_core", *ARGS, "--out", str(one)], env=env, check=True,
                   timeout=600, capture_output=True)
    res = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "turn_core", *ARGS,
                          "--out", str(two)], env=env, timeout=600, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr[-3000:]

    cfg = json.loads((two / "config.json").read_text())
    assert cfg["resolved"]["world_size"] == 2
    assert json.loads((one / "config.json").read_text())["resolved"]["world_size"] == 1
    sets = _clean_sets(one)
    assert len(sets) == 2 and _clean_sets(two) == sets              # the same clean set every epoch
    a, b = pd.read_csv(one / "samples.csv"), pd.read_csv(two / "samples.csv")
    assert list(a["path"]) == list(b["path"])
    assert (a["flagged"] == b["flagged"]).mean() >= 0.97
    assert spearmanr(a["suspicion"], b["suspicion"])[0] >= 0.97
    # only rank 0 wrote: one status, one model, no second events stream
    assert json.loads((two / "status.json").read_text())["state"] == "finished"
