"""turn_core.views.cutoff: the suspicion cut-off and what it catches."""
from __future__ import annotations

import pytest
from fakerun import make_fake_run

from turn_core import views
from turn_core.metrics import detection_metrics
from turn_core.rundir import Run


@pytest.fixture()
def run(tmp_path):
    return Run(make_fake_run(tmp_path / "r", n=80, seed=3))


@pytest.fixture()
def df(run):
    return run.samples()


def test_default_cutoff_flags_as_many_as_the_run(df):
    t = views.default_cutoff(df)
    assert int((df["suspicion"] >= t).sum()) >= int(df["flagged"].sum())
    s = views.cutoff_stats(df, t)
    assert s["n_suspects"] == int((df["suspicion"] >= t).sum())
    exp = detection_metrics(df["is_noisy"].astype(bool), df["suspicion"] >= t)
    assert s["precision"] == pytest.approx(exp["precision"]) and s["recall"] == pytest.approx(exp["recall"])
    none_flagged = df.assign(flagged=0)
    assert int((none_flagged["suspicion"] >= views.default_cutoff(none_flagged)).sum()) == 0
    assert "precision" not in views.cutoff_stats(df.drop(columns=["is_noisy"]), 0.5)


def test_pr_curve_monotone_flag_count(df):
    pr = views.pr_curve(df, points=11)
    assert len(pr) == 11
    assert list(pr["n_suspects"]) == sorted(pr["n_suspects"], reverse=True)
    assert pr["recall"].iloc[0] == pytest.approx(1.0)
