"""turn_core.views.samples: truth and flag masks, true labels (old and new column name)."""
from __future__ import annotations

import pytest
from fakerun import make_fake_run

from turn_core import views
from turn_core.rundir import Run


@pytest.fixture()
def run(tmp_path):
    return Run(make_fake_run(tmp_path / "r", n=80, seed=3))


@pytest.fixture()
def df(run):
    return run.samples()


def test_truth_and_masks(df):
    assert views.has_truth(df)
    y = views.truth_mask(df)
    assert y.dtype == bool and y.sum() == int(df["is_noisy"].sum())
    assert views.flagged_mask(df).sum() == int(df["flagged"].sum())
    assert not views.has_truth(df.drop(columns=["is_noisy"]))
    assert not views.has_truth(None)


def test_true_labels_read_new_and_old_column_name(df):
    truth = views.true_labels(df)
    assert truth == df["true_label"].astype(str).tolist()
    old = df.rename(columns={"true_label": "clean_label"})
    assert views.true_labels(old) == truth
    assert views.true_labels(df.drop(columns=["true_label"])) is None
    assert views.true_labels(df.assign(true_label="")) is None
    assert views.true_labels(None) is None
    # the fake run's truth agrees with is_noisy: a wrong given label is one that is not the truth
    assert [g != t for g, t in zip(df["given_label"], truth)] == list(views.truth_mask(df))
