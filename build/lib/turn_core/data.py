"""Inputs → ``Dataset``: an image folder or a CSV manifest.

* Image folder: ``root/<class>/<image>``; the class is the first-level subfolder, images may
  sit in nested folders below it; hidden files and folders (and ``__MACOSX``) are ignored.
  Every file is a candidate: whether it decodes is decided by ``turn_core.images`` later.
* CSV manifest: columns ``path,label`` and optionally ``split`` (train/val/test) and
  ``true_label`` (the known-correct label, for benchmarks; ``clean_label`` is accepted as the
  same column, the name older manifests use). Paths are relative to the CSV's folder (or
  ``root=``). Read as UTF-8 (a BOM is fine) with the csv module, so labels may hold commas,
  quotes and any unicode.
* The built-in demo lives in ``turn_core.demo`` (it injects noise, a method-layer step).

Anything structurally wrong raises ``InputError`` with a one-line message naming the file, the
row (1-based line of the CSV) or the value. A manifest row whose file is missing is not
structural: it is dropped and listed in ``Dataset.skipped`` so the run goes on.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import InputError

SPLITS = ("train", "val", "test")
# Files that operating systems drop into folders; never images.
_JUNK_NAMES = {"thumbs.db", "desktop.ini", "__macosx"}
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")  # C:\x or C:/x (a name like "a:b.png" is fine)


@dataclass
class Dataset:
    """A labelled image set. Row i of every array describes image ``files[i]``."""

    name: str                          # short display name
    kind: str                          # "folder" | "csv" | "demo"
    root: Path                         # folder the manifest paths are relative to
    paths: list[str]                   # identity of each image: POSIX path relative to root
    files: list[Path]                  # absolute paths
    labels: np.ndarray                 # int64 (N,): given labels, indices into classes
    classes: list[str]                 # class names (sorted, unless given by the caller)
    true_labels: np.ndarray | None     # int64 (N,): the true labels when known, else None
    splits: np.ndarray                 # str (N,): "train" | "val" | "test"
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) dropped rows
    source: str = ""                   # what the user passed

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, mask_or_indices) -> Dataset:
        """The rows selected by a boolean mask (N,) or an index array; classes unchanged."""
        sel = np.asarray(mask_or_indices)
        if sel.dtype == bool:
            if sel.shape != (len(self.paths),):
                raise ValueError(f"mask has shape {sel.shape}, expected ({len(self.paths)},)")
            idx = np.flatnonzero(sel)
        else:
            idx = sel.astype(np.int64).reshape(-1)
        return replace(
            self,
            paths=[self.paths[i] for i in idx],
            files=[self.files[i] for i in idx],
            labels=self.labels[idx].copy(),
            true_labels=None if self.true_labels is None else self.true_labels[idx].copy(),
            splits=self.splits[idx].copy(),
            classes=list(self.classes),
            skipped=list(self.skipped),
        )

    def fingerprint(self) -> str:
        """sha256 hex of every (path, label name, file size): "this dataset with these labels".

        Recorded in config.json. Cheap (one stat per file) and independent of where the folder
        lives. Not the image cache's key: that is file identity only
        (``turn_core.images.cache_key``), so a relabelled manifest reuses the decoded images.
        """
        h = hashlib.sha256()
        for path, file, label in zip(self.paths, self.files, self.labels):
            try:
                size = os.stat(file).st_size
            except OSError:
                size = -1
            h.update(f"{path}\0{self.classes[label]}\0{size}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()


# --------------------------------------------------------------------------- entry point
def load_dataset(source: str | Path, *, root: str | Path | None = None,
                 classes: list[str] | None = None) -> Dataset:
    """Load an image folder or a CSV manifest (the demo is ``turn_core.demo.load_demo``).

    root: the folder CSV paths are relative to (default: the CSV's folder); not used for an
    image folder, whose root is the folder itself.
    classes: fix the class list (e.g. the training set's, when loading a separate test set):
    a label outside it raises ``InputError``. The dataset is then taken to be an evaluation
    set, so the "at least 2 training images per class" checks are skipped.
    """
    src = Path(source).expanduser()
    if not src.exists():
        raise InputError(f"{src} does not exist (expected an image folder or a .csv manifest)")
    if src.is_dir():
        if root is not None and Path(root).resolve() != src.resolve():
            raise InputError(f"root={root} was given for image folder {src}: an image folder "
                             "is its own root")
        return _load_folder(src, str(source), classes)
    if src.suffix.lower() == ".csv":
        return _load_csv(src, str(source), root, classes)
    raise InputError(f"{src} is neither a folder nor a .csv manifest")


# --------------------------------------------------------------------------- image folder
def _hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in _JUNK_NAMES


def _load_folder(folder: Path, source: str, classes: list[str] | None) -> Dataset:
    real_root = folder.resolve()
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not _hidden(d.name))
    skipped: list[tuple[str, str]] = []
    for f in sorted(folder.iterdir()):
        if f.is_file() and not _hidden(f.name):
            skipped.append((f.name, "not inside a class folder"))
    if not class_dirs:
        raise InputError(f"image folder {folder} has no class subfolders "
                         "(expected {folder}/<class name>/<image>)")
    paths: list[str] = []
    names: list[str] = []
    for d in class_dirs:
        found = 0
        class_is_link = d.is_symlink()
        # followlinks=False: a symlinked folder could loop or lead outside the root.
        for dirpath, dirnames, filenames in os.walk(d):
            dirnames[:] = sorted(n for n in dirnames if not _hidden(n))
            for fn in sorted(filenames):
                if _hidden(fn):
                    continue
                full = Path(dirpath) / fn
                rel = full.relative_to(folder).as_posix()
                # Only a symlink (the file or its class folder: os.walk follows no other)
                # can lead outside; resolving every path would cost a stat per component.
                if (class_is_link or full.is_symlink()) and not _inside(full, real_root):
                    skipped.append((rel, "symlink points outside the folder"))
                    continue
                paths.append(rel)
                names.append(d.name)
                found += 1
        if found == 0:
            raise InputError(f"class folder {d.name!r} ({d}) has no images")
    if not paths:
        raise InputError(f"image folder {folder} has no images")
    class_list = _class_list(names, classes, where=str(folder))
    index = {c: i for i, c in enumerate(class_list)}
    labels = np.array([index[n] for n in names], dtype=np.int64)
    splits = np.full(len(paths), "train")
    ds = Dataset(name=folder.resolve().name or str(folder), kind="folder", root=real_root,
                 paths=paths, files=[real_root / p for p in paths], labels=labels,
                 classes=class_list, true_labels=None, splits=splits, skipped=skipped,
                 source=source)
    if classes is None:
        check_training_counts(ds, str(folder))
    return ds


def _class_list(names, classes: list[str] | None, where: str, rows=None) -> list[str]:
    """The class list: ``classes`` when given (every name must be in it), else sorted names."""
    if classes is None:
        return sorted(set(names))
    allowed = set(classes)
    for i, n in enumerate(names):
        if n not in allowed:
            at = f" row {rows[i]}" if rows is not None else ""
            raise InputError(f"{where}{at}: label {n!r} is not one of the {len(classes)} "
                             "classes of the training set")
    return list(classes)


def check_training_counts(ds: Dataset, where: str) -> None:
    """At least 2 classes and 2 training images per class, else ``InputError`` naming ``where``."""
    train = ds.labels[ds.splits == "train"]
    counts = np.bincount(train, minlength=len(ds.classes))
    if (counts > 0).sum() < 2:
        raise InputError(f"{where}: the training split needs at least 2 classes, "
                         f"found {int((counts > 0).sum())}")
    for c, n in zip(ds.classes, counts):
        if n < 2:
            raise InputError(f"{where}: class {c!r} has {n} training image{'s' if n != 1 else ''}"
                             ", at least 2 are needed")


def _inside(path: Path, real_root: Path) -> bool:
    """True when ``path`` (symlinks and '..' resolved) lies inside ``real_root``."""
    try:
        return path.resolve().is_relative_to(real_root)
    except (OSError, RuntimeError):  # symlink loop
        return False


# --------------------------------------------------------------------------- CSV manifest
def _read_text(csv_path: Path) -> str:
    try:
        data = csv_path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {csv_path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{csv_path} is not UTF-8 text (byte {e.start}): save the manifest as "
                         "UTF-8 CSV") from None


# The true-label column, under today's name and the one older manifests use (same meaning).
TRUE_LABEL_COLUMNS = ("true_label", "clean_label")


@dataclass
class _ManifestRows:
    """The rows of a manifest as read, before labels become indices (all lists of length R)."""

    lines: list[int] = field(default_factory=list)    # 1-based line where each record starts
    paths: list[str] = field(default_factory=list)    # normalised, relative to the root
    names: list[str] = field(default_factory=list)    # label names
    splits: list[str] = field(default_factory=list)
    true_names: list[str] = field(default_factory=list)  # empty when there is no true-label column


def _load_csv(csv_path: Path, source: str, root: str | Path | None,
              classes: list[str] | None) -> Dataset:
    text = _read_text(csv_path)
    if not text.strip():
        raise InputError(f"{csv_path} is empty (expected a header line path,label)")
    base = Path(root).expanduser() if root is not None else csv_path.parent
    if not base.is_dir():
        raise InputError(f"root folder {base} for {csv_path.name} does not exist")
    real_root = base.resolve()
    where = csv_path.name

    reader = csv.reader(io.StringIO(text, newline=""))
    columns = _read_header(reader, csv_path)
    true_col = next((c for c in TRUE_LABEL_COLUMNS if c in columns), None)
    rows = _read_rows(reader, columns, true_col, real_root, where)
    if not rows.paths:
        raise InputError(f"{csv_path} has a header but no rows")
    class_list = _class_list(rows.names, classes, where, rows.lines)
    index = {c: i for i, c in enumerate(class_list)}
    true_labels = None if true_col is None else _true_label_indices(rows, true_col, index, class_list, where)

    keep, skipped = _existing_files(rows.paths, real_root)
    if not keep:
        raise InputError(f"{csv_path}: none of the {len(rows.paths)} listed files exist under {real_root}")
    ds = Dataset(
        name=csv_path.stem, kind="csv", root=real_root,
        paths=[rows.paths[i] for i in keep], files=[real_root / rows.paths[i] for i in keep],
        labels=np.array([index[rows.names[i]] for i in keep], dtype=np.int64),
        classes=class_list,
        true_labels=None if true_labels is None else true_labels[keep],
        splits=np.array([rows.splits[i] for i in keep], dtype=str),
        skipped=skipped, source=source)
    if classes is None:
        check_training_counts(ds, where)
    return ds


def _read_header(reader, csv_path: Path) -> dict[str, int]:
    """Lower-cased column name → index (the first of duplicate names wins)."""
    try:
        header = next(reader)
    except csv.Error as e:
        raise InputError(f"{csv_path} line 1: {e}") from None
    columns = {name.strip().lower(): i for i, name in reversed(list(enumerate(header)))}
    missing = [c for c in ("path", "label") if c not in columns]
    if missing:
        raise InputError(f"{csv_path} lacks column{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(missing)} (header: {','.join(header)})")
    if all(c in columns for c in TRUE_LABEL_COLUMNS):
        raise InputError(f"{csv_path} has both a true_label and a clean_label column (the same "
                         "thing under two names): keep one")
    return columns


def _read_rows(reader, columns: dict[str, int], true_col: str | None, real_root: Path,
               where: str) -> _ManifestRows:
    """Every non-blank record after the header, checked one by one (InputError names the row)."""
    def cell(row: list[str], col: str) -> str:
        i = columns.get(col)
        return row[i] if i is not None and i < len(row) else ""

    out = _ManifestRows()
    first_row_of: dict[str, int] = {}
    line_end = reader.line_num
    while True:
        line = line_end + 1  # a quoted field may span lines: report where the record starts
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise InputError(f"{where} row {line}: {e}") from None
        line_end = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue  # blank line
        raw_path = cell(row, "path").strip()
        label = cell(row, "label").strip()
        if not raw_path:
            raise InputError(f"{where} row {line}: empty path")
        if not label:
            raise InputError(f"{where} row {line}: empty label for {raw_path!r}")
        split = cell(row, "split").strip().lower() or "train"
        if split not in SPLITS:
            raise InputError(f"{where} row {line}: split {cell(row, 'split').strip()!r} is not "
                             f"one of {', '.join(SPLITS)}")
        if true_col is not None:
            true_name = cell(row, true_col).strip()
            if not true_name:
                raise InputError(f"{where} row {line}: empty {true_col} (fill it on every row "
                                 "or drop the column)")
            out.true_names.append(true_name)
        rel = _relative_path(raw_path, real_root, where, line)
        if rel in first_row_of:
            raise InputError(f"{where} rows {first_row_of[rel]} and {line} both list {rel!r}")
        first_row_of[rel] = line
        out.lines.append(line)
        out.paths.append(rel)
        out.names.append(label)
        out.splits.append(split)
    return out


def _true_label_indices(rows: _ManifestRows, true_col: str, index: dict[str, int],
                        class_list: list[str], where: str) -> np.ndarray:
    """int64 (R,) class indices of the true-label column; every name must be a class."""
    for r, name in zip(rows.lines, rows.true_names):
        if name not in index:
            raise InputError(f"{where} row {r}: {true_col} {name!r} is not one of the classes "
                             f"({', '.join(class_list[:10])}{', ...' if len(class_list) > 10 else ''})")
    return np.array([index[name] for name in rows.true_names], dtype=np.int64)


def _existing_files(paths: list[str], real_root: Path) -> tuple[list[int], list[tuple[str, str]]]:
    """(indices of the paths that are files, (path, reason) for the rest).

    A missing file is not structural: its row is dropped, listed, and the run goes on."""
    keep, skipped = [], []
    for i, rel in enumerate(paths):
        full = real_root / rel
        if not full.exists():
            skipped.append((rel, "file not found"))
        elif not full.is_file():
            skipped.append((rel, "not a file"))
        else:
            keep.append(i)
    return keep, skipped


def _relative_path(raw: str, real_root: Path, where: str, line: int) -> str:
    """Normalised POSIX path relative to the root, or InputError for absolute / escaping paths."""
    if raw.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(raw):
        raise InputError(f"{where} row {line}: absolute path {raw!r}; paths must be relative "
                         f"to {real_root}")
    norm = os.path.normpath(raw).replace(os.sep, "/")
    if norm == ".." or norm.startswith("../"):
        raise InputError(f"{where} row {line}: path {raw!r} points outside {real_root}")
    if not _inside(real_root / norm, real_root):
        raise InputError(f"{where} row {line}: path {raw!r} resolves (through a symlink) "
                         f"outside {real_root}")
    return norm


__all__ = ["SPLITS", "TRUE_LABEL_COLUMNS", "Dataset", "check_training_counts", "load_dataset"]
