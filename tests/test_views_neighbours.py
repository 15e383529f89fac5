"""turn_core.views.neighbours and .images: neighbours in feature space, PNG thumbnails."""
from __future__ import annotations

import numpy as np
import pytest

from turn_core import views


def test_nearest_neighbours_cosine(fake_run, fake_df):
    f = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], dtype=np.float32)
    idx, sims = views.nearest_neighbours(f, 0, k=2)
    assert list(idx) == [1, 2] and sims[0] > sims[1]
    assert len(views.nearest_neighbours(f[:1], 0)[0]) == 0
    feats = fake_run.features("pre")
    t = views.neighbour_table(fake_df, feats, 0, k=5)
    assert len(t) == 5 and 0 not in set(t["index"])
    assert list(t["given_label"]) == [fake_df.loc[fake_df["index"] == i, "given_label"].iloc[0] for i in t["index"]]
    assert sum(views.neighbour_vote(t).values()) == 5


def test_thumbnail_upscale_and_png(fake_run):
    img = fake_run.thumbnail(0)
    big = views.upscale_nearest(img, 64)
    assert big.shape == (64, 64, 3) and (big[:4, :4] == img[0, 0]).all()
    png = views.png_bytes(img, 32)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_neighbours_share_the_scores_normalisation():
    from turn_core import scores

    assert views.normalise_rows is scores.normalise_rows
    f = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    a = views.nearest_neighbours(f, 2, k=2)
    b = views.nearest_neighbours(scores.normalise_rows(f), 2, k=2, normalised=True)
    assert list(a[0]) == list(b[0]) == [0, 1] and np.allclose(a[1], b[1])
    assert a[1][0] == pytest.approx(0.6)
