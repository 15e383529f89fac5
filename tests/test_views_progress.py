"""turn_core.views.progress: the event-log summary of a run."""
from __future__ import annotations

import pytest

from turn_core import views


def test_progress_summary_live_and_epochs():
    t0 = 1000.0
    ev = [{"t": t0, "phase": "lp", "kind": "epoch", "epoch": 1, "epochs": 2, "loss": 1.0},
          {"t": t0 + 1, "phase": "fft", "kind": "step", "epoch": 1, "epochs": 4, "step": 5, "steps": 10,
           "loss": 0.7, "images_per_s": 123.0},
          {"t": t0 + 2, "phase": "fft", "kind": "epoch", "epoch": 1, "epochs": 4, "loss": 0.6, "tau": 0.5,
           "clean_per_class": {"a": 3, "b": 4}},
          {"t": t0 + 3, "phase": "fft", "kind": "warning", "message": "careful"},
          {"t": t0 + 3, "phase": "fft", "kind": "gmm", "epoch": 2, "kept_per_class": {"a": 9, "b": 4}}]
    p = views.progress_summary(ev, now=t0 + 11)
    assert p["phase"] == "fft" and p["phase_name"] == "full fine-tuning"
    assert p["epoch"] == 1 and p["epochs"] == 4 and p["images_per_s"] == 123.0
    assert p["fraction"] == pytest.approx(0.25)
    assert p["eta_s"] == pytest.approx(10 * 3)  # 10 s for a quarter → 30 s left
    assert {r["class"]: r["clean"] for r in p["clean"]} == {"a": 3, "b": 4}
    assert p["tau"] == [{"epoch": 1, "tau": 0.5}]
    assert p["warnings"] == ["careful"]
    assert {r["class"]: r["kept"] for r in p["kept"]} == {"a": 9, "b": 4}
    assert [r["phase"] for r in p["loss_epochs"]] == ["lp", "fft"]
    empty = views.progress_summary([])
    assert empty["phase"] is None and empty["fraction"] is None
    # the chart: LP per epoch and FFT per step, in separate panels (different losses)
    rows = views.loss_curve_rows(p)
    assert [(r["panel"].split()[0], r["x"], r["loss"]) for r in rows] == [("LP", 1, 1.0), ("FFT", 0.5, 0.7)]
    no_steps = views.progress_summary([e for e in ev if e["kind"] != "step"])
    assert [(r["panel"], r["x"]) for r in views.loss_curve_rows(no_steps)] == [
        ("LP (GCE, per epoch)", 1), ("FFT (CE, per epoch)", 1)]
    assert views.loss_curve_rows(empty) == []
