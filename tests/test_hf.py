"""``turn_core.hf``: Hugging Face ``save_to_disk`` folders and ``hf://`` names → ``Dataset``.

Every dataset here is built offline with ``datasets`` from a few generated PNGs; the last test
runs the real pipeline on the same images as an image folder and as a ``save_to_disk`` folder.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets  # requirements-dev.txt; an optional extra ("hf") for users
import numpy as np
import pytest

from turn_core import hf
from turn_core.errors import InputError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("TURN_AUDIT_CACHE", str(path))
    return path


def _png(seed: int, size: int = 12) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _features(names=("cat", "dog", "owl"), truth: bool = False):
    f = {"img": datasets.Image(), "label": datasets.ClassLabel(names=list(names))}
    if truth:
        f["truth"] = datasets.ClassLabel(names=list(names))
    return datasets.Features(f)


def _table(n: int, seed: int = 0, k: int = 3) -> dict:
    labels = [i % k for i in range(n)]
    return {"img": [{"bytes": _png(seed * 1000 + i), "path": None} for i in range(n)],
            "label": labels, "truth": [(y + (i == 0)) % k for i, y in enumerate(labels)]}


def _saved(tmp_path, name="ds", n=9, truth=False, **kw) -> Path:
    table = _table(n)
    if not truth:
        table.pop("truth")
    ds = datasets.Dataset.from_dict(table, features=_features(truth=truth, **kw))
    ds.save_to_disk(str(tmp_path / name))
    return tmp_path / name


def _data_labels(ds):
    return ds.true_labels if hasattr(ds, "true_labels") else ds.clean_labels


# --------------------------------------------------------------------------- detection
def test_is_hf_source(tmp_path):
    saved = _saved(tmp_path)
    dd = datasets.DatasetDict(train=datasets.load_from_disk(str(saved)))
    dd.save_to_disk(str(tmp_path / "dict"))
    (tmp_path / "plain").mkdir()
    assert hf.is_hf_source(saved) and hf.is_hf_source(tmp_path / "dict")
    assert hf.is_hf_source("hf://user/name:train")
    assert not hf.is_hf_source(tmp_path / "plain")
    assert not hf.is_hf_source(tmp_path / "missing")


def test_loads_rows_labels_classes_and_bytes_as_they_are(tmp_path, cache):
    saved = _saved(tmp_path, names=("zebra", "ant", "moth"))   # ClassLabel order, not sorted
    ds = hf.load_hf_dataset(saved)
    assert ds.kind == "hf" and len(ds) == 9
    assert ds.classes == ["zebra", "ant", "moth"]
    assert ds.labels.tolist() == [i % 3 for i in range(9)]
    assert ds.paths[:2] == ["train/00000000", "train/00000001"]
    assert _data_labels(ds) is None and set(ds.splits) == {"train"}
    table = _table(9)
    for i, f in enumerate(ds.files):   # the encoded bytes, not a re-encode
        assert f.suffix == ".png" and f.read_bytes() == table["img"][i]["bytes"]
        assert Path(f).is_relative_to(cache / "hf")
    record = hf.hf_record(ds)
    assert record["fingerprint"] == datasets.load_from_disk(str(saved))._fingerprint
    assert record["image_column"] == "img"


def test_cache_is_written_once(tmp_path, cache):
    saved = _saved(tmp_path)
    first = hf.load_hf_dataset(saved)
    stamp = os.stat(first.files[3]).st_mtime_ns
    second = hf.load_hf_dataset(saved)
    assert second.files == first.files and os.stat(second.files[3]).st_mtime_ns == stamp
    assert len(list((cache / "hf").iterdir())) == 1   # no temporary folder left behind


def test_dataset_dict_splits_truth_and_skipped_rows(tmp_path, cache):
    table = _table(9)
    table["img"][4] = None          # a row without an image
    table["label"][5] = -1          # a row without a label (ClassLabel's "missing")
    feats = _features(truth=True)
    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_dict(table, features=feats),
        test=datasets.Dataset.from_dict(_table(6, seed=7), features=feats),
        unsupervised=datasets.Dataset.from_dict(_table(2, seed=9), features=feats))
    dd.save_to_disk(str(tmp_path / "dd"))
    ds = hf.load_hf_dataset(tmp_path / "dd", truth_column="truth")
    assert ds.splits.tolist() == ["train"] * 7 + ["test"] * 6
    assert "train/00000004" not in ds.paths and ds.paths[-1] == "test/00000005"
    assert dict(ds.skipped) == {"train/00000004": "no image", "train/00000005": "no label"}
    truth = _data_labels(ds)
    assert truth[0] == (ds.labels[0] + 1) % 3 and np.array_equal(truth[1:7], ds.labels[1:7])
    record = hf.hf_record(ds)
    assert set(record["split_fingerprints"]) == {"train", "test"}
    only_test = hf.load_hf_dataset(tmp_path / "dd", split="test", label_column="label")
    assert len(only_test) == 6 and set(only_test.splits) == {"train"}   # the split to audit
    assert only_test.paths[0] == "test/00000000"


def test_string_label_column_and_named_columns(tmp_path, cache):
    table = _table(6)
    table.pop("truth")
    table["name"] = [["b", "a"][y % 2] for y in table["label"]]
    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y", "z"]),
                               "name": datasets.Value("string")})
    datasets.Dataset.from_dict(table, features=feats).save_to_disk(str(tmp_path / "s"))
    ds = hf.load_hf_dataset(tmp_path / "s", label_column="name")
    assert ds.classes == ["a", "b"]
    assert [ds.classes[y] for y in ds.labels] == table["name"]


def test_classes_fixed_by_the_caller(tmp_path, cache):
    saved = _saved(tmp_path)
    ds = hf.load_hf_dataset(saved, classes=["owl", "dog", "cat", "emu"])
    assert ds.classes == ["owl", "dog", "cat", "emu"]
    assert [ds.classes[y] for y in ds.labels] == [["cat", "dog", "owl"][i % 3] for i in range(9)]
    with pytest.raises(InputError, match="'owl'"):
        hf.load_hf_dataset(saved, classes=["cat", "dog"])


# --------------------------------------------------------------------------- bad input
def test_bad_columns_name_the_column(tmp_path, cache):
    no_image = datasets.Dataset.from_dict({"x": [1, 2], "label": [0, 1]},
                                          features=datasets.Features({"x": datasets.Value("int64"),
                                                                      "label": datasets.ClassLabel(names=["a", "b"])}))
    no_image.save_to_disk(str(tmp_path / "noimg"))
    with pytest.raises(InputError, match="no Image column.*--image-column"):
        hf.load_hf_dataset(tmp_path / "noimg")
    no_label = datasets.Dataset.from_dict({"img": _table(2)["img"], "y": [0, 1]},
                                          features=datasets.Features({"img": datasets.Image(),
                                                                      "y": datasets.Value("int64")}))
    no_label.save_to_disk(str(tmp_path / "nolab"))
    with pytest.raises(InputError, match="no ClassLabel column.*--label-column"):
        hf.load_hf_dataset(tmp_path / "nolab")
    two = _saved(tmp_path, "two", truth=True)
    with pytest.raises(InputError, match="several ClassLabel columns \\(label, truth\\)"):
        hf.load_hf_dataset(two)
    with pytest.raises(InputError, match="no column 'lbl'"):
        hf.load_hf_dataset(two, label_column="lbl")
    with pytest.raises(InputError, match="no truth column 'gt'"):
        hf.load_hf_dataset(two, label_column="label", truth_column="gt")
    with pytest.raises(InputError, match="'label' is ClassLabel, not an Image"):
        hf.load_hf_dataset(two, image_column="label", label_column="truth")
    with pytest.raises(InputError, match="no split 'val'"):
        hf.load_hf_dataset(_dict(tmp_path), split="val")


def _dict(tmp_path) -> Path:
    saved = _saved(tmp_path, "one")
    datasets.DatasetDict(train=datasets.load_from_disk(str(saved))).save_to_disk(str(tmp_path / "dd1"))
    return tmp_path / "dd1"


def test_too_few_images_per_class(tmp_path, cache):
    table = _table(5)
    table.pop("truth")
    table["label"] = [0, 0, 0, 0, 1]
    datasets.Dataset.from_dict(table, features=_features()).save_to_disk(str(tmp_path / "few"))
    with pytest.raises(InputError, match="class 'dog' has 1 training image,"):
        hf.load_hf_dataset(tmp_path / "few")


def test_not_a_saved_dataset(tmp_path, cache):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "state.json").write_text("{}")
    with pytest.raises(InputError, match="not a folder written by datasets' save_to_disk"):
        hf.load_hf_dataset(tmp_path / "junk")


def test_hub_unreachable_is_an_input_error(tmp_path, monkeypatch):
    def offline(*a, **kw):
        raise ConnectionError("Couldn't reach 'x/y' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(InputError, match="hf://x/y:train: cannot reach the Hugging Face hub.*save_to_disk"):
        hf.load_hf_dataset("hf://x/y:train")
    with pytest.raises(InputError, match="expected hf://NAME"):
        hf.load_hf_dataset("hf://")


def test_hub_in_offline_mode_for_real(tmp_path):
    """The real ``datasets`` in offline mode (no network used): one clear line."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TURN_AUDIT_CACHE=str(tmp_path),
               HF_HOME=str(tmp_path / "hf_home"))
    code = ("from turn_core import hf\nfrom turn_core.errors import InputError\n"
            "try:\n    hf.load_hf_dataset('hf://nobody-here/no-such-set')\n"
            "except InputError as e:\n    print('INPUT_ERROR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert "INPUT_ERROR hf://nobody-here/no-such-set: cannot reach the Hugging Face hub: offline mode" in out.stdout, out.stderr


# --------------------------------------------------------------------------- pipeline
@pytest.mark.slow
def test_pipeline_scores_the_same_rows_as_an_image_folder(tmp_path, cache, monkeypatch):
    """The same images as a folder and as a save_to_disk dataset: same rows, labels, classes and
    numbers (the run's inputs are byte-identical images in the same order)."""
    import csv

    import torch

    from turn_core import data, pipeline
    from turn_core.config import RunConfig
    from turn_core.demo import load_demo

    demo = load_demo(n=60, n_test=0, noise="none", rate=0.0)
    folder = tmp_path / "folder"
    for f, y in zip(demo.files, demo.labels):
        target = folder / demo.classes[y] / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
    as_folder = data.load_dataset(folder)
    table = {"img": [{"bytes": f.read_bytes(), "path": None} for f in as_folder.files],
             "label": as_folder.labels.tolist()}
    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=as_folder.classes)})
    datasets.Dataset.from_dict(table, features=feats).save_to_disk(str(tmp_path / "saved"))

    threads = torch.get_num_threads()
    outs = {}
    try:
        for name, src in (("folder", folder), ("hf", tmp_path / "saved")):
            cfg = RunConfig(data=str(src), out=str(tmp_path / f"run_{name}"), image_size=32, lp_epochs=2,
                            fft_epochs=1, batch_size=32, num_threads=1, weights="offline")
            outs[name] = pipeline.run(cfg)
    finally:
        torch.set_num_threads(threads)

    def rows(run_dir):
        with open(run_dir / "samples.csv", newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))

    a, b = rows(outs["folder"]), rows(outs["hf"])
    assert len(a) == len(b) == 60
    assert [r["path"] for r in b] == [f"train/{i:08d}" for i in range(60)]
    for col in ("given_label", "predicted_label", "suggested_label", "flagged", "suspicion", "clean_prob"):
        assert [r[col] for r in a] == [r[col] for r in b], col
    import json

    cfg_a = json.loads((outs["folder"] / "config.json").read_text())
    cfg_b = json.loads((outs["hf"] / "config.json").read_text())
    assert cfg_a["classes"] == cfg_b["classes"] == as_folder.classes
    assert cfg_b["dataset"]["kind"] == "hf"
    assert cfg_b["dataset"]["hf"]["fingerprint"]          # the `datasets` fingerprint is recorded
