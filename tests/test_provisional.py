"""The provisional suspects: pipeline.phase_provisional writes samples.csv from the pretrained
view's ensemble after Phase I, status.json then says "provisional", the final table replaces it
and review decisions made meanwhile survive.

Most tests drive the phase on a synthetic state (features in, table out: no backbone); the last
one trains the tiny demo for real and reviews while it fine-tunes.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from turn_core import pipeline, train
from turn_core.config import RunConfig
from turn_core.rundir import Run, RunWriter, read_status
from turn_core.scores import knn_label_probs

K, N, D = 4, 160, 12


def _state(tmp_path: Path, **settings) -> pipeline.RunState:
    """A state as phase_lp leaves it: features, Phase I logits and losses, a running status."""
    rng = np.random.default_rng(7)
    truth = rng.integers(0, K, N)
    labels = truth.copy()
    noisy = rng.random(N) < 0.25
    labels[noisy] = (truth[noisy] + rng.integers(1, K, noisy.sum())) % K
    centres = rng.normal(size=(K, D)) * 3
    feats = (centres[truth] + rng.normal(size=(N, D))).astype(np.float32)
    logits = (feats @ centres.T / 3).astype(np.float32)
    config = RunConfig(**{"data": "demo", "out": str(tmp_path), "method": "turn", "fft_epochs": 2,
                          "lp_epochs": 3, "batch_size": 32, "knn_k": 5, **settings})
    writer = RunWriter(tmp_path)
    writer.set_status("running", method=config.method)
    events: list[dict] = []
    state = pipeline.RunState(config, writer, events.append, rng=np.random.default_rng(0))
    import torch

    state.rt = train.make_runtime(torch.device("cpu"), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 32)   # the backbone phase's
    state.train = SimpleNamespace(paths=[f"img/{i}.png" for i in range(N)], classes=[f"c{k}" for k in range(K)],
                                  labels=labels, true_labels=truth)
    state.feats_pre = state.feats_post = feats
    state.logits = logits
    state.losses = [train.per_sample_ce(logits, labels)]
    state.events = events          # for the tests' eyes only
    return state


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_writes_the_pretrained_ensemble_then_says_provisional(tmp_path):
    state = _state(tmp_path, flag_rule="ensemble")
    started = read_status(tmp_path)["started"]
    pipeline.phase_provisional(state)

    status = read_status(tmp_path)
    assert status["provisional"] is True and status["state"] == "running"
    assert status["started"] == started            # the run's clock did not restart
    rows = _rows(tmp_path / "samples.csv")
    assert [r["index"] for r in rows] == [str(i) for i in range(N)]
    assert [r["path"] for r in rows] == state.train.paths
    # suspicion = 1 − p(given) of the mean of the out-of-fold probe and the k-NN vote (one view)
    knn, _ = knn_label_probs(state.feats_pre, state.labels, K, 5)
    ens = (state.cv_pre + knn) / 2
    expect = 1 - ens[np.arange(N), state.labels]
    got = np.array([float(r["suspicion"]) for r in rows])
    assert np.allclose(got, expect, atol=2e-6)
    flagged = np.array([r["flagged"] == "1" for r in rows])
    assert np.array_equal(flagged, ens.argmax(axis=1) != state.labels)   # the run's rule, "ensemble"
    assert not any(c.startswith("loss_fft_") for c in rows[0])           # no FFT epoch yet
    info = [e for e in state.events if e["phase"] == "provisional" and e["kind"] == "info"]
    assert info and info[0]["n_flagged"] == int(flagged.sum())
    det = info[0]["detection"]
    assert det["auroc"] > 0.8 and 0 < det["f1"] <= 1   # truth is known: quality of the first queue
    assert "provisional" in state.timings
    assert Run(tmp_path).table == "provisional"


def test_leaves_the_global_torch_generator_alone(tmp_path):
    state = _state(tmp_path)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    pipeline.phase_provisional(state)
    assert torch.equal(before, torch.get_rng_state())   # FFT draws what it drew without this phase


@pytest.mark.parametrize("settings", [{"method": "gce-lp"}, {"method": "ce-lp"}, {"fft_epochs": 0}])
def test_nothing_provisional_without_fft(tmp_path, settings):
    state = _state(tmp_path, **settings)
    pipeline.phase_provisional(state)
    assert state.cv_pre is None
    assert not (tmp_path / "samples.csv").exists()
    assert "provisional" not in read_status(tmp_path)


def test_score_reuses_the_provisional_probe_and_gets_the_same_numbers(tmp_path, monkeypatch):
    fresh = _state(tmp_path / "a")
    fresh.feats_post = fresh.feats_pre * 1.5 + 0.1     # as if FFT had changed the features
    pipeline.phase_score(fresh)

    state = _state(tmp_path / "b")
    pipeline.phase_provisional(state)
    state.feats_post = state.feats_pre * 1.5 + 0.1
    calls = []
    real = train.cross_val_linear_probs
    monkeypatch.setattr(train, "cross_val_linear_probs", lambda f, *a, **kw: calls.append(f) or real(f, *a, **kw))
    pipeline.phase_score(state)
    assert len(calls) == 1 and calls[0] is state.feats_post   # only the fine-tuned view was probed
    assert state.cv_probs[0] is state.cv_pre
    for a, b in zip(fresh.cv_probs, state.cv_probs):
        assert np.array_equal(a, b)
    assert np.array_equal(fresh.result["suspicion"], state.result["suspicion"])


def test_final_table_clears_the_flag(tmp_path):
    state = _state(tmp_path)
    pipeline.phase_provisional(state)
    state.losses.append(state.losses[0] * 0.5)       # one FFT epoch's losses
    pipeline.phase_score(state)
    w, r = state.writer, state.result
    w.write_samples(paths=state.train.paths, classes=state.classes, given=state.labels,
                    predicted=state.probs.argmax(axis=1), suggested=r["suggested"], suspicion=r["suspicion"],
                    clean_prob=state.clean_prob, flagged=r["flagged"], confidence=r["confidence"],
                    margin=r["confidence"], knn_agreement=state.knn_agreement, losses=np.stack(state.losses))
    assert read_status(tmp_path)["provisional"] is False
    assert "loss_fft_1" in _rows(tmp_path / "samples.csv")[0]


@pytest.mark.slow
def test_review_during_fft_survives_the_final_table(tmp_path, monkeypatch):
    """A real tiny run: at the first FFT event the provisional table is there, a decision is
    recorded on it, and after the run the decision (with the label it accepted) is still there."""
    from turn_core import export
    from turn_core.review import ReviewStore

    monkeypatch.setenv("TURN_AUDIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    cfg = RunConfig(data="demo", demo_n=120, image_size=32, lp_epochs=2, fft_epochs=1, batch_size=64,
                    out=str(out), num_threads=1)
    seen: dict = {}

    def on_event(ev):
        if ev["phase"] == "fft" and "status" not in seen:
            seen["status"] = json.loads((out / "status.json").read_text())
            rows = _rows(out / "samples.csv")
            seen["rows"] = rows
            top = max(rows, key=lambda r: float(r["suspicion"]))
            seen["accepted"] = (int(top["index"]), top["suggested_label"])
            ReviewStore(out).record(int(top["index"]), "accept", top["suggested_label"], "ann")

    threads = torch.get_num_threads()
    try:
        pipeline.run(cfg, progress=on_event)
    finally:
        torch.set_num_threads(threads)
    assert seen["status"]["provisional"] is True and seen["status"]["state"] == "running"
    assert len(seen["rows"]) == 120
    status = read_status(out)
    assert status["state"] == "finished" and status["provisional"] is False
    final = _rows(out / "samples.csv")
    assert [r["path"] for r in final] == [r["path"] for r in seen["rows"]]   # same rows, same order
    index, label = seen["accepted"]
    kept = ReviewStore(out).latest()
    assert kept[index].decision == "accept" and kept[index].final_label == label
    assert export.corrected_labels(out).loc[index, "final_label"] == label
    assert "provisional" in json.loads((out / "metrics.json").read_text())["timings"]


@pytest.mark.slow
def test_the_same_seed_gives_the_same_final_numbers_as_without_the_phase(tmp_path, monkeypatch):
    """The provisional phase only adds a table: dropping it from PHASES (the run as it was
    before) gives a byte-identical final samples.csv and the same detection figures."""
    monkeypatch.setenv("TURN_AUDIT_CACHE", str(tmp_path / "cache"))
    cfg = dict(data="demo", demo_n=120, image_size=32, lp_epochs=2, fft_epochs=2, batch_size=64, num_threads=1)
    threads = torch.get_num_threads()
    try:
        pipeline.run(RunConfig(out=str(tmp_path / "with"), **cfg))
        monkeypatch.setattr(pipeline, "PHASES", tuple(p for p in pipeline.PHASES if p[0] != "provisional"))
        pipeline.run(RunConfig(out=str(tmp_path / "without"), **cfg))
    finally:
        torch.set_num_threads(threads)
    a, b = tmp_path / "with", tmp_path / "without"
    assert (a / "samples.csv").read_bytes() == (b / "samples.csv").read_bytes()
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["detection"] == mb["detection"] and ma["n_flagged"] == mb["n_flagged"]
    assert read_status(a)["provisional"] is False and read_status(b)["provisional"] is False
