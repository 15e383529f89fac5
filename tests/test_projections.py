"""turn_core.projections: t-SNE / UMAP of a run's features, cached on disk."""
from __future__ import annotations

import numpy as np
import pytest
from fakerun import make_fake_run

from turn_core import projections
from turn_core.errors import InputError


@pytest.mark.parametrize("kind", ["tsne", "umap"])
def test_projection_cached_on_disk(tmp_path, kind):
    d = make_fake_run(tmp_path / "r", n=40)
    idx, xy = projections.projection(d, "pre", kind, max_points=30, seed=0)
    assert len(idx) == 30 and xy.shape == (30, 2) and np.isfinite(xy).all()
    assert list(idx) == sorted(set(idx))
    p = projections.cache_path(d, "pre", kind, 30, 0)
    assert p.exists()
    again = projections.cached(d, "pre", kind, 30, 0)
    assert np.array_equal(again[0], idx) and np.allclose(again[1], xy)
    # The second call is a file read: it returns the cached array even if features change.
    (d / "features_pre.npy").unlink()
    _, xy2 = projections.projection(d, "pre", kind, max_points=30, seed=0)
    assert np.allclose(xy2, xy)


def test_projection_errors_and_tiny(tmp_path):
    d = make_fake_run(tmp_path / "r", n=30)
    (d / "features_post.npy").unlink()
    with pytest.raises(InputError):
        projections.projection(d, "post", "tsne")
    with pytest.raises(InputError):
        projections.projection(d, "pre", "pca")
    assert projections.embed(np.ones((3, 4)), "tsne").shape == (3, 2)
    assert projections.embed(np.zeros((0, 4))).shape == (0, 2)
    (d / "projections").mkdir(exist_ok=True)
    projections.cache_path(d, "pre", "tsne", 3000, 0).write_bytes(b"torn")
    assert projections.cached(d, "pre", "tsne", 3000, 0) is None
    _, xy = projections.projection(d, "pre", "tsne")
    assert xy.shape == (30, 2)
