"""turn_core.views.cutoff: the suspicion cut-off and what it catches."""
from __future__ import annotations

import pytest

from turn_core import views
from turn_core.metrics import detection_metrics


def test_default_cutoff_flags_as_many_as_the_run(fake_df):
    t = views.default_cutoff(fake_df)
    assert int((fake_df["suspicion"] >= t).sum()) >= int(fake_df["flagged"].sum())
    s = views.cutoff_stats(fake_df, t)
    assert s["n_suspects"] == int((fake_df["suspicion"] >= t).sum())
    exp = detection_metrics(fake_df["is_noisy"].astype(bool), fake_df["suspicion"] >= t)
    assert s["precision"] == pytest.approx(exp["precision"]) and s["recall"] == pytest.approx(exp["recall"])
    none_flagged = fake_df.assign(flagged=0)
    assert int((none_flagged["suspicion"] >= views.default_cutoff(none_flagged)).sum()) == 0
    assert "precision" not in views.cutoff_stats(fake_df.drop(columns=["is_noisy"]), 0.5)


def test_pr_curve_monotone_flag_count(fake_df):
    pr = views.pr_curve(fake_df, points=11)
    assert len(pr) == 11
    assert list(pr["n_suspects"]) == sorted(pr["n_suspects"], reverse=True)
    assert pr["recall"].iloc[0] == pytest.approx(1.0)
