"""turn_core.sources: the Data & run page's source choice → the run's data string."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from inputs import zip_bytes

from turn_core.data import load_dataset
from turn_core.errors import InputError
from turn_core.safety import ROOTS_ENV
from turn_core.sources import (
    SOURCES,
    manifest_or_folder,
    new_upload_dir,
    resolve_source,
)


def _upload(name: str, data: bytes) -> io.BytesIO:
    f = io.BytesIO(data)
    f.name = name
    return f


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def test_every_kind_has_a_label_and_nothing_given_is_empty(tmp_path):
    assert set(SOURCES) == {"demo", "server", "folder", "zip"}
    assert all(s.label for s in SOURCES.values())
    assert resolve_source("demo", None, tmp_path) == "demo"
    for kind, nothing in (("server", "  "), ("folder", []), ("zip", None)):
        assert resolve_source(kind, nothing, tmp_path) == ""
    assert not (tmp_path / "_uploads").exists()


def test_unknown_kind_names_the_kinds(tmp_path):
    with pytest.raises(InputError, match="demo, server, folder, zip"):
        resolve_source("ftp", "x", tmp_path)


def test_server_path_inside_and_outside_the_roots(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    monkeypatch.setenv(ROOTS_ENV, str(data))
    assert resolve_source("server", f" {data} ", tmp_path) == str(data.resolve())
    with pytest.raises(InputError, match="outside"):
        resolve_source("server", "/etc", tmp_path)


def test_uploaded_folder_becomes_a_loadable_folder(tmp_path):
    png = _png()
    files = [_upload(f"pets/{c}/{i}.png", png) for c in ("cat", "dog") for i in range(2)]
    got = Path(resolve_source("folder", files, tmp_path / "runs"))
    assert got.name == "pets" and (tmp_path / "runs" / "_uploads") in got.parents
    ds = load_dataset(got)
    assert ds.classes == ["cat", "dog"] and len(ds) == 4


def test_uploaded_folder_with_a_bad_name_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"\.\./x\.png"):
        resolve_source("folder", [_upload("../x.png", b"x")], tmp_path)


def test_zip_of_class_folders_and_of_a_manifest(tmp_path):
    png = _png()
    folder_zip = zip_bytes({"set/cat/1.png": png, "set/dog/2.png": png})
    got = Path(resolve_source("zip", io.BytesIO(folder_zip), tmp_path))
    assert got.is_dir() and got.name == "set"
    # a manifest with its images in a sub-folder: the manifest is what gets loaded
    manifest = b"path,label\nimages/1.png,cat\nimages/2.png,dog\nimages/3.png,cat\nimages/4.png,dog\n"
    man_zip = zip_bytes({"m/labels.csv": manifest, **{f"m/images/{i}.png": png for i in range(1, 5)}})
    got = Path(resolve_source("zip", man_zip, tmp_path))
    assert got.name == "labels.csv"
    assert load_dataset(got).classes == ["cat", "dog"]


def test_manifest_or_folder_rules(tmp_path):
    (tmp_path / "a" / "cat").mkdir(parents=True)
    (tmp_path / "a" / "notes.csv").write_text("x,y\n1,2\n")
    assert manifest_or_folder(tmp_path / "a") == tmp_path / "a"      # stray CSV beside class folders
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "only.csv").write_text("x\n")
    assert manifest_or_folder(tmp_path / "b") == tmp_path / "b" / "only.csv"


def test_new_upload_dirs_differ(tmp_path):
    a, b = new_upload_dir(tmp_path), new_upload_dir(tmp_path)
    assert a != b and a.parent == b.parent == tmp_path / "_uploads" and not a.exists()
