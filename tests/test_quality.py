"""A quality floor: the tiny demo run must still find its injected label errors.

Other tests check that the numbers are well formed (in [0, 1], metrics.json = samples.csv); only
this one fails when the scoring itself breaks (a flipped sign, a broken ensemble, a GMM that picks
the wrong component) while everything still runs. One real run (MobileNetV2, 400 32-px digits,
20 % symmetric noise, seed 0): a few seconds on 2 CPU cores, plus the demo cache on first use.

The floors sit well below what this run measures and far above chance. Measured on 2 CPU cores
(seeds 0 / 1 / 2 of this config, to see the spread): ensemble AUROC 0.926 / 0.951 / 0.927, F1
0.574 / 0.633 / 0.591; paper-rule AUROC 0.802 / 0.775 / 0.825. Chance: AUROC 0.5 (one standard
deviation is about 0.035 with 80 errors in 400), and F1 0.34 for flagging every sample at this
noise rate (F1 = 2p / (1 + p) for noise rate p), less for any random flag rule.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from inputs import tiny_demo_run

from turn_core.metrics import auroc, detection_metrics

pytestmark = pytest.mark.slow

AUROC_FLOOR = 0.80        # ensemble score (the product's default)
F1_FLOOR = 0.45           # ensemble flag rule
PAPER_AUROC_FLOOR = 0.65  # 1 − the paper's GMM clean posterior (selection.py)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One default TURN run on the tiny demo, in a private cache; returns its directory."""
    return tiny_demo_run(tmp_path_factory, "quality", demo_n=400, lp_epochs=3, fft_epochs=2, seed=0)


def _samples(run_dir) -> dict[str, np.ndarray]:
    """The columns of samples.csv this test reads, as arrays."""
    with open(run_dir / "samples.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {"is_noisy": np.array([r["is_noisy"] == "1" for r in rows]),
            "flagged": np.array([r["flagged"] == "1" for r in rows]),
            "suspicion": np.array([float(r["suspicion"]) for r in rows]),
            "clean_prob": np.array([float(r["clean_prob"]) for r in rows])}


def floor_failures(is_noisy, flagged, suspicion) -> list[str]:
    """The floors a detection result falls below (empty when it passes), each with its value."""
    d = detection_metrics(is_noisy, flagged, suspicion)
    out = []
    if not d["auroc"] >= AUROC_FLOOR:   # "not >=" so NaN fails too
        out.append(f"AUROC {d['auroc']:.3f} < {AUROC_FLOOR}")
    if not d["f1"] >= F1_FLOOR:
        out.append(f"F1 {d['f1']:.3f} < {F1_FLOOR}")
    return out


def test_demo_run_is_above_the_quality_floor(demo_run):
    m = json.loads((demo_run / "metrics.json").read_text(encoding="utf-8"))["detection"]
    s = _samples(demo_run)
    assert s["is_noisy"].sum() == m["n_noisy"] > 0
    failures = floor_failures(s["is_noisy"], s["flagged"], s["suspicion"])
    assert not failures, f"the demo run scores below the quality floor: {failures} (metrics.json: {m})"


def test_paper_rule_is_above_its_floor(demo_run):
    s = _samples(demo_run)
    value = auroc(s["is_noisy"], 1.0 - s["clean_prob"])
    assert value >= PAPER_AUROC_FLOOR, f"AUROC of 1 − clean_prob {value:.3f} < {PAPER_AUROC_FLOOR}"


def test_the_floors_are_far_above_flagging_everything(demo_run):
    p = _samples(demo_run)["is_noisy"].mean()
    assert F1_FLOOR > 2 * p / (1 + p) + 0.05
    assert AUROC_FLOOR > 0.5 + 5 * 0.035


def test_the_floors_reject_broken_scores(demo_run):
    """The same run's labels with the scoring broken in the ways a bug would break it."""
    s = _samples(demo_run)
    y, flagged, suspicion = s["is_noisy"], s["flagged"], s["suspicion"]
    # Not seed 0: the demo injects its noise from default_rng(0), and the same stream would line
    # up with the errors (a "random" score with AUROC 0).
    rng = np.random.default_rng(12345)
    random_flags = rng.random(len(y)) < flagged.mean()
    broken = {"random suspicion": (flagged, rng.random(len(y))),
              "flipped suspicion": (flagged, 1.0 - suspicion),
              "random flags and suspicion": (random_flags, rng.random(len(y))),
              "every sample flagged": (np.ones_like(flagged), suspicion),
              "flags inverted": (~flagged, suspicion)}
    passed = [name for name, (f, sc) in broken.items() if not floor_failures(y, f, sc)]
    assert not passed, f"the floor let these broken scores pass: {passed}"


def test_signals_from_run_rebuilds_the_runs_scores(demo_run):
    """The benchmark re-scores finished runs (scores.signals_from_run): from the run directory
    alone it must reproduce what the pipeline wrote, or its comparisons describe another method."""
    from turn_core.rundir import Run
    from turn_core.scores import score_and_flag, signals_from_run

    s = _samples(demo_run)
    out = score_and_flag(signals_from_run(Run(demo_run)))
    assert np.allclose(out["suspicion"], s["suspicion"], atol=1e-6)
    assert np.array_equal(out["flagged"], s["flagged"])
