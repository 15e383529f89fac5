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
        seen.append((fields, (tmp_path / "samples.csv").exists() and (tmp_path / "samples.parquet").exists()))
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


# --------------------------------------------------------------------------- samples.parquet
def _big_arrays(n=300, n_fft=2, seed=1):
    """Arrays as the pipeline passes them, with the awkward cases: float32 and bool inputs,
    labels holding the CSV's separator, a quote and a bare carriage return."""
    rng = np.random.default_rng(seed)
    classes = ["cat", "b,c", 'q"x', "é", "d\re"]
    return {"paths": [f"p/{i},x.png" for i in range(n)], "classes": classes, "given": rng.integers(0, 5, n),
            "predicted": rng.integers(0, 5, n), "suggested": rng.integers(0, 5, n),
            "suspicion": rng.random(n).astype(np.float32), "clean_prob": rng.random(n),
            "flagged": rng.random(n) < 0.3, "confidence": rng.random(n), "margin": rng.random(n) * 2 - 1,
            "knn_agreement": rng.random(n).astype(np.float32), "losses": rng.exponential(size=(1 + n_fft, n)),
            "true": rng.integers(0, 5, n)}


def _csv_row_by_row(a) -> bytes:
    """samples.csv as write_samples wrote it before streaming: one row at a time, one string."""
    from turn_core.rundir import csv_text

    c, losses = a["classes"], a["losses"]
    header = SAMPLE_COLUMNS + [f"loss_fft_{e}" for e in range(1, len(losses))] + OPTIONAL_COLUMNS
    rows = []
    for i in range(len(a["paths"])):
        rows.append([i, a["paths"][i], c[a["given"][i]], c[a["predicted"][i]], c[a["suggested"][i]],
                     f"{a['suspicion'][i]:.6f}", f"{a['clean_prob'][i]:.6f}", int(a["flagged"][i]),
                     f"{a['confidence'][i]:.6f}", f"{a['margin'][i]:.6f}", f"{a['knn_agreement'][i]:.4f}"]
                    + [f"{losses[e][i]:.6f}" for e in range(len(losses))]
                    + [c[a["true"][i]], int(a["true"][i] != a["given"][i])])
    return csv_text(header, rows).encode("utf-8")


def test_streamed_csv_is_the_text_written_row_by_row(tmp_path):
    a = _big_arrays()
    w = RunWriter(tmp_path)
    w.write_samples(**a, chunk_rows=7)
    w.close()
    assert (tmp_path / "samples.csv").read_bytes() == _csv_row_by_row(a)


def test_parquet_and_csv_hold_the_same_values(tmp_path):
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from turn_core.rundir import read_samples_csv

    a = _big_arrays()
    w = RunWriter(tmp_path)
    w.write_samples(**a)
    w.close()
    from_parquet = Run(tmp_path).samples()
    from_csv = read_samples_csv(tmp_path / "samples.csv")
    pd.testing.assert_frame_equal(from_parquet, from_csv)   # same dtypes, the very same floats
    assert from_parquet["given_label"].tolist() == [a["classes"][g] for g in a["given"]]
    assert from_parquet["suspicion"].tolist() == [float(f"{v:.6f}") for v in a["suspicion"].tolist()]
    schema = pq.read_schema(tmp_path / "samples.parquet")
    assert schema.field("flagged").type == pa.int8() and schema.field("is_noisy").type == pa.int8()
    assert schema.field("given_label").type == pa.string() and schema.field("loss_fft_2").type == pa.float64()
    assert str(from_parquet["path"].dtype) == "str" and from_parquet["flagged"].dtype == np.int64


def test_a_streaming_writer_gives_the_same_files_for_any_chunk_size(tmp_path):
    import pyarrow.parquet as pq

    a = _big_arrays(n=50)
    files = {}
    for rows in (3, 50, 10_000):
        w = RunWriter(tmp_path / str(rows))
        w.write_samples(**a, chunk_rows=rows)
        w.close()
        files[rows] = (tmp_path / str(rows) / "samples.csv").read_bytes(), pq.read_table(tmp_path / str(rows) / "samples.parquet")
    assert pq.ParquetFile(tmp_path / "3" / "samples.parquet").metadata.num_row_groups == 17   # one per chunk
    for rows in (50, 10_000):
        assert files[rows][0] == files[3][0]
        assert files[rows][1].equals(files[3][1])
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_write_samples_chunks_takes_an_iterator(tmp_path):
    """bench/scale.py's path: chunks made one at a time, never the whole table."""
    a = _big_arrays(n=40, n_fft=1)
    keys = ["paths", "given", "predicted", "suggested", "suspicion", "clean_prob", "flagged", "confidence",
            "margin", "knn_agreement", "true"]
    made = []

    def chunks():
        for lo in range(0, 40, 16):
            made.append(lo)
            yield {**{k: a[k][lo:lo + 16] for k in keys}, "losses": a["losses"][:, lo:lo + 16]}

    w = RunWriter(tmp_path / "it")
    w.write_samples_chunks(chunks(), classes=a["classes"], n_fft=1, has_true=True)
    w.close()
    assert made == [0, 16, 32]
    assert (tmp_path / "it" / "samples.csv").read_bytes() == _csv_row_by_row(a)
    assert Run(tmp_path / "it").samples()["index"].tolist() == list(range(40))


def test_write_samples_refuses_arrays_of_other_lengths(tmp_path):
    a = _big_arrays(n=10)
    w = RunWriter(tmp_path)
    with pytest.raises(InputError, match="margin holds 9 rows"):
        w.write_samples(**{**a, "margin": a["margin"][:9]})
    w.close()
    assert not list(tmp_path.glob("samples.*")) and not list(tmp_path.glob(".*.tmp"))


def test_samples_columns_reads_only_those_columns_of_the_parquet(tmp_path, monkeypatch):
    import pandas as pd
    import pyarrow.parquet as pq

    _write_samples(RunWriter(tmp_path))
    asked = []
    real = pq.ParquetFile.read
    monkeypatch.setattr(pq.ParquetFile, "read", lambda self, columns=None, **kw: asked.append(columns)
                        or real(self, columns=columns, **kw))
    monkeypatch.setattr(pd, "read_csv", lambda *a, **k: pytest.fail("the CSV was read"))
    run = Run(tmp_path)
    s = run.samples(columns=["suspicion", "given_label", "no_such_column"])
    assert list(s.columns) == ["suspicion", "given_label"]
    assert asked == [["given_label", "suspicion"]]          # in file order; nothing else read
    assert s["given_label"].tolist() == ["cat", "dog", "fox", "dog", "cat"]


def test_an_older_csv_only_run_gets_its_parquet_once(tmp_path, monkeypatch):
    import pandas as pd

    from turn_core import rundir

    w = RunWriter(tmp_path)
    _write_samples(w)
    w.close()
    expect = Run(tmp_path).samples()
    (tmp_path / "samples.parquet").unlink()                # as a run from before Parquet
    p = tmp_path / "samples.csv"
    p.write_text(p.read_text(encoding="utf-8").replace(",true_label,", ",clean_label,", 1), encoding="utf-8")
    before = p.read_bytes()
    got = Run(tmp_path).samples()
    pd.testing.assert_frame_equal(got, expect)
    assert (tmp_path / "samples.parquet").exists() and p.read_bytes() == before
    monkeypatch.setattr(rundir, "samples_csv_to_parquet", lambda *a: pytest.fail("converted twice"))
    assert Run(tmp_path).samples(columns=["true_label"])["true_label"].tolist() == expect["true_label"].tolist()
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_older_run_in_a_folder_that_cannot_be_written_reads_its_csv(tmp_path, monkeypatch):
    from turn_core import rundir

    w = RunWriter(tmp_path)
    a = _write_samples(w)
    w.close()
    (tmp_path / "samples.parquet").unlink()

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(rundir, "_temp_name", refuse)     # as a read-only folder (root ignores modes)
    run = Run(tmp_path)
    assert run.samples(columns=["path", "flagged"])["path"].tolist() == a["paths"]
    assert run.samples()["is_noisy"].tolist() == [0, 1, 0, 0, 1]
    assert not (tmp_path / "samples.parquet").exists()


def test_one_run_object_never_mixes_the_provisional_and_final_tables(tmp_path):
    """A Run reads every column set from the table it opened first, even once the final table
    has replaced it on disk; a new Run reads the final table."""
    w = RunWriter(tmp_path)
    w.set_status("running", method="turn")
    a = _write_samples(w, n_fft=0)
    w.write_samples(**{**a, "losses": a["losses"][:1]}, provisional=True)
    early = Run(tmp_path)
    first = early.samples(columns=["suspicion"])["suspicion"].tolist()
    w.write_samples(**{**a, "suspicion": 1 - a["suspicion"], "losses": np.vstack([a["losses"][:1]] * 2)})
    w.close()
    assert early.samples(columns=["suspicion"])["suspicion"].tolist() == first
    assert "loss_fft_1" not in early.samples().columns
    assert early.samples(columns=["index", "suspicion"])["suspicion"].tolist() == first
    late = Run(tmp_path)
    assert np.allclose(late.samples()["suspicion"], 1 - np.array(first), atol=2e-6)
    assert "loss_fft_1" in late.samples().columns and not late.provisional


def test_no_table_yet_is_not_cached(tmp_path):
    run = Run(tmp_path)
    assert run.samples() is None
    _write_samples(RunWriter(tmp_path))
    assert run.samples()["index"].tolist() == list(range(5))


def test_reset_removes_the_parquet(tmp_path):
    w = RunWriter(tmp_path)
    _write_samples(w)
    w.reset()
    assert not (tmp_path / "samples.csv").exists() and not (tmp_path / "samples.parquet").exists()
    w.close()


# --------------------------------------------------------------------------- .npy in chunks
def _np_save_bytes(arr) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def test_npy_in_chunks_is_np_save_of_the_whole(tmp_path):
    from turn_core.rundir import row_chunks, write_npy_chunks

    feats = np.random.default_rng(0).normal(size=(37, 5)).astype(np.float32)
    want = _np_save_bytes(feats.astype(np.float16))
    for rows in (1, 8, 37, 100):
        write_npy_chunks(tmp_path / "f.npy", feats.shape, np.float16, row_chunks(feats, rows))
        assert (tmp_path / "f.npy").read_bytes() == want
    write_npy_chunks(tmp_path / "g.npy", (None, 5), np.float16, row_chunks(feats, 10))   # rows counted
    assert (tmp_path / "g.npy").read_bytes() == want
    loaded = Run(tmp_path)._npy("f.npy")
    assert isinstance(loaded, np.memmap) and loaded.dtype == np.float16    # read lazily
    assert not list(tmp_path.glob(".*.tmp"))


def test_npy_in_chunks_refuses_rows_that_do_not_fit(tmp_path):
    from turn_core.rundir import write_npy_chunks

    with pytest.raises(InputError, match="hold 6 rows, not 7"):
        write_npy_chunks(tmp_path / "f.npy", (7, 2), np.float32, [np.zeros((4, 2)), np.zeros((2, 2))])
    with pytest.raises(InputError, match="does not hold rows of shape"):
        write_npy_chunks(tmp_path / "f.npy", (4, 2), np.float32, [np.zeros((4, 3))])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("arr", [np.arange(12, dtype=np.int64).reshape(3, 4), np.eye(3, dtype=np.float32)[:, ::2],
                                 np.array([True, False]), np.float64(2.5), np.zeros((0, 4), np.uint8)])
def test_atomic_save_npy_writes_what_np_load_reads(tmp_path, arr):
    from turn_core.rundir import atomic_save_npy

    atomic_save_npy(tmp_path / "a.npy", arr)
    back = np.load(tmp_path / "a.npy")
    assert back.dtype == arr.dtype and np.array_equal(back, arr)
    if np.asarray(arr).flags.c_contiguous:
        assert (tmp_path / "a.npy").read_bytes() == _np_save_bytes(arr)


def test_a_csv_changed_after_its_parquet_is_read_again(tmp_path, monkeypatch):
    """A CSV edited by hand (or written by an older version rerun in the folder, which leaves
    the Parquet alone) is not the one the Parquet holds: it is converted again. The writer's own
    pair, and a copy of the folder, are not."""
    import shutil

    from turn_core import rundir

    w = RunWriter(tmp_path / "r")
    _write_samples(w)
    w.close()
    calls = []
    real = rundir.samples_csv_to_parquet
    monkeypatch.setattr(rundir, "samples_csv_to_parquet", lambda *a: calls.append(a) or real(*a))
    shutil.copytree(tmp_path / "r", tmp_path / "copy")
    assert Run(tmp_path / "r").samples()["given_label"][0] == "cat" and calls == []
    assert Run(tmp_path / "copy").samples()["given_label"][0] == "cat" and calls == []
    p = tmp_path / "r" / "samples.csv"
    p.write_text(p.read_text(encoding="utf-8").replace(",cat,", ",lynx,", 1), encoding="utf-8")
    assert Run(tmp_path / "r").samples()["given_label"][0] == "lynx" and len(calls) == 1
    assert Run(tmp_path / "r").samples(columns=["given_label"])["given_label"][0] == "lynx" and len(calls) == 1


def test_a_reader_between_the_two_renames_reads_the_new_table(tmp_path, monkeypatch):
    """write_samples renames the CSV, then the Parquet: a reader in between sees the new CSV
    beside the old Parquet and reads the new table, not the old one."""
    import os as _os
    from pathlib import Path

    from turn_core import rundir

    w = RunWriter(tmp_path)
    a = _write_samples(w)
    seen = []
    real = _os.replace

    def replace(src, dst):
        real(src, dst)
        if Path(dst).name.startswith("samples.") and not seen:    # after the first of the two
            seen.append(Run(tmp_path).samples()["suspicion"].tolist())

    monkeypatch.setattr(rundir.os, "replace", replace)
    w.write_samples(**{**a, "suspicion": 1 - a["suspicion"]})
    w.close()
    assert np.allclose(seen[0], 1 - a["suspicion"], atol=2e-6)
    assert Run(tmp_path).samples()["suspicion"].tolist() == seen[0]
