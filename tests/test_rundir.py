"""turn_core.rundir: the writers round-trip through ``Run``; old runs open; naming and deleting runs."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from turn_core.errors import InputError
from turn_core.rundir import (
    OPTIONAL_COLUMNS,
    SAMPLE_COLUMNS,
    STATES,
    Run,
    RunWriter,
    delete_run,
    new_run_name,
    read_status,
)

CLASSES = ["cat", "dog", "fox"]


def _write_samples(writer: RunWriter, *, true=True, n_fft=2):
    rng = np.random.default_rng(0)
    n = 5
    given = np.array([0, 1, 2, 1, 0])
    arrays = {
        "paths": [f"img/{i}.png" for i in range(n)], "classes": CLASSES, "given": given,
        "predicted": np.array([0, 2, 2, 1, 1]), "suggested": np.array([0, 2, 2, 1, 0]),
        "suspicion": rng.random(n), "clean_prob": rng.random(n), "flagged": np.array([0, 1, 0, 0, 0]),
        "confidence": rng.random(n), "margin": rng.random(n) * 2 - 1, "knn_agreement": rng.random(n),
        "losses": rng.random((1 + n_fft, n)), "true": np.array([0, 2, 2, 1, 1]) if true else None}
    writer.write_samples(**arrays)
    return arrays


def test_samples_round_trip(tmp_path):
    w = RunWriter(tmp_path / "r")
    a = _write_samples(w)
    w.close()
    s = Run(tmp_path / "r").samples()
    assert list(s.columns) == SAMPLE_COLUMNS + ["loss_fft_1", "loss_fft_2"] + OPTIONAL_COLUMNS
    assert s["index"].tolist() == list(range(5))
    assert s["path"].tolist() == a["paths"]
    assert s["given_label"].tolist() == ["cat", "dog", "fox", "dog", "cat"]
    assert s["suggested_label"].tolist() == [CLASSES[i] for i in a["suggested"]]
    assert s["true_label"].tolist() == ["cat", "fox", "fox", "dog", "dog"]
    assert s["is_noisy"].tolist() == [0, 1, 0, 0, 1]
    assert s["flagged"].tolist() == a["flagged"].tolist()
    assert np.allclose(s["suspicion"], a["suspicion"], atol=5e-7)
    assert np.allclose(s["knn_agreement"], a["knn_agreement"], atol=5e-5)
    assert np.allclose(s[["loss_lp", "loss_fft_1", "loss_fft_2"]].to_numpy().T, a["losses"], atol=5e-7)


def test_samples_without_true_labels_or_fft(tmp_path):
    w = RunWriter(tmp_path / "r")
    _write_samples(w, true=False, n_fft=0)
    w.close()
    assert list(Run(tmp_path / "r").samples().columns) == SAMPLE_COLUMNS


def test_old_run_clean_label_column_reads_as_true_label(tmp_path):
    """Runs written before the rename have clean_label (the known-correct label): they still open."""
    w = RunWriter(tmp_path / "old")
    _write_samples(w)
    w.close()
    p = tmp_path / "old" / "samples.csv"
    text = p.read_text(encoding="utf-8")
    p.write_text(text.replace(",true_label,", ",clean_label,", 1), encoding="utf-8")
    assert "clean_label" in p.read_text(encoding="utf-8").splitlines()[0]
    s = Run(tmp_path / "old").samples()
    assert "clean_label" not in s.columns
    assert s["true_label"].tolist() == ["cat", "fox", "fox", "dog", "dog"]


def test_samples_reads_only_the_columns_asked_for(tmp_path):
    w = RunWriter(tmp_path / "r")
    a = _write_samples(w)
    w.close()
    run = Run(tmp_path / "r")
    s = run.samples(columns=["suspicion", "given_label", "no_such_column"])
    assert list(s.columns) == ["suspicion", "given_label"]
    assert s["given_label"].tolist() == ["cat", "dog", "fox", "dog", "cat"]
    assert np.allclose(s["suspicion"], a["suspicion"], atol=5e-7)
    assert list(run.samples().columns)[:2] == ["index", "path"]  # the whole table is its own cache entry
    p = tmp_path / "r" / "samples.csv"
    p.write_text(p.read_text(encoding="utf-8").replace(",true_label,", ",clean_label,", 1), encoding="utf-8")
    assert Run(tmp_path / "r").samples(columns=["true_label"])["true_label"].tolist()[1] == "fox"


def test_metrics_skipped_and_json_round_trip(tmp_path):
    w = RunWriter(tmp_path / "r")
    w.write_metrics({"method": "turn", "n_train": np.int64(5), "detection": {"f1": np.float32(0.5)}})
    w.write_skipped([("a/1.png", "zero-byte file"), ("b,2.png", "not an image")])
    w.write_npy("probs.npy", np.eye(3, dtype=np.float32))
    w.close()
    r = Run(tmp_path / "r")
    assert r.metrics == {"method": "turn", "n_train": 5, "detection": {"f1": 0.5}}
    lines = (tmp_path / "r" / "skipped.csv").read_text(encoding="utf-8").splitlines()
    assert lines == ["path,reason", "a/1.png,zero-byte file", '"b,2.png",not an image']
    assert np.array_equal(r._npy("probs.npy"), np.eye(3))
    assert not [p.name for p in (tmp_path / "r").iterdir() if p.name.endswith(".tmp")]


def test_model_writer(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors import safe_open
    from safetensors.torch import load_file

    model = torch.nn.Linear(4, 3)
    w = RunWriter(tmp_path / "r")
    path = w.write_model(model, model_name="tiny", classes=CLASSES)
    w.close()
    assert path == tmp_path / "r" / "model.safetensors"
    sd = load_file(str(path))
    assert torch.equal(sd["weight"], model.weight.detach()) and torch.equal(sd["bias"], model.bias.detach())
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"model": "tiny", "classes": json.dumps(CLASSES)}
    assert not list((tmp_path / "r").glob(".*.tmp"))


def test_status_states_and_events(tmp_path):
    w = RunWriter(tmp_path / "r")
    w.set_status("running", method="turn")
    assert read_status(tmp_path / "r")["state"] == "running"          # this process: alive
    w.event("lp", "epoch", epoch=1, loss=np.float64(0.25))
    w.set_status("finished", error=None)
    with pytest.raises(AssertionError):
        w.set_status("done")                                          # not one of STATES
    w.close()
    st = read_status(tmp_path / "r")
    assert st["state"] == "finished" and st["method"] == "turn" and st["ended"] >= st["started"]
    assert set(STATES) == {"running", "finished", "failed", "cancelled", "interrupted"}
    assert Run(tmp_path / "r").events()[0] == {"t": pytest.approx(st["started"], abs=60), "phase": "lp",
                                               "kind": "epoch", "epoch": 1, "loss": 0.25}


def test_running_status_of_a_dead_process_reads_interrupted(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    d = tmp_path / "r"
    d.mkdir()
    (d / "status.json").write_text(json.dumps({"state": "running", "pid": p.pid, "host": socket.gethostname()}))
    assert read_status(d)["state"] == "interrupted"


def test_reset_refuses_a_folder_with_review_decisions(tmp_path):
    w = RunWriter(tmp_path / "r")
    (tmp_path / "r" / "samples.csv").write_text("x")
    w.reset()
    assert not (tmp_path / "r" / "samples.csv").exists()
    (tmp_path / "r" / "review.sqlite").write_bytes(b"")
    with pytest.raises(InputError, match="review decisions"):
        w.reset()
    w.close()


# --------------------------------------------------------------------------- new_run_name
def test_new_run_name():
    when = 1_700_000_000.0
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    assert new_run_name("turn", "demo", when=when) == f"{stamp}-turn-demo"
    assert new_run_name("ce-lp", "", when=when) == f"{stamp}-ce-lp-demo"
    assert new_run_name("turn", "/data/my pets/", when=when) == f"{stamp}-turn-my-pets"
    assert new_run_name("turn", "/data/m.csv", suffix="seed 2", when=when) == f"{stamp}-turn-m-seed-2"
    odd = new_run_name("turn", "/x/ü../a;b|c", when=when)
    assert "/" not in odd and ";" not in odd and "|" not in odd and odd.startswith(stamp)


# --------------------------------------------------------------------------- delete_run
def _run_folder(root, name):
    d = root / name
    d.mkdir(parents=True)
    (d / "status.json").write_text(json.dumps({"state": "finished"}))
    (d / "review.sqlite").write_bytes(b"")
    return d


def test_delete_run_removes_the_folder_with_its_review(tmp_path):
    root = tmp_path / "runs"
    d = _run_folder(root, "r1")
    assert delete_run(root, "r1") == d.resolve()
    assert not d.exists() and root.is_dir()


@pytest.mark.parametrize("name", ["..", "../outside", "r1/..", "nested/r2", "", "not-a-run", "missing"])
def test_delete_run_refuses_paths_outside_the_root(tmp_path, name):
    root = tmp_path / "runs"
    _run_folder(root, "r1")
    _run_folder(root / "nested", "r2")
    _run_folder(tmp_path, "outside")
    (root / "not-a-run").mkdir()
    with pytest.raises(InputError, match="is not a run folder"):
        delete_run(root, name)
    assert (root / "r1").is_dir() and (root / "nested" / "r2").is_dir() and (tmp_path / "outside").is_dir()


def test_delete_run_refuses_a_link_out_of_the_root(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    outside = _run_folder(tmp_path, "outside")
    os.symlink(outside, root / "link")
    with pytest.raises(InputError, match="is not a run folder"):
        delete_run(root, "link")
    assert outside.is_dir()


def test_delete_run_refuses_a_busy_run(tmp_path):
    root = tmp_path / "runs"
    d = _run_folder(root, "r1")
    with pytest.raises(InputError, match="training right now"):
        delete_run(root, "r1", busy=[None, str(root / "." / "r1")])
    assert d.is_dir()


def test_update_status_keeps_state_and_clock(tmp_path):
    w = RunWriter(tmp_path)
    w.update_status(provisional=True)          # nothing to update yet: no file appears
    assert not (tmp_path / "status.json").exists()
    w.set_status("running", method="turn")
    started = read_status(tmp_path)["started"]
    time.sleep(0.01)
    w.update_status(provisional=True)
    st = read_status(tmp_path)
    assert (st["state"], st["started"], st["provisional"]) == ("running", started, True)
    assert Run(tmp_path).provisional and Run(tmp_path).table == "provisional"
    w.close()


def test_samples_table_then_its_provisional_flag(tmp_path, monkeypatch):
    """The flag follows the table: a reader that sees "provisional" finds that table on disk,
    and the final table (the default) clears the flag."""
    w = RunWriter(tmp_path)
    w.set_status("running", method="turn")
    seen = []
    real = w.update_status

    def spy(**fields):
        seen.append((fields, (tmp_path / "samples.csv").exists()))
        real(**fields)

    monkeypatch.setattr(w, "update_status", spy)
    arrays = _write_samples(w, n_fft=0)
    assert seen == [({"provisional": False}, True)]
    w.write_samples(**{**arrays, "losses": arrays["losses"][:1]}, provisional=True)
    assert seen[-1] == ({"provisional": True}, True) and Run(tmp_path).provisional
    _write_samples(w)
    assert read_status(tmp_path)["provisional"] is False and Run(tmp_path).table == "final"
    w.close()


def test_an_older_run_without_the_flag_holds_its_final_table(tmp_path):
    w = RunWriter(tmp_path)
    w.set_status("finished", method="turn")
    w.close()
    assert not Run(tmp_path).provisional and Run(tmp_path).table == "final"
