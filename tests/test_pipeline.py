"""``pipeline.run`` end to end on the tiny offline demo (real MobileNetV2, 32-px digits).

One TURN run is shared by the run-directory checks (module fixture); the other tests run even
smaller configs. Every run here takes a few seconds on 2 CPU cores.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from turn_core import pipeline
from turn_core.config import RunConfig
from turn_core.errors import Cancelled, InputError
from turn_core.metrics import detection_metrics
from turn_core.progress import CancelToken
from turn_core.rundir import SAMPLE_COLUMNS, Run, read_status

pytestmark = pytest.mark.slow

TIMING_PHASES = ("data", "backbone", "cache", "features", "lp", "fft", "score")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private cache (demo PNGs + image memmaps): config.cache_dir() reads the environment."""
    path = tmp_path_factory.mktemp("turn_cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("TURN_AUDIT_CACHE", str(path))
    threads = torch.get_num_threads()
    yield path
    mp.undo()
    torch.set_num_threads(threads)   # num_threads=1 below sets it process-wide


def _cfg(out, **kw) -> RunConfig:
    base = {"data": "demo", "demo_n": 200, "image_size": 32, "lp_epochs": 3, "fft_epochs": 2, "batch_size": 64,
                "out": str(out), "num_threads": 1}
    base.update(kw)
    return RunConfig(**base)


def _tiny(out, **kw) -> RunConfig:
    return _cfg(out, **{"demo_n": 120, "lp_epochs": 2, "fft_epochs": 1, **kw})


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8") as f:
        r = csv.DictReader(f)
        return list(r.fieldnames), list(r)


def _events(run_dir: Path) -> list[dict]:
    lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]        # every line must be valid JSON


@pytest.fixture(scope="module")
def turn_run(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "turn"
    cfg = _cfg(out)
    seen: list[dict] = []
    result = pipeline.run(cfg, progress=seen.append)
    assert Path(result) == out
    return cfg, out, seen


# ------------------------------------------------------------------------ the run directory
def test_status_finished(turn_run):
    _, out, _ = turn_run
    st = read_status(out)
    assert st["state"] == "finished"
    assert st["method"] == "turn" and st["error"] is None
    assert st["ended"] >= st["started"]
    assert Run(out).missing() == []


def test_samples_csv(turn_run):
    cfg, out, _ = turn_run
    header, rows = _read_csv(out / "samples.csv")
    assert header == SAMPLE_COLUMNS + ["loss_fft_1", "loss_fft_2", "true_label", "is_noisy"]
    conf = json.loads((out / "config.json").read_text())
    assert len(rows) == cfg.demo_n == conf["dataset"]["n_train"]
    assert [int(r["index"]) for r in rows] == list(range(len(rows)))
    assert len({r["path"] for r in rows}) == len(rows)
    root = Path(conf["dataset"]["root"])
    assert all((root / r["path"]).is_file() for r in rows)
    classes = set(conf["classes"])
    assert classes == {str(d) for d in range(10)}
    for r in rows:
        assert 0.0 <= float(r["suspicion"]) <= 1.0
        assert 0.0 <= float(r["clean_prob"]) <= 1.0
        assert 0.0 <= float(r["confidence"]) <= 1.0
        assert -1.0 <= float(r["margin"]) <= 1.0
        assert 0.0 <= float(r["knn_agreement"]) <= 1.0
        assert r["flagged"] in ("0", "1") and r["is_noisy"] in ("0", "1")
        assert {r["given_label"], r["predicted_label"], r["suggested_label"], r["true_label"]} <= classes
        assert (r["suggested_label"] != r["given_label"]) == (r["flagged"] == "1")
        assert (r["is_noisy"] == "1") == (r["true_label"] != r["given_label"])
        for col in ("loss_lp", "loss_fft_1", "loss_fft_2"):
            assert float(r[col]) >= 0.0
    noisy = sum(r["is_noisy"] == "1" for r in rows)
    assert 0.1 * len(rows) <= noisy <= 0.3 * len(rows)         # demo: 20 % symmetric noise


def test_samples_match_the_demo_dataset(turn_run, cache):
    from turn_core.demo import load_demo

    cfg, out, _ = turn_run
    ds = load_demo(n=cfg.demo_n, noise=cfg.demo_noise, rate=cfg.demo_noise_rate, seed=cfg.seed)
    train = ds.subset(ds.splits == "train")
    _, rows = _read_csv(out / "samples.csv")
    assert [r["path"] for r in rows] == list(train.paths)
    assert [r["given_label"] for r in rows] == [train.classes[i] for i in train.labels]
    assert [r["true_label"] for r in rows] == [train.classes[i] for i in train.true_labels]


def test_arrays(turn_run):
    cfg, out, _ = turn_run
    n = cfg.demo_n
    pre = np.load(out / "features_pre.npy", allow_pickle=False)
    post = np.load(out / "features_post.npy", allow_pickle=False)
    assert pre.shape == post.shape == (n, 1280)
    assert pre.dtype == post.dtype == np.float16
    assert np.isfinite(pre).all() and np.isfinite(post).all()
    assert not np.array_equal(pre, post)                        # FFT changed the extractor
    thumbs = np.load(out / "thumbs.npy", allow_pickle=False)
    t = min(cfg.thumb_size, cfg.image_size)          # thumbnails never upscale the cached image
    assert thumbs.shape == (n, t, t, 3) and thumbs.dtype == np.uint8
    assert thumbs.std() > 0
    probs = np.load(out / "probs.npy", allow_pickle=False)
    assert probs.shape == (n, 10) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    _, rows = _read_csv(out / "samples.csv")
    assert [int(r["predicted_label"]) for r in rows] == probs.argmax(axis=1).tolist()


def test_gmm_json(turn_run):
    cfg, out, _ = turn_run
    gmm = json.loads((out / "gmm.json").read_text())
    assert len(gmm) == cfg.fft_epochs + 1
    assert [g["epoch"] for g in gmm] == list(range(1, cfg.fft_epochs + 1)) + [cfg.fft_epochs]
    assert gmm[-1].get("final") is True
    for g in gmm:
        assert g["tau"] == cfg.tau
        assert g["clean_component"] == int(np.argmin(g["means"]))
        assert len(g["means"]) == len(g["variances"]) == len(g["weights"]) == 2


def test_events(turn_run):
    cfg, out, seen = turn_run
    events = _events(out)
    assert all({"t", "phase", "kind"} <= e.keys() for e in events)
    lp = [e for e in events if e["phase"] == "lp" and e["kind"] == "epoch"]
    assert [e["epoch"] for e in lp] == [1, 2, 3]
    assert all(e["epochs"] == 3 and np.isfinite(e["loss"]) for e in lp)
    gmm = [e for e in events if e["phase"] == "fft" and e["kind"] == "gmm"]
    assert [e["epoch"] for e in gmm] == [1, 2]
    for e in gmm:
        assert set(e["clean_per_class"]) == {str(d) for d in range(10)}
        assert sum(e["clean_per_class"].values()) == e["n_train"] > 0
        assert e["tau"] == cfg.tau
    fft = [e for e in events if e["phase"] == "fft" and e["kind"] == "epoch"]
    assert [e["epoch"] for e in fft] == [1, 2]
    assert all("clean_per_class" in e for e in fft)
    timed = {e["phase"] for e in events if e["kind"] == "timing"}
    assert set(TIMING_PHASES) <= timed
    # the callback saw every non-step event that was written
    assert [e for e in seen if e["kind"] != "step"] == [e for e in events if e["kind"] != "step"]
    assert any(e["kind"] == "step" and e["phase"] == "fft" for e in seen)


def test_metrics_json(turn_run):
    _, out, _ = turn_run
    m = json.loads((out / "metrics.json").read_text())
    d = m["detection"]
    assert {"precision", "recall", "f1", "auroc", "n_flagged", "n_noisy", "n"} <= d.keys()
    for key in ("precision", "recall", "f1", "auroc"):
        assert 0.0 <= d[key] <= 1.0
    for key in ("test_accuracy", "test_accuracy_lp"):
        assert 0.0 <= m[key] <= 1.0
    assert m["n_test"] > 0
    assert set(TIMING_PHASES) <= m["timings"].keys()
    assert all(v >= 0 for v in m["timings"].values())
    # the detection numbers are those of samples.csv
    _, rows = _read_csv(out / "samples.csv")
    want = detection_metrics([r["is_noisy"] == "1" for r in rows], [r["flagged"] == "1" for r in rows],
                             [float(r["suspicion"]) for r in rows])
    for key in ("precision", "recall", "f1", "n_flagged", "n_noisy", "n"):
        assert d[key] == pytest.approx(want[key])
    assert d["auroc"] == pytest.approx(want["auroc"], abs=1e-4)
    assert m["n_flagged"] == d["n_flagged"] and m["n_train"] == len(rows)


def test_model_safetensors(turn_run):
    import timm
    from safetensors import safe_open
    from safetensors.torch import load_file

    _, out, _ = turn_run
    sd = load_file(str(out / "model.safetensors"))
    assert tuple(sd["classifier.weight"].shape) == (10, 1280)
    assert tuple(sd["classifier.bias"].shape) == (10,)
    model = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=10)
    model.load_state_dict(sd, strict=True)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["model"] == "mobilenetv2_100"
    assert json.loads(meta["classes"]) == [str(d) for d in range(10)]
    assert not list(out.glob(".*.tmp"))


def test_config_json_round_trip(turn_run):
    cfg, out, _ = turn_run
    back = RunConfig.from_json(out / "config.json")
    assert back == cfg
    conf = json.loads((out / "config.json").read_text())
    assert conf["resolved"]["image_size"] == 32
    assert conf["dataset"]["kind"] == "demo"


def test_same_seed_same_result(turn_run, tmp_path):
    cfg, out, _ = turn_run
    if json.loads((out / "config.json").read_text())["resolved"]["device"] != "cpu":
        # GPU kernels (cudnn.benchmark, atomics) are not bit-reproducible: two CPU runs instead
        cfg = dataclasses.replace(cfg, device="cpu", out=str(tmp_path / "cpu"))
        out = pipeline.run(cfg)
    again = pipeline.run(dataclasses.replace(cfg, out=str(tmp_path / "again")))
    _, a = _read_csv(out / "samples.csv")
    _, b = _read_csv(again / "samples.csv")
    assert [r["suspicion"] for r in a] == [r["suspicion"] for r in b]
    assert a == b


# --------------------------------------------------------------------------------- methods
@pytest.mark.parametrize("method", ["ce-lp", "gce-lp", "ce-fft"])
def test_baseline_methods(cache, tmp_path, method):
    cfg = _tiny(tmp_path / method, method=method)
    out = pipeline.run(cfg)
    assert read_status(out)["state"] == "finished"
    header, rows = _read_csv(out / "samples.csv")
    assert len(rows) == 120
    fft_cols = [h for h in header if h.startswith("loss_fft_")]
    gmm = json.loads((out / "gmm.json").read_text())
    events = _events(out)
    if method == "ce-fft":
        assert fft_cols == ["loss_fft_1"]
        assert (out / "features_post.npy").exists()
        assert len(gmm) == 1 and gmm[0]["final"]            # no clean-set selection: final fit only
        fft = [e for e in events if e["phase"] == "fft" and e["kind"] == "epoch"]
        assert [e["n_train"] for e in fft] == [120]        # CE-FFT trains on every sample
        assert not [e for e in events if e["kind"] == "gmm"]
    else:
        assert fft_cols == []
        assert not (out / "features_post.npy").exists()
        assert len(gmm) == 1
        assert not [e for e in events if e["phase"] == "fft"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == method
    if method != "ce-fft":
        assert m["test_accuracy"] == m["test_accuracy_lp"]


def test_lp_loss_choice_matters(cache, tmp_path):
    a = pipeline.run(_tiny(tmp_path / "ce", method="ce-lp", lp_epochs=2))
    b = pipeline.run(_tiny(tmp_path / "gce", method="gce-lp", lp_epochs=2))
    _, ra = _read_csv(a / "samples.csv")
    _, rb = _read_csv(b / "samples.csv")
    assert [r["loss_lp"] for r in ra] != [r["loss_lp"] for r in rb]


# ---------------------------------------------------------------------------------- cancel
def test_cancel_at_first_fft_step(cache, tmp_path):
    out = tmp_path / "cancelled"
    token = CancelToken()
    steps = []

    def progress(ev):
        if ev["phase"] == "fft" and ev["kind"] == "step":
            steps.append(ev)
            token.cancel()

    with pytest.raises(Cancelled):
        pipeline.run(_tiny(out), progress=progress, cancel=token)
    assert len(steps) == 1
    st = json.loads((out / "status.json").read_text())
    assert st["state"] == "cancelled"
    assert read_status(out)["state"] == "cancelled"
    events = _events(out)
    assert events[-1]["phase"] == "done" and events[-1].get("message") == "cancelled"
    for name in ("metrics.json", "model.safetensors", "gmm.json", "probs.npy"):
        assert not (out / name).exists(), name
    # the one table on disk is the provisional one, written before FFT, and it says so
    assert (out / "samples.csv").exists() and st.get("provisional") is True
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]   # no temp files


# ------------------------------------------------------------------------------ bad input
def test_missing_data_folder(cache, tmp_path):
    out = tmp_path / "bad"
    missing = tmp_path / "no_such_folder"
    with pytest.raises(InputError) as e:
        pipeline.run(_tiny(out, data=str(missing)))
    assert "no_such_folder" in str(e.value)
    st = read_status(out)
    assert st["state"] == "failed"
    assert st["error"] == str(e.value)
    assert "InputError" in (out / "run.log").read_text()
    assert not (out / "samples.csv").exists()


def test_invalid_config_writes_nothing(cache, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(InputError, match="bogus"):
        pipeline.run(_tiny(out, method="bogus"))
    assert not out.exists()


def _fake_status(out: Path, pid: int) -> dict:
    out.mkdir(parents=True)
    st = {"state": "running", "pid": pid, "host": socket.gethostname(), "started": 1.0,
          "format": 1, "method": "turn", "error": None}
    (out / "status.json").write_text(json.dumps(st))
    return st


def test_run_dir_of_a_live_run_is_refused(cache, tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = tmp_path / "busy"
        st = _fake_status(out, other.pid)
        with pytest.raises(InputError, match="still going"):
            pipeline.run(_tiny(out, method="gce-lp"))
        assert json.loads((out / "status.json").read_text()) == st      # untouched
        assert not (out / "samples.csv").exists()
    finally:
        other.kill()
        other.wait()


def test_running_status_of_this_process_is_not_refused(cache, tmp_path):
    """The job registry writes status "running" with this process's pid before it starts the
    run's thread: that run is the one starting, not a rival."""
    out = tmp_path / "ours"
    _fake_status(out, os.getpid())
    pipeline.run(_tiny(out, method="ce-lp", lp_epochs=1))
    assert read_status(out)["state"] == "finished"


def test_run_dir_of_a_dead_run_is_reused(cache, tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    out = tmp_path / "stale"
    _fake_status(out, p.pid)
    pipeline.run(_tiny(out, method="gce-lp", lp_epochs=1))
    st = read_status(out)
    assert st["state"] == "finished" and st["pid"] == os.getpid()


# ------------------------------------------------------------------ re-run into a used folder
@pytest.fixture(scope="module")
def rerun(cache, tmp_path_factory):
    """A finished TURN run, then a GCE-LP run with ``out`` pointing at the same folder (the CLI's
    default ``--out runs/latest`` / ``runs/demo`` does exactly this on every second call)."""
    out = tmp_path_factory.mktemp("rerun") / "same"
    pipeline.run(_tiny(out, lp_epochs=1))
    first = json.loads((out / "status.json").read_text())
    import time

    time.sleep(0.05)
    t_second = time.time()
    try:
        pipeline.run(_tiny(out, method="gce-lp", lp_epochs=2))
        refused = None
    except InputError as e:
        refused = e
    return out, first, t_second, refused


def test_rerun_records_its_own_start_time(rerun):
    out, first, t_second, refused = rerun
    st = json.loads((out / "status.json").read_text())
    if refused is not None:          # refusing to overwrite a finished run is fine too
        assert st == first
        return
    assert st["state"] == "finished"
    assert st["started"] >= t_second > first["started"]


def test_rerun_leaves_no_stale_artefacts(rerun):
    out, first, _, refused = rerun
    if refused is not None:
        assert json.loads((out / "status.json").read_text()) == first
        return
    events = _events(out)
    lp = [e for e in events if e["phase"] == "lp" and e["kind"] == "epoch"]
    assert [e["epoch"] for e in lp] == [1, 2]                       # only the GCE-LP run's epochs
    assert not [e for e in events if e["phase"] == "fft"]
    assert not (out / "features_post.npy").exists()                  # GCE-LP has no FFT features
    assert json.loads((out / "config.json").read_text())["settings"]["method"] == "gce-lp"


# ------------------------------------------------------------------------- batch norm in FFT
@pytest.mark.parametrize("bn_mode", ["fold", "frozen", "recalibrate"])
def test_fft_trains_the_features_the_lp_head_saw(cache, tmp_path, bn_mode):
    """A zero-learning-rate FFT epoch must leave every loss as LP left it: otherwise FFT starts
    from a model the LP head was never fitted to (what "recalibrate" does; the demo's LP test
    accuracy fell from 0.79 to 0.09 by recalibration alone)."""
    out = pipeline.run(_tiny(tmp_path / bn_mode, bn_mode=bn_mode, fft_lr=0.0))
    _, rows = _read_csv(out / "samples.csv")
    lp = np.array([float(r["loss_lp"]) for r in rows])
    fft = np.array([float(r["loss_fft_1"]) for r in rows])
    same = np.allclose(lp, fft, rtol=1e-3, atol=1e-3)
    assert same == (bn_mode != "recalibrate")
    m = json.loads((out / "metrics.json").read_text())
    if bn_mode != "recalibrate":
        assert m["test_accuracy"] == m["test_accuracy_lp"]


# --------------------------------------------------------------- registry names, before any work
@pytest.mark.parametrize("setting, value", [("flag_rule", "papr"), ("score", "suspicious"),
                                            ("weights", "internet"), ("device", "tpu")])
def test_unknown_name_fails_before_any_phase(tmp_path, monkeypatch, setting, value):
    from turn_core.settings import registry_choices

    loaded = []
    monkeypatch.setattr(pipeline, "load_inputs", lambda config: loaded.append(config))
    out = tmp_path / "never"
    with pytest.raises(InputError) as e:
        pipeline.run(_tiny(out, **{setting: value}))
    msg = str(e.value)
    assert "--" + setting.replace("_", "-") in msg and repr(value) in msg
    assert all(choice in msg for choice in registry_choices()[setting])     # the valid choices named
    assert loaded == []                                                      # no phase started
    assert not (out / "events.jsonl").exists() and not out.exists()


# ------------------------------------------------------------- unreadable files, left out by index
def _colour_png(path: Path, colour, seed: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour)[None, None] + rng.integers(-40, 40, (20, 20, 3)), 0, 255)
    Image.fromarray(arr.astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def skip_data(tmp_path_factory):
    """A manifest of 3 colour classes (8 train + 2 test images each) with one unreadable training
    file (row 5) and one unreadable test file; returns (folder, rows as [path, label, split])."""
    root = tmp_path_factory.mktemp("skipdata")
    rows = []
    for c, colour in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
        for i in range(10):
            rel = f"{'rgb'[c]}/{i}.png"
            _colour_png(root / rel, colour, seed=10 * c + i)
            rows.append([rel, "rgb"[c], "train" if i < 8 else "test"])
    (root / "r" / "broken.png").write_text("not an image")
    (root / "g" / "empty.png").write_bytes(b"")
    rows.insert(5, ["r/broken.png", "r", "train"])
    rows.append(["g/empty.png", "g", "test"])
    return root, rows


def _manifest(folder: Path, rows, name: str) -> Path:
    path = folder / name
    path.write_text("path,label,split\n" + "".join(",".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_skipped_files_leave_the_cache_on_disk(cache, skip_data, tmp_path, monkeypatch):
    """Every pass reads the training and test images from the memmap of the on-disk cache, by
    row index; none gets a copy of the kept rows (1M images at 224 px would be 150 GB)."""
    from turn_core import images, train

    folder, rows = skip_data
    seen = []

    def spy(module, name, arg):
        real = getattr(module, name)

        def wrapper(*a, **k):
            seen.append((name, k.get("phase"), a[arg]))
            return real(*a, **k)
        monkeypatch.setattr(module, name, wrapper)

    for name in ("forward_pass", "fft_epoch", "recalibrate_bn"):
        spy(train, name, 1)
    spy(images, "make_thumbnails", 0)
    out = pipeline.run(_tiny(tmp_path / "r", data=str(_manifest(folder, rows, "m.csv")), bn_mode="recalibrate"))

    assert {name for name, _, _ in seen} == {"forward_pass", "fft_epoch", "recalibrate_bn", "make_thumbnails"}
    assert ("forward_pass", "test") in {(name, phase) for name, phase, _ in seen}
    cached = {p.resolve() for p in (cache / "images").glob("images-*.npy")}
    for name, _, arr in seen:
        assert isinstance(arr, np.memmap), f"{name} got a {type(arr).__name__}, not the cache's memmap"
        assert Path(arr.filename).resolve() in cached
    with open(out / "skipped.csv", newline="", encoding="utf-8") as f:
        assert sorted(r["path"] for r in csv.DictReader(f)) == ["g/empty.png", "r/broken.png"]
    _, samples = _read_csv(out / "samples.csv")
    train_rows = [r for r in rows if r[2] == "train"]
    kept = [i for i, r in enumerate(train_rows) if r[0] != "r/broken.png"]
    assert [s["path"] for s in samples] == [train_rows[i][0] for i in kept]
    # sample i's thumbnail is cache row kept[i]: the index map is right, not just the type
    train_cache = next(np.load(p, mmap_mode="r") for p in cached if np.load(p, mmap_mode="r").shape[0] == 25)
    assert np.array_equal(np.load(out / "thumbs.npy"), train_cache[kept])
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_train"] == 24 and m["n_test"] == 6


def test_relabelled_manifest_reuses_the_image_cache(cache, skip_data, tmp_path):
    """The cache is keyed on the files, not their labels: a rerun on a cleaned manifest decodes
    nothing new."""
    folder, rows = skip_data
    pipeline.run(_tiny(tmp_path / "a", method="ce-lp", lp_epochs=1, data=str(_manifest(folder, rows, "m1.csv"))))
    before = sorted((cache / "images").glob("images-*"))
    relabelled = [[p, "g" if i == 0 else lab, split] for i, (p, lab, split) in enumerate(rows)]
    out = pipeline.run(_tiny(tmp_path / "b", method="ce-lp", lp_epochs=1,
                             data=str(_manifest(folder, relabelled, "m2.csv"))))
    assert sorted((cache / "images").glob("images-*")) == before
    _, samples = _read_csv(out / "samples.csv")
    assert samples[0]["given_label"] == "g"


# ---------------------------------------------------------------------------- entering at a phase
def test_phases_run_in_parts_on_one_state(cache, tmp_path):
    """A caller (a test, a resumed run, another rank) can stop after a phase and go on later
    with the same state."""
    from turn_core.rundir import RunWriter

    cfg = _tiny(tmp_path / "parts")
    writer = RunWriter(cfg.out)
    events = []
    state = pipeline.new_state(cfg, writer, lambda ev: events.append(dict(ev)))
    pipeline.run_phases(state, stop="cache")
    assert isinstance(state.images, np.memmap) and state.rows.tolist() == list(range(cfg.demo_n))
    assert state.feats_pre is None and (tmp_path / "parts" / "thumbs.npy").exists()
    assert [e["phase"] for e in events if e["kind"] == "timing"] == ["data", "backbone", "cache"]
    pipeline.run_phases(state, start="features", stop="lp")
    assert state.logits.shape == (cfg.demo_n, 10) and len(state.losses) == 1
    assert not (tmp_path / "parts" / "samples.csv").exists()
    with pytest.raises(ValueError, match="not one of data, backbone"):
        pipeline.run_phases(state, start="train")
    writer.close()


# ---------------------------------------------------------------------------- no room for a cache
def test_no_room_for_the_cache_decodes_in_the_loaders_workers(cache, skip_data, tmp_path, monkeypatch):
    """With too little free disk the run builds no cache, says so in a warning event, decodes the
    files in the passes, and finds the same unreadable files and numbers as a run with a cache."""
    from turn_core import images

    folder, rows = skip_data
    data = str(_manifest(folder, rows, "nodisk.csv"))
    with_cache = pipeline.run(_tiny(tmp_path / "cached", data=data, device="cpu"))   # CPU: bit-exact
    before = sorted((cache / "images").glob("images-*"))
    for npy in before:             # a cache already on disk needs no room: make it missing
        npy.rename(npy.with_name(npy.name + ".away"))
    monkeypatch.setattr(images, "free_disk_bytes", lambda path: 1 << 20)
    out = pipeline.run(_tiny(tmp_path / "decoded", data=data, device="cpu"))

    assert not list((cache / "images").glob("images-*.npy"))
    warnings = [e for e in _events(out) if e["kind"] == "warning" and e["phase"] == "cache"]
    assert len(warnings) == 1 and warnings[0]["fallback"] == "decode"
    assert "decodes the images in the loader's workers" in warnings[0]["message"]
    assert json.loads((out / "config.json").read_text())["resolved"]["images"] == "decoded"
    assert json.loads((with_cache / "config.json").read_text())["resolved"]["images"] == "cache"
    assert (out / "skipped.csv").read_text() == (with_cache / "skipped.csv").read_text()
    assert np.array_equal(np.load(out / "thumbs.npy"), np.load(with_cache / "thumbs.npy"))
    (_, a), (_, b) = _read_csv(with_cache / "samples.csv"), _read_csv(out / "samples.csv")
    assert [r["suspicion"] for r in a] == [r["suspicion"] for r in b]


def test_enough_room_builds_the_cache(cache, skip_data, tmp_path, monkeypatch):
    from turn_core import images

    folder, rows = skip_data
    seen = []
    monkeypatch.setattr(images, "free_disk_bytes", lambda path: seen.append(path) or 1 << 40)
    small = [r for r in rows if r[0] != "b/0.png"]     # a new file list: its cache is not there yet
    out = pipeline.run(_tiny(tmp_path / "r", method="ce-lp", lp_epochs=1, data=str(_manifest(folder, small, "s.csv"))))
    assert seen, "the free disk was never checked"
    assert not [e for e in _events(out) if e["kind"] == "warning" and e["phase"] == "cache"]
    assert json.loads((out / "config.json").read_text())["resolved"]["images"] == "cache"
