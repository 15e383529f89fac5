"""Small test inputs (shared by several test files): made in memory, or one tiny real run."""
from __future__ import annotations

import io
import zipfile

import pytest


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """A ZIP archive holding ``members`` (member name → content), as bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tiny_demo_run(tmp_path_factory, name: str, **settings):
    """One real TURN run on the built-in demo (``RunConfig(data="demo", image_size=32,
    batch_size=64, num_threads=1, **settings)``) in a private cache; returns its directory.
    The torch thread count (process-wide) is restored afterwards."""
    import torch

    from turn_core import pipeline
    from turn_core.config import RunConfig

    mp = pytest.MonkeyPatch()
    mp.setenv("TURN_AUDIT_CACHE", str(tmp_path_factory.mktemp("turn_cache")))
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("runs") / name
    try:
        pipeline.run(RunConfig(data="demo", image_size=32, batch_size=64, num_threads=1, out=str(out), **settings))
    finally:
        mp.undo()
        torch.set_num_threads(threads)
    return out
