"""turn_core.views.samples: truth and flag masks, true labels (old and new column name)."""
from __future__ import annotations

from turn_core import views


def test_truth_and_masks(fake_df):
    assert views.has_truth(fake_df)
    y = views.truth_mask(fake_df)
    assert y.dtype == bool and y.sum() == int(fake_df["is_noisy"].sum())
    assert views.flagged_mask(fake_df).sum() == int(fake_df["flagged"].sum())
    assert not views.has_truth(fake_df.drop(columns=["is_noisy"]))
    assert not views.has_truth(None)


def test_true_labels_read_new_and_old_column_name(fake_df):
    truth = views.true_labels(fake_df)
    assert truth == fake_df["true_label"].astype(str).tolist()
    old = fake_df.rename(columns={"true_label": "clean_label"})
    assert views.true_labels(old) == truth
    assert views.true_labels(fake_df.drop(columns=["true_label"])) is None
    assert views.true_labels(fake_df.assign(true_label="")) is None
    assert views.true_labels(None) is None
    # the fake fake_run's truth agrees with is_noisy: a wrong given label is one that is not the truth
    assert [g != t for g, t in zip(fake_df["given_label"], truth)] == list(views.truth_mask(fake_df))
