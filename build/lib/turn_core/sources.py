"""Where a new run's images come from: the app's source choice → the ``data`` string of the run.

The Data & run page offers four kinds of source (``SOURCES``): the built-in demo, a path on
the server, an uploaded folder and an uploaded ZIP. Each kind has one resolver that turns what
the person gave (nothing, a typed path, the uploaded files, the uploaded archive) into the string
``RunConfig.data`` takes, going through ``turn_core.safety`` for everything that comes from the
browser. Uploads are saved under ``<runs root>/_uploads/``.
"""
from __future__ import annotations

import csv
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError
from .safety import extract_zip_safely, resolve_under_roots, save_uploaded_files

UPLOADS = "_uploads"   # folder under the runs root that holds saved uploads


def new_upload_dir(runs_root: str | Path) -> Path:
    """A fresh folder name for one upload: ``<runs_root>/_uploads/<timestamp>-<6 hex>`` (not
    created; the random part keeps two uploads in one second apart)."""
    return Path(runs_root) / UPLOADS / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def manifest_or_folder(folder: str | Path) -> Path:
    """What to load from an extracted archive: its CSV manifest, else the folder itself.

    The manifest is the one top-level CSV whose header has ``path`` and ``label`` (its images
    may lie in sub-folders beside it), or the first top-level CSV when there is no sub-folder at
    all (then the loader names what is wrong with it)."""
    folder = Path(folder)
    csvs = sorted(p for p in folder.glob("*.csv") if p.is_file())
    manifests = [p for p in csvs if _has_manifest_header(p)]
    if len(manifests) == 1:
        return manifests[0]
    if csvs and not any(p.is_dir() for p in folder.iterdir()):
        return csvs[0]
    return folder


def _has_manifest_header(path: Path) -> bool:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return {"path", "label"} <= {h.strip().lower() for h in header}


# --------------------------------------------------------------------------- the four kinds
def _demo(given: Any, runs_root: Path) -> str:
    return "demo"


def _server(given: Any, runs_root: Path) -> str:
    text = str(given or "").strip()
    return str(resolve_under_roots(text)) if text else ""


def _folder(given: Any, runs_root: Path) -> str:
    return str(save_uploaded_files(given, new_upload_dir(runs_root))) if given else ""


def _zip(given: Any, runs_root: Path) -> str:
    if given is None:
        return ""
    return str(manifest_or_folder(extract_zip_safely(given, new_upload_dir(runs_root))))


@dataclass(frozen=True)
class Source:
    """One kind of source: ``label`` for people; ``resolve(given, runs_root) -> data string``
    ("" while nothing was given yet)."""

    label: str
    resolve: Callable[[Any, Path], str]


SOURCES: dict[str, Source] = {
    "demo": Source("Built-in demo (labels flipped on purpose, truth known)", _demo),
    "server": Source("A folder or CSV on this server", _server),
    "folder": Source("Upload a folder", _folder),
    "zip": Source("Upload a ZIP", _zip),
}


def resolve_source(kind: str, given: Any, runs_root: str | Path) -> str:
    """The ``data`` string of a run for source ``kind`` (a ``SOURCES`` key).

    ``given``: ignored for "demo"; the typed path for "server" (must lie under the allowed
    roots); the uploaded files (``.name`` + ``.getvalue()``) for "folder"; the uploaded archive
    (path, bytes or file object) for "zip". Returns "" while nothing was given. ``InputError``
    for an unknown kind, a path outside the allowed folders, or an unsafe upload."""
    if kind not in SOURCES:
        raise InputError(f"source kind {kind!r} is not one of {', '.join(SOURCES)}")
    return SOURCES[kind].resolve(given, Path(runs_root))


def load_source(source: str | Path, *, classes: list[str] | None = None, image_column: str | None = None,
                label_column: str | None = None, truth_column: str | None = None):
    """A run's ``data`` string (``source``) → ``turn_core.data.Dataset``: a Hugging Face dataset (a
    ``save_to_disk`` folder or ``hf://NAME[:split]``, see ``turn_core.hf``), else an image folder
    or a CSV manifest (``turn_core.data.load_dataset``). ``classes`` fixes the class list (a
    separate test set); the column names only apply to Hugging Face datasets."""
    from . import data, hf

    if hf.is_hf_source(source):
        return hf.load_hf_dataset(source, image_column=image_column, label_column=label_column,
                                  truth_column=truth_column, classes=classes)
    return data.load_dataset(source, classes=classes)


__all__ = ["SOURCES", "UPLOADS", "Source", "load_source", "manifest_or_folder", "new_upload_dir", "resolve_source"]
