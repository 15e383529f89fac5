"""turn_core.views.losses: loss histograms and the GMM drawn over them."""
from __future__ import annotations

import numpy as np
import pytest

from turn_core import views


def test_loss_columns_in_training_order(fake_df):
    cols = views.loss_columns(fake_df)
    assert [c for _, c in cols] == ["loss_lp", "loss_fft_1", "loss_fft_2"]
    d2 = fake_df.rename(columns={"loss_fft_2": "loss_fft_10"})
    assert [c for _, c in views.loss_columns(d2)][-1] == "loss_fft_10"


def test_histogram_groups_share_bins(fake_df):
    groups = views.loss_groups(fake_df, "flagged")
    h = views.histogram(fake_df["loss_lp"], bins=10, groups=groups)
    assert len(h["edges"]) == 11
    assert sum(c.sum() for c in h["counts"].values()) == len(fake_df)
    assert h["counts"]["flagged"].sum() == int(fake_df["flagged"].sum())
    ht = views.histogram(fake_df["loss_lp"], bins=10, groups=views.loss_groups(fake_df, "truth"))
    assert set(ht["counts"]) == {"truly clean", "truly noisy"}
    assert views.histogram([np.nan, np.nan], bins=5)["counts"]["all"].sum() == 0


def test_gmm_mapping_matches_pipeline_layout():
    gmm = [{"epoch": 1, "tau": 0.5, "means": [0.1, 0.8]},
           {"epoch": 2, "tau": 0.5, "means": [0.2, 0.7]},
           {"epoch": 2, "final": True, "tau": 0.5, "means": [0.3, 0.9]}]
    assert views.gmm_for_column(gmm, "loss_lp")["means"] == [0.1, 0.8]
    assert views.gmm_for_column(gmm, "loss_fft_1")["means"] == [0.2, 0.7]
    assert views.gmm_for_column(gmm, "loss_fft_2")["means"] == [0.3, 0.9]
    assert views.gmm_for_column([], "loss_lp") is None
    assert views.gmm_for_column(gmm, "other") is None


def test_gmm_curves_integrate_to_counts_and_minmax_transform():
    g = {"means": [0.2, 0.7], "variances": [0.01, 0.02], "weights": [0.7, 0.3], "clean_component": 0}
    x = np.linspace(-1, 2, 4001)
    c = views.gmm_curves(g, x, n=100, bin_width=0.1)
    assert set(c) == {"clean component", "noisy component"}
    total = sum(np.trapezoid(v, x) for v in c.values())
    assert total == pytest.approx(100 * 0.1, rel=1e-3)
    # Fitted on (loss − lo)/(hi − lo): the raw-axis curve has the same area.
    g2 = dict(g, lo=0.0, hi=4.0)
    x2 = np.linspace(-4, 8, 8001)
    c2 = views.gmm_curves(g2, x2, n=100, bin_width=1.0)
    assert sum(np.trapezoid(v, x2) for v in c2.values()) == pytest.approx(100, rel=1e-3)
    assert x2[np.argmax(c2["clean component"])] == pytest.approx(0.8, abs=0.01)
    xt = views.gmm_tau_loss(dict(g, tau=0.5), 0.0, 1.0)
    assert 0.2 < xt < 0.7
    # a fit on equal losses (lo == hi) is drawn on the raw axis instead of dividing by zero
    flat = views.gmm_curves(dict(g, lo=1.0, hi=1.0), x, n=100, bin_width=0.1)
    assert all(np.isfinite(v).all() for v in flat.values())


def test_gmm_of_the_fake_run_is_the_pipeline_format(fake_run, fake_df):
    g = views.gmm_for_column(fake_run.gmm, "loss_fft_2")
    assert g["final"] and g["lo"] == 0.0 and g["hi"] == 4.0
    assert views.gmm_for_column(fake_run.gmm, "loss_fft_1")["epoch"] == 2 and "final" not in views.gmm_for_column(
        fake_run.gmm, "loss_fft_1")


def test_gmm_tau_loss_is_the_first_crossing_from_the_left():
    # clean component at 0.2, noisy at 0.7 (equal weights): the posterior crosses 0.5 once,
    # halfway between the means, and the function returns that point — not a later one.
    g = {"means": [0.2, 0.7], "variances": [0.01, 0.01], "weights": [0.5, 0.5], "clean_component": 0,
         "tau": 0.5}
    assert views.gmm_tau_loss(g, 0.0, 1.0, grid=10001) == pytest.approx(0.45, abs=1e-3)
    assert views.gmm_tau_loss(dict(g, tau=1e-12), 0.0, 0.3) is None  # never below τ in range
    assert views.gmm_tau_loss({}, 0.0, 1.0) is None


def test_gmm_for_class_picks_the_class_fit_only_when_fitted_per_class():
    a, b = {"means": [0.1, 0.5]}, {"means": [0.2, 0.9]}
    g = {"tau": 0.4, "means": [0.0, 1.0], "fits": [a, b]}
    assert views.gmm_for_class(g, ["x", "y"], None) is g
    assert views.gmm_for_class(g, ["x", "y"], "y") == dict(b, tau=0.4)
    assert views.gmm_for_class(dict(g, fits=[a]), ["x", "y"], "y") is None  # one GMM over all classes
    assert views.gmm_for_class(g, ["x", "y", "z"], "y") is None           # a class without a fit
    assert views.gmm_for_class(None, ["x"], "x") is None
