"""turn_core.data: image folders, CSV manifests, the demo; every bad input is an InputError."""
from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from turn_core.data import Dataset, load_dataset
from turn_core.demo import load_demo
from turn_core.errors import InputError


def _img(path: Path, colour=(10, 20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), colour).save(path)
    return path


def _write_csv(path: Path, rows: list[list[str]], header=("path", "label")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        if header:
            w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    """root/cat/{a,b}.png, root/dog/{c,d}.png + dog/sub/e.png, plus files that must be ignored."""
    root = tmp_path / "pets"
    for rel in ("cat/a.png", "cat/b.png", "dog/c.png", "dog/d.png", "dog/sub/e.png"):
        _img(root / rel)
    (root / "cat" / ".DS_Store").write_bytes(b"x")
    (root / ".hidden").mkdir()
    _img(root / ".hidden" / "x.png")
    (root / "dog" / ".cache").mkdir()
    _img(root / "dog" / ".cache" / "y.png")
    (root / "README.txt").write_text("not a class")
    return root


@pytest.fixture
def manifest(tmp_path) -> Path:
    for i in range(6):
        _img(tmp_path / "img" / f"{i}.png")
    rows = [["img/0.png", "cat", "train"], ["img/1.png", "cat", "train"],
            ["img/2.png", "dog", "train"], ["img/3.png", " dog ", "train"],
            ["img/4.png", "dog", "val"], ["img/5.png", "cat", "test"]]
    return _write_csv(tmp_path / "data.csv", rows, header=("path", "label", "split"))


# --------------------------------------------------------------------------- image folder
def test_folder_layout(folder):
    ds = load_dataset(folder)
    assert ds.kind == "folder" and ds.root == folder.resolve() and ds.name == "pets"
    assert ds.classes == ["cat", "dog"]
    assert ds.paths == ["cat/a.png", "cat/b.png", "dog/c.png", "dog/d.png", "dog/sub/e.png"]
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 0, 1, 1, 1]
    assert all(f.is_absolute() and f.exists() for f in ds.files)
    assert ds.splits.tolist() == ["train"] * 5 and ds.true_labels is None
    assert ("README.txt", "not inside a class folder") in ds.skipped
    assert ds.source == str(folder)


def test_folder_keeps_non_image_files_for_decode_to_judge(folder):
    (folder / "cat" / "notes.txt").write_text("x")
    assert "cat/notes.txt" in load_dataset(folder).paths


def test_folder_missing(tmp_path):
    with pytest.raises(InputError, match="nope.* does not exist"):
        load_dataset(tmp_path / "nope")


def test_folder_empty_class_named(folder):
    (folder / "bird").mkdir()
    with pytest.raises(InputError, match="class folder 'bird'"):
        load_dataset(folder)


def test_folder_without_class_folders(tmp_path):
    _img(tmp_path / "flat" / "a.png")
    with pytest.raises(InputError, match="no class subfolders"):
        load_dataset(tmp_path / "flat")


def test_folder_single_class(tmp_path):
    for n in "ab":
        _img(tmp_path / "one" / "cat" / f"{n}.png")
    with pytest.raises(InputError, match="at least 2 classes"):
        load_dataset(tmp_path / "one")


def test_folder_class_with_one_image_named(folder):
    _img(folder / "bird" / "only.png")
    with pytest.raises(InputError, match="class 'bird' has 1 training image"):
        load_dataset(folder)


def test_folder_symlink_outside_is_skipped(folder, tmp_path):
    secret = _img(tmp_path / "secret.png")
    os.symlink(secret, folder / "cat" / "link.png")
    ds = load_dataset(folder)
    assert "cat/link.png" not in ds.paths
    assert ("cat/link.png", "symlink points outside the folder") in ds.skipped


def test_folder_with_fixed_classes(folder):
    ds = load_dataset(folder, classes=["bird", "cat", "dog"])
    assert ds.classes == ["bird", "cat", "dog"] and ds.labels.tolist() == [1, 1, 2, 2, 2]
    with pytest.raises(InputError, match="'dog'"):
        load_dataset(folder, classes=["cat", "bird"])


def test_subset_and_fingerprint(folder):
    ds = load_dataset(folder)
    sub = ds.subset(ds.labels == 1)
    assert sub.paths == ["dog/c.png", "dog/d.png", "dog/sub/e.png"] and sub.classes == ds.classes
    assert ds.subset([4, 0]).paths == ["dog/sub/e.png", "cat/a.png"]
    assert len(ds) == 5 and len(sub) == 3
    fp = ds.fingerprint()
    assert len(fp) == 64 and fp == load_dataset(folder).fingerprint()
    assert sub.fingerprint() != fp
    (folder / "cat" / "a.png").write_bytes(b"x" * 10)   # content size changed
    assert load_dataset(folder).fingerprint() != fp


# --------------------------------------------------------------------------- CSV
def test_csv_basic(manifest):
    ds = load_dataset(manifest)
    assert ds.kind == "csv" and ds.root == manifest.parent.resolve() and ds.name == "data"
    assert ds.classes == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 1, 1, 1, 0]
    assert ds.splits.tolist() == ["train"] * 4 + ["val", "test"]
    assert ds.paths[0] == "img/0.png" and ds.files[0] == manifest.parent.resolve() / "img/0.png"


def test_csv_bom_and_optional_columns(tmp_path):
    for i in range(4):
        _img(tmp_path / f"{i}.png")
    text = "\ufeffPath , Label,Clean_Label\n0.png,a,a\n1.png,a,b\n./2.png,b,b\nx/../3.png,b,b\n"
    (tmp_path / "m.csv").write_text(text, encoding="utf-8")
    ds = load_dataset(tmp_path / "m.csv")
    assert ds.paths == ["0.png", "1.png", "2.png", "3.png"]
    assert ds.true_labels.tolist() == [0, 1, 1, 1] and ds.splits.tolist() == ["train"] * 4


@pytest.mark.parametrize("column", ["true_label", "clean_label"])
def test_csv_true_label_column_under_either_name(tmp_path, column):
    """true_label is today's name; clean_label (older manifests, the demo's before the rename)
    means the same and still loads."""
    for i in range(4):
        _img(tmp_path / f"{i}.png")
    m = _write_csv(tmp_path / "m.csv", [["0.png", "a", "b"], ["1.png", "a", "a"], ["2.png", "b", "b"],
                                        ["3.png", "b", "a"]], header=("path", "label", column))
    ds = load_dataset(m)
    assert ds.true_labels.tolist() == [1, 0, 1, 0] and ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.subset([3, 0]).true_labels.tolist() == [0, 1]


def test_csv_root_argument(tmp_path):
    for i in range(4):
        _img(tmp_path / "images" / f"{i}.png")
    (tmp_path / "meta").mkdir()
    m = _write_csv(tmp_path / "meta" / "m.csv", [[f"{i}.png", "ab"[i % 2]] for i in range(4)])
    ds = load_dataset(m, root=tmp_path / "images")
    assert ds.root == (tmp_path / "images").resolve() and len(ds) == 4


def test_csv_missing_file_is_skipped_not_fatal(manifest):
    (manifest.parent / "img" / "4.png").unlink()
    ds = load_dataset(manifest)
    assert "img/4.png" not in ds.paths and ds.skipped == [("img/4.png", "file not found")]
    assert len(ds.labels) == len(ds.paths) == len(ds.splits) == 5


def _bad_csv(tmp_path, text: str, name="bad.csv") -> Path:
    for i in range(4):
        _img(tmp_path / f"{i}.png")
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


GOOD = "0.png,a\n1.png,a\n2.png,b\n3.png,b\n"


@pytest.mark.parametrize("text, match", [
    ("", "bad.csv is empty"),
    ("path,label\n", "bad.csv has a header but no rows"),
    ("file,label\n0.png,a\n", "bad.csv lacks column path"),
    ("file,class\n0.png,a\n", "lacks columns path, label"),
    ("path,label\n" + GOOD + "0.png, \n", "row 6: empty label"),
    ("path,label\n" + GOOD + ",a\n", "row 6: empty path"),
    ("path,label,split\n0.png,a,train\n1.png,a,train\n2.png,b,train\n3.png,b,dev\n",
     "row 5: split 'dev'"),
    ("path,label\n" + GOOD + "/etc/passwd,a\n", "row 6: absolute path '/etc/passwd'"),
    ("path,label\n" + GOOD + "C:\\x\\y.png,a\n", "row 6: absolute path"),
    ("path,label\n" + GOOD + "../x.png,a\n", r"row 6: path '\.\./x\.png' points outside"),
    ("path,label\n" + GOOD + "sub/../../x.png,a\n", "row 6: path .* points outside"),
    ("path,label\n0.png,a\n1.png,a\n2.png,b\n3.png,b\n./1.png,a\n",
     "rows 3 and 6 both list '1.png'"),
    ("path,label,clean_label\n0.png,a,a\n1.png,a,z\n2.png,b,b\n3.png,b,b\n",
     "row 3: clean_label 'z'"),
    ("path,label,clean_label\n0.png,a,a\n1.png,a,\n2.png,b,b\n3.png,b,b\n",
     "row 3: empty clean_label"),
    ("path,label,true_label\n0.png,a,a\n1.png,a,\n2.png,b,b\n3.png,b,b\n",
     "row 3: empty true_label"),
    ("path,label,true_label\n0.png,a,a\n1.png,a,q\n2.png,b,b\n3.png,b,b\n",
     "row 3: true_label 'q' is not one of the classes"),
    ("path,label,true_label,clean_label\n0.png,a,a,a\n1.png,a,a,a\n2.png,b,b,b\n3.png,b,b,b\n",
     "both a true_label and a clean_label column"),
    ("path,label\n0.png,a\n1.png,a\n", "at least 2 classes"),
    ("path,label\n0.png,a\n1.png,a\n2.png,b\n", "class 'b' has 1 training image"),
    ("path,label,split\n0.png,a,train\n1.png,a,train\n2.png,b,train\n3.png,b,test\n",
     "class 'b' has 1 training image"),
    ("path,label\n9.png,a\n8.png,b\n", "none of the 2 listed files exist"),
    ('path,label\n0.png,"a\n1.png,a\n', "bad.csv"),
])
def test_csv_bad_input_names_the_problem(tmp_path, text, match):
    with pytest.raises(InputError, match=match) as e:
        load_dataset(_bad_csv(tmp_path, text))
    assert "\n" not in str(e.value).strip()


def test_csv_row_number_counts_multiline_fields(tmp_path):
    text = 'path,label\n0.png,"a\nstill a"\n1.png,"a\nstill a"\n2.png,b\n3.png,b\n,b\n'
    with pytest.raises(InputError, match="row 8: empty path"):
        load_dataset(_bad_csv(tmp_path, text))


def test_csv_symlink_escaping_root(tmp_path):
    outside = tmp_path / "outside"
    _img(outside / "x.png")
    p = _bad_csv(tmp_path / "ds", "path,label\n" + GOOD + "link/x.png,a\n")
    os.symlink(outside, tmp_path / "ds" / "link")
    with pytest.raises(InputError, match="row 6: path 'link/x.png' resolves .*symlink.* outside"):
        load_dataset(p)


def test_csv_wrong_encoding(tmp_path):
    _img(tmp_path / "0.png")
    p = tmp_path / "latin.csv"
    p.write_bytes("path,label\n0.png,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(InputError, match="latin.csv is not UTF-8.*UTF-8"):
        load_dataset(p)


def test_csv_missing_manifest_and_wrong_kind(tmp_path):
    with pytest.raises(InputError, match="missing.csv does not exist"):
        load_dataset(tmp_path / "missing.csv")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(InputError, match="x.json is neither"):
        load_dataset(tmp_path / "x.json")


def test_csv_unknown_label_with_fixed_classes(manifest):
    with pytest.raises(InputError, match=r"row 4: label 'dog'"):
        load_dataset(manifest, classes=["cat", "bird"])
    ds = load_dataset(manifest, classes=["dog", "cat", "bird"])
    assert ds.classes == ["dog", "cat", "bird"] and ds.labels.tolist() == [1, 1, 0, 0, 0, 1]


# Labels with commas, quotes, newlines-free unicode; leading/trailing whitespace is stripped.
_label = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1,
                 max_size=12).filter(lambda s: s.strip() != "")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(labels=st.lists(_label, min_size=2, max_size=6, unique_by=str.strip), data=st.data())
def test_csv_labels_round_trip(tmp_path_factory, labels, data):
    root = tmp_path_factory.mktemp("rt")
    rows = []
    for ci, label in enumerate(labels):
        for j in range(2):
            name = f"{ci}_{j}.png"
            (root / name).write_bytes(b"")  # decode is not data.py's job: any file will do
            rows.append([name, label])
    order = data.draw(st.permutations(range(len(rows))))
    rows = [rows[i] for i in order]
    _write_csv(root / "m.csv", rows)
    ds = load_dataset(root / "m.csv")
    assert ds.classes == sorted(lab.strip() for lab in labels)
    assert [ds.classes[i] for i in ds.labels] == [lab.strip() for _, lab in rows]
    assert ds.paths == [p for p, _ in rows]


# --------------------------------------------------------------------------- demo
@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("demo-cache")


def test_demo_counts_truth_and_noise(demo_cache):
    ds = load_demo(n=600, n_test=200, rate=0.3, seed=1, cache_dir=demo_cache)
    assert isinstance(ds, Dataset) and ds.kind == "demo" and ds.source == "demo"
    assert ds.classes == [str(d) for d in range(10)]
    train, test = ds.splits == "train", ds.splits == "test"
    assert train.sum() == 600 and test.sum() == 200 and len(ds) == 800
    assert np.all(np.bincount(ds.true_labels[train], minlength=10) == 60)
    assert np.all(np.bincount(ds.labels[test], minlength=10) == 20)
    assert np.array_equal(ds.labels[test], ds.true_labels[test])
    realised = (ds.labels[train] != ds.true_labels[train]).mean()
    assert abs(realised - 0.3) < 5 * np.sqrt(0.3 * 0.7 / 600)
    assert len(set(ds.paths)) == 800 and not ds.skipped and all(f.exists() for f in ds.files)
    # The PNGs are real 28×28 digits whose folder is their true class.
    img = Image.open(ds.files[0])
    assert img.size == (28, 28) and np.asarray(img).max() > 100
    assert all(p.split("/")[1] == ds.classes[c] for p, c in zip(ds.paths, ds.true_labels))
    assert (ds.root / "manifest-symmetric-0.3-n600-t200-s1.csv").exists()


def test_demo_second_call_fast_and_identical(demo_cache):
    a = load_demo(n=400, n_test=100, seed=2, cache_dir=demo_cache)
    t = time.perf_counter()
    b = load_demo(n=400, n_test=100, seed=2, cache_dir=demo_cache)
    assert time.perf_counter() - t < 3.0
    assert a.paths == b.paths and np.array_equal(a.labels, b.labels)
    c = load_demo(n=400, n_test=100, seed=3, cache_dir=demo_cache)
    assert not np.array_equal(a.labels, c.labels)


@pytest.mark.parametrize("noise, kw", [("asymmetric", {"asym_map": "next"}), ("instance", {}),
                                       ("none", {})])
def test_demo_noise_kinds(demo_cache, noise, kw):
    ds = load_demo(n=500, n_test=0, noise=noise, rate=0.4, seed=0, cache_dir=demo_cache, **kw)
    flipped = ds.labels != ds.true_labels
    if noise == "none":
        assert not flipped.any()
    else:
        assert 0.3 < flipped.mean() < 0.5
    if noise == "asymmetric":
        assert np.all(ds.labels[flipped] == (ds.true_labels[flipped] + 1) % 10)


def test_demo_env_cache_dir_and_bad_sizes(demo_cache, monkeypatch):
    monkeypatch.setenv("TURN_AUDIT_CACHE", str(demo_cache))
    ds = load_demo(n=100, n_test=0)
    assert ds.root == (demo_cache / "demo-mnist").resolve()
    with pytest.raises(InputError, match="n=4900, n_test=500"):
        load_demo(n=4900, n_test=500, cache_dir=demo_cache)
    with pytest.raises(InputError, match="rate"):
        load_demo(n=100, rate=1.0, cache_dir=demo_cache)
