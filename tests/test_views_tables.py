"""turn_core.views.tables: overview and preview tables, formatting."""
from __future__ import annotations

import numpy as np
import pytest
from fakerun import make_fake_run

from turn_core import views
from turn_core.metrics import detection_metrics
from turn_core.rundir import list_runs


def test_confusion_table_counts(fake_df):
    t = views.confusion_table(fake_df)
    assert t.values.sum() == len(fake_df)
    assert list(t.index) == list(t.columns)
    for g in set(fake_df["given_label"]):
        for s in set(fake_df["suggested_label"]):
            n = int(((fake_df["given_label"] == g) & (fake_df["suggested_label"] == s)).sum())
            assert t.loc[g, s] == n
    assert views.confusion_table(fake_df, only_flagged=True).values.sum() == int(fake_df["flagged"].sum())


def test_noise_per_class(fake_df):
    t = views.noise_per_class(fake_df)
    assert t["images"].sum() == len(fake_df)
    assert t["flagged"].sum() == int(fake_df["flagged"].sum())
    row = t.iloc[0]
    sub = fake_df[fake_df["given_label"] == row["class"]]
    assert row["estimated_noise_rate"] == pytest.approx(sub["flagged"].mean())
    assert row["true_noise_rate"] == pytest.approx(sub["is_noisy"].mean())
    assert "true_noise_rate" not in views.noise_per_class(fake_df.drop(columns=["is_noisy"])).columns
    assert len(views.noise_per_class(None)) == 0


def test_detection_summary_prefers_metrics_then_computes(fake_df, fake_run):
    from_metrics = views.detection_summary(fake_df, fake_run.metrics)
    computed = views.detection_summary(fake_df, {})
    exp = detection_metrics(fake_df["is_noisy"].astype(bool), fake_df["flagged"].astype(bool), fake_df["suspicion"])
    assert computed["f1"] == pytest.approx(exp["f1"])
    assert from_metrics["precision"] == pytest.approx(exp["precision"])
    assert views.detection_summary(fake_df.drop(columns=["is_noisy"]), {}) is None


def test_runs_table(tmp_path):
    make_fake_run(tmp_path / "a", n=20)
    make_fake_run(tmp_path / "b", n=20, state="failed")
    t = views.runs_table(list_runs(tmp_path))
    assert set(t["run"]) == {"a", "b"}
    assert set(t["status"]) == {"finished", "failed"}
    assert t.loc[t["run"] == "b", "error"].iloc[0].startswith("boom")


def test_fmt_seconds():
    assert views.fmt_seconds(None) == "–"
    assert views.fmt_seconds(5) == "5 s"
    assert views.fmt_seconds(125) == "2 min 05 s"
    assert views.fmt_seconds(3 * 3600 + 120) == "3 h 02 min"


def test_preview_helpers():
    t = views.class_count_table([0, 0, 2], ["a", "b", "c"])
    assert list(t["images"]) == [2, 0, 1]
    g = views.sample_per_class(np.array([0] * 10 + [1] * 2), 2, per_class=3)
    assert len(g[0]) == 3 and g[1] == [10, 11]


def test_changed_pairs_and_search_on_a_thousand_classes():
    import pandas as pd

    rng = np.random.default_rng(1)
    k, n = 1000, 20_000
    classes = np.array([f"class {i:04d}" for i in range(k)])
    given = rng.integers(0, k, n)
    suggested = given.copy()
    change = rng.random(n) < 0.3
    suggested[change] = rng.integers(0, k, change.sum())
    suggested[:40] = (given[:40] + 1) % k                  # one frequent pair, planted
    given[:40] = 7
    suggested[:40] = 8
    df = pd.DataFrame({"given_label": classes[given], "suggested_label": classes[suggested],
                       "flagged": (given != suggested).astype(int)})
    assert views.n_classes(df) == k
    pairs = views.changed_pairs(df)
    assert list(pairs.columns) == ["given_label", "suggested_label", "count"]
    assert (pairs["given_label"] != pairs["suggested_label"]).all()
    assert int(pairs["count"].sum()) == int((given != suggested).sum())
    assert pairs.iloc[0].tolist() == ["class 0007", "class 0008", 40 + int(((given == 7) & (suggested == 8))[40:].sum())]
    assert pairs["count"].is_monotonic_decreasing
    top, n_match = views.search_rows(pairs, "", ("given_label", "suggested_label"))
    assert len(top) == views.TOP_ROWS and n_match == len(pairs)
    hit, n_hit = views.search_rows(pairs, "CLASS 0999", ("given_label", "suggested_label"), top=None)
    assert n_hit == len(hit) > 0
    assert ((hit["given_label"] == "class 0999") | (hit["suggested_label"] == "class 0999")).all()
    assert n_hit == int(((pairs["given_label"] == "class 0999") | (pairs["suggested_label"] == "class 0999")).sum())
    assert views.search_rows(pairs, "no such class", ("given_label",))[1] == 0
    assert views.changed_pairs(df, only_flagged=True).equals(pairs)
    assert len(views.changed_pairs(None)) == 0
