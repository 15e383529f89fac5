"""Hugging Face ``datasets`` in: a ``save_to_disk`` folder or ``hf://NAME[:split]`` → ``Dataset``.

* Sources: a folder written by ``datasets.Dataset.save_to_disk`` (it holds ``state.json`` and
  ``dataset_info.json``) or by ``DatasetDict.save_to_disk`` (``dataset_dict.json``), or a hub
  name ``hf://NAME`` / ``hf://NAME:split`` (needs the network, or the hub's local cache).
* Columns: the image column is the one ``Image`` feature and the label column the one
  ``ClassLabel`` feature, unless named; a named label column may also hold class-name strings.
  A truth column (the known-true label, for benchmarks) is only used when named: a
  ``ClassLabel``, class indices, or class names.
* Splits: a ``DatasetDict``'s ``train`` split is audited, ``test`` becomes the test split and
  ``validation`` the val split; other splits are left out. A single split (``split=`` or a
  single ``Dataset``) is all audited.
* Images: each row's encoded bytes are written as they are (no re-encode) once into
  ``cache_dir()/hf/<key>/<split>/<row>.<ext>``; ``Dataset.files`` point there, so
  ``turn_core.images`` decodes them like any file. ``Dataset.paths`` name the rows
  (``train/00000123``). A row without an image or label is dropped into ``Dataset.skipped``.
* Identity: ``hf_record(dataset)`` gives the ``datasets`` fingerprint(s) of the source, read
  from ``hf_source.json`` in the cache folder, for the run directory to record.

Bad input (no Image column, no ClassLabel, a named column missing, an unreachable hub) raises
``InputError`` naming the column or source and what to do.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .config import cache_dir
from .data import Dataset, check_training_counts
from .errors import InputError

HF_PREFIX = "hf://"
MANIFEST = "hf_source.json"
# datasets' split name → ours; a DatasetDict's other splits (e.g. "unsupervised") are left out.
SPLIT_MAP = {"train": "train", "test": "test", "validation": "val", "valid": "val", "val": "val"}
# Leading bytes → file extension, so exported media open in any viewer (decoding sniffs anyway).
_MAGIC = ((b"\x89PNG", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"),
          (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))
_SAVED_MARKERS = ("dataset_dict.json", "state.json")


def is_hf_source(source: str | Path) -> bool:
    """True for ``hf://…`` strings and folders written by ``save_to_disk``."""
    text = str(source)
    if text.startswith(HF_PREFIX):
        return True
    folder = Path(text).expanduser()
    return folder.is_dir() and any((folder / m).is_file() for m in _SAVED_MARKERS)


def load_hf_dataset(source: str | Path, *, image_column: str | None = None,
                    label_column: str | None = None, truth_column: str | None = None,
                    split: str | None = None, classes: list[str] | None = None) -> Dataset:
    """Load a ``save_to_disk`` folder or ``hf://NAME[:split]`` as a ``Dataset`` (kind "hf").

    image_column / label_column: override the detected ``Image`` / ``ClassLabel`` column.
    truth_column: the known-true label (benchmarks); None = unknown.
    split: take only this split of a DatasetDict (or hub dataset), audited as "train".
    classes: fix the class list (an evaluation set loaded against a training set's classes):
    a label outside it raises ``InputError``.
    Row i of the result is row i of the chosen splits in order (train, then val, then test),
    minus rows without image or label (listed in ``skipped``).
    """
    parts, name = _open(source, split)
    first = next(iter(parts.values()))
    cols = detect_columns(first.features, image_column=image_column, label_column=label_column,
                          truth_column=truth_column, where=str(source))
    for part_name, part in parts.items():
        if part.features != first.features:
            raise InputError(f"{source}: split {part_name!r} has other columns than the first "
                             "split; pass split= to use one")
    class_list = _class_names(first, cols["label"], classes, str(source))
    folder = _materialise(parts, cols["image"], str(source))
    rows = _collect_rows(parts, cols, class_list, folder, str(source))
    if not rows["paths"]:
        raise InputError(f"{source}: no row has both an image and a label")
    ds = _make_dataset(
        name=name, kind="hf", root=folder, paths=rows["paths"], files=rows["files"],
        labels=np.asarray(rows["labels"], dtype=np.int64), classes=class_list,
        truth=None if truth_column is None else np.asarray(rows["truth"], dtype=np.int64),
        splits=np.asarray(rows["splits"], dtype=str), skipped=rows["skipped"], source=str(source))
    if classes is None:
        check_training_counts(ds, str(source))
    return ds


def hf_record(dataset: Dataset) -> dict | None:
    """What identifies a dataset loaded by ``load_hf_dataset``: ``{"source", "fingerprint",
    "split_fingerprints", "image_column", "datasets_version"}`` (None for other datasets).

    ``fingerprint`` is the ``datasets`` fingerprint (one split) or a hash of the splits' ones.
    """
    if dataset.kind != "hf":
        return None
    try:
        return json.loads((Path(dataset.root) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


# --------------------------------------------------------------------------- columns
def detect_columns(features: Any, *, image_column: str | None = None,
                   label_column: str | None = None, truth_column: str | None = None,
                   where: str = "dataset") -> dict[str, str | None]:
    """``{"image", "label", "truth"}`` column names from a ``datasets.Features`` mapping.

    An unnamed image (label) column is the only ``Image`` (``ClassLabel``) feature; a named one
    must exist. Raises ``InputError`` naming the columns there are.
    """
    import datasets

    names = list(features)
    listing = ", ".join(f"{n} ({type(features[n]).__name__})" for n in names)

    def pick(given: str | None, kind: type, what: str, flag: str) -> str:
        if given is not None:
            if given not in features:
                raise InputError(f"{where}: no column {given!r} for the {what} (columns: {listing})")
            return given
        # A column named for another role (the truth) is no candidate.
        found = [n for n in names if isinstance(features[n], kind) and n != truth_column]
        if len(found) == 1:
            return found[0]
        if not found:
            raise InputError(f"{where}: no {kind.__name__} column for the {what} (columns: "
                             f"{listing}); name one with {flag}")
        raise InputError(f"{where}: several {kind.__name__} columns ({', '.join(found)}); name "
                         f"the {what} with {flag}")

    image = pick(image_column, datasets.Image, "images", "--image-column")
    if image_column is not None and not isinstance(features[image], datasets.Image):
        raise InputError(f"{where}: column {image!r} is {type(features[image]).__name__}, not an "
                         "Image column (name the image column with --image-column)")
    label = pick(label_column, datasets.ClassLabel, "labels", "--label-column")
    if truth_column is not None and truth_column not in features:
        raise InputError(f"{where}: no truth column {truth_column!r} (columns: {listing})")
    if len({image, label, truth_column} - {None}) < (3 if truth_column else 2):
        raise InputError(f"{where}: the image, label and truth columns must differ "
                         f"({image}, {label}, {truth_column})")
    return {"image": image, "label": label, "truth": truth_column}


def _class_names(part, label: str, classes: list[str] | None, where: str) -> list[str]:
    """ClassLabel names in their order; a string column's names sorted (as an image folder's);
    ``classes`` when given (checked later, row by row)."""
    import datasets

    if classes is not None:
        return list(classes)
    feature = part.features[label]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return sorted({v for v in part[label] if v})
    raise InputError(f"{where}: label column {label!r} is {feature}, expected a ClassLabel or "
                     "a column of class names")


def _row_class(value: Any, feature: Any, index: dict[str, int], column: str,
               where: str) -> int | None:
    """Class index of one label / truth cell (None: no label), or InputError."""
    import datasets

    if value is None or value == "" or (isinstance(value, (int, np.integer)) and value < 0):
        return None
    if isinstance(feature, datasets.ClassLabel):
        value = feature.int2str(int(value))
    if isinstance(value, (int, np.integer)):
        if not 0 <= value < len(index):
            raise InputError(f"{where}: column {column!r} holds class index {value}, outside "
                             f"0..{len(index) - 1}")
        return int(value)
    if str(value) not in index:
        raise InputError(f"{where}: column {column!r} holds {value!r}, not one of the "
                         f"{len(index)} classes")
    return index[str(value)]


def _collect_rows(parts: dict, cols: dict, classes: list[str], folder: Path, where: str) -> dict:
    """Paths, files, labels, truth and splits of the usable rows; the others as skipped."""
    index = {c: i for i, c in enumerate(classes)}
    files = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"]
    out: dict[str, list] = {k: [] for k in ("paths", "files", "labels", "truth", "splits", "skipped")}
    for part_name, part in parts.items():
        feats = part.features
        labels = part[cols["label"]]
        truths = part[cols["truth"]] if cols["truth"] else [None] * len(part)
        for i, (label, truth) in enumerate(zip(labels, truths)):
            path = _row_path(part_name, i)
            stored = files.get(path)
            if not isinstance(stored, str):
                out["skipped"].append((path, stored["skip"]))
                continue
            y = _row_class(label, feats[cols["label"]], index, cols["label"], f"{where} row {path}")
            t = (None if cols["truth"] is None else
                 _row_class(truth, feats[cols["truth"]], index, cols["truth"], f"{where} row {path}"))
            if y is None or (cols["truth"] is not None and t is None):
                out["skipped"].append((path, "no label" if y is None else "no truth label"))
                continue
            out["paths"].append(path)
            out["files"].append(folder / stored)
            out["labels"].append(y)
            out["truth"].append(t)
            # One split alone is the set to audit, whatever datasets calls it.
            out["splits"].append(SPLIT_MAP.get(part_name, "train") if len(parts) > 1 else "train")
    return out


def _row_path(split: str, row: int) -> str:
    """The identity of a dataset row: ``<split>/<row, 8 digits>``."""
    return f"{split}/{row:08d}"


# --------------------------------------------------------------------------- opening
def _open(source: str | Path, split: str | None) -> tuple[dict, str]:
    """({datasets split name: datasets.Dataset} in train, val, test order; display name)."""
    try:
        import datasets
    except ImportError:
        raise InputError(f"{source}: reading Hugging Face datasets needs the `datasets` package "
                         "(pip install datasets)") from None
    text = str(source)
    if text.startswith(HF_PREFIX):
        name, _, hub_split = text[len(HF_PREFIX):].partition(":")
        if not name:
            raise InputError(f"{text}: expected hf://NAME or hf://NAME:split")
        obj = _load_hub(datasets, name, hub_split or split, text)
        display = name.rsplit("/", 1)[-1]
    else:
        folder = Path(text).expanduser()
        try:
            obj = datasets.load_from_disk(str(folder))
        except (FileNotFoundError, OSError, ValueError) as e:
            raise InputError(f"{folder} is not a folder written by datasets' save_to_disk: "
                             f"{_first_line(e)}") from None
        display = folder.resolve().name or text
    if isinstance(obj, datasets.Dataset):
        return {str(obj.split or split or "train"): obj}, display
    available = list(obj.keys())
    if split is not None:
        if split not in obj:
            raise InputError(f"{source}: no split {split!r} (splits: {', '.join(available)})")
        return {split: obj[split]}, display
    if len(available) == 1:
        return {available[0]: obj[available[0]]}, display
    if "train" not in obj:
        raise InputError(f"{source}: no 'train' split (splits: {', '.join(available)}); "
                         "name one with :split")
    order = sorted((n for n in available if n in SPLIT_MAP),
                   key=lambda n: ("train", "val", "test").index(SPLIT_MAP[n]))
    return {n: obj[n] for n in order}, display


def _load_hub(datasets, name: str, split: str | None, text: str):
    """``datasets.load_dataset(name, split=…)`` with the hub's failures as one-line InputErrors."""
    try:
        return datasets.load_dataset(name, split=split or None)
    except (ConnectionError, TimeoutError) as e:  # no network, or HF_HUB_OFFLINE=1
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")
        why = "offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)" if offline else _first_line(e)
        raise InputError(f"{text}: cannot reach the Hugging Face hub: {why}; connect, or save the "
                         "dataset with save_to_disk on a machine online and pass that folder") from None
    except (OSError, ValueError) as e:  # DatasetNotFoundError (a FileNotFoundError), bad split
        raise InputError(f"{text}: cannot load it from the Hugging Face hub: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


# --------------------------------------------------------------------------- image files
def _fingerprints(parts: dict) -> dict[str, str]:
    return {n: str(getattr(p, "_fingerprint", "") or "") for n, p in parts.items()}


def _materialise(parts: dict, image: str, where: str) -> Path:
    """The cache folder holding every row's image bytes (written once; reused after).

    Keyed on the splits' ``datasets`` fingerprints and the image column; built in a temporary
    folder renamed into place, so a half-written cache is never used.
    """
    import datasets

    fps = _fingerprints(parts)
    combined = (next(iter(fps.values())) if len(fps) == 1 else
                hashlib.sha256(json.dumps(fps, sort_keys=True).encode()).hexdigest()[:16])
    key = hashlib.sha256(json.dumps([fps, image]).encode()).hexdigest()[:20]
    final = cache_dir() / "hf" / key
    if (final / MANIFEST).is_file():
        return final
    tmp = final.with_name(f".{key}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    files: dict[str, Any] = {}
    try:
        for part_name, part in parts.items():
            (tmp / part_name).mkdir(parents=True, exist_ok=True)
            raw = part.select_columns([image]).cast_column(image, datasets.Image(decode=False))
            for i, cell in enumerate(raw[image]):
                path = _row_path(part_name, i)
                files[path] = _write_image(cell, tmp, path)
        manifest = {"source": where, "fingerprint": combined, "split_fingerprints": fps,
                    "image_column": image, "datasets_version": datasets.__version__, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        if final.exists():  # left by an interrupted build before this rule, or a racing one
            if (final / MANIFEST).is_file():
                return final
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:  # another process renamed its finished copy into place first
            if not (final / MANIFEST).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _write_image(cell: dict | None, folder: Path, path: str) -> str | dict:
    """Write one cell's encoded bytes under ``folder``: the relative file name, or
    ``{"skip": reason}`` when the row has no image."""
    data = (cell or {}).get("bytes")
    src = (cell or {}).get("path")
    if data is None and src:
        try:
            data = Path(src).read_bytes()
        except OSError:
            return {"skip": f"image file {src} not found"}
    if data is None:
        return {"skip": "no image"}
    ext = next((e for magic, e in _MAGIC if data.startswith(magic)), None)
    if ext is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        ext = ".webp"
    if ext is None:
        suffix = Path(src or "").suffix.lower()
        ext = suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ".img"
    name = path + ext
    (folder / name).write_bytes(data)
    return name


# --------------------------------------------------------------------------- Dataset
def _make_dataset(*, truth: np.ndarray | None, **kw: Any) -> Dataset:
    """Build a ``Dataset`` whatever its truth field is called (``true_labels``, formerly
    ``clean_labels``): the name is changing across the project."""
    names = {f.name for f in dataclasses.fields(Dataset)}
    field = "true_labels" if "true_labels" in names else "clean_labels"
    return Dataset(**kw, **{field: truth})


__all__ = ["HF_PREFIX", "SPLIT_MAP", "detect_columns", "hf_record", "is_hf_source", "load_hf_dataset"]
