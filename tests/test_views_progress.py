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


def test_event_tail_parses_only_appended_lines_and_waits_for_a_torn_one(tmp_path, monkeypatch):
    import json

    from turn_core.views import progress as vp

    path = tmp_path / "events.jsonl"
    tail = views.EventTail(path)
    assert tail.read() == [] and tail.events == []          # no file yet
    lines = [json.dumps({"t": i, "phase": "lp", "kind": "epoch", "epoch": i, "epochs": 3}) for i in (1, 2, 3)]
    path.write_text(lines[0] + "\n" + lines[1][:10], encoding="utf-8")   # the second line half written
    assert [e["epoch"] for e in tail.read()] == [1]
    assert tail.offset == len(lines[0]) + 1
    parsed = []
    real = vp._parse_line
    monkeypatch.setattr(vp, "_parse_line", lambda line: parsed.append(line) or real(line))
    with open(path, "a", encoding="utf-8") as f:
        f.write(lines[1][10:] + "\n" + "{broken\n" + lines[2] + "\n")
    assert [e["epoch"] for e in tail.read()] == [2, 3]       # the torn line, completed, is read now
    assert parsed == [lines[1].encode(), b"{broken", lines[2].encode()]   # line 1 was not parsed again
    assert tail.read() == [] and len(parsed) == 3
    assert [e["epoch"] for e in tail.events] == [1, 2, 3]
    assert views.progress_summary(tail.events)["epoch"] == views.progress_summary(
        [json.loads(x) for x in lines])["epoch"] == 3
    assert tail.summary(now=5.0) == views.progress_summary([json.loads(x) for x in lines], now=5.0)
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"t": 9, "kind": "timing"}')                # no newline: left until final
    assert tail.read() == [] and tail.read(final=True) == [{"t": 9, "kind": "timing"}]
    path.unlink()                                            # a new run in the same folder
    path.write_text(lines[2] + "\n", encoding="utf-8")
    assert [e["epoch"] for e in tail.read()] == [3] and len(tail.events) == 1
    assert tail.summary(now=5.0) == views.progress_summary(tail.events, now=5.0)


def test_event_tail_summary_equals_the_summary_of_every_event(tmp_path):
    import json

    t0 = 1000.0
    ev = [{"t": t0, "phase": "lp", "kind": "epoch", "epoch": 1, "epochs": 2, "loss": 1.0},
          {"t": t0 + 1, "phase": "fft", "kind": "start", "epochs": 4, "steps": 10},
          {"t": t0 + 2, "phase": "fft", "kind": "step", "epoch": 1, "epochs": 4, "step": 5, "steps": 10, "loss": 0.7},
          {"t": t0 + 3, "phase": "fft", "kind": "epoch", "epoch": 1, "epochs": 4, "loss": 0.6,
           "clean_per_class": {"a": 3}},
          {"t": t0 + 4, "phase": "fft", "kind": "warning", "message": "careful"}]
    path = tmp_path / "events.jsonl"
    tail = views.EventTail(path)
    for i, e in enumerate(ev):                        # one poll per event, as the page polls
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(e) + "\n")
        tail.read()
        assert tail.summary(now=t0 + 10) == views.progress_summary(ev[: i + 1], now=t0 + 10)


def test_per_class_spread_summarises_many_classes():
    rows = [{"epoch": e, "class": f"c{c}", "kept": c * e} for e in (1, 2) for c in range(1000)]
    spread = views.per_class_spread(rows, "kept")
    assert [(r["epoch"], r["class"], r["kept"]) for r in spread] == [
        (1, "fewest", 0.0), (1, "median", 499.5), (1, "most", 999.0),
        (2, "fewest", 0.0), (2, "median", 999.0), (2, "most", 1998.0)]
    assert views.per_class_spread([], "kept") == []
