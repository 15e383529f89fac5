"""A finished run out to other tools: cleanlab arrays and a FiftyOne classification dataset.

* ``write_cleanlab(run_dir, out_dir)``: ``pred_probs.npy`` (float32 (N, K), rows summing to 1:
  the ensemble's class probabilities, ``turn_core.scores.suggestion_probs``, from
  ``RUN_DIR/ensemble_probs.npy`` or rebuilt from the run directory: see ``ensemble_probs``), ``labels.npy`` (int64 (N,) given labels in the order of ``classes.json``),
  ``label_issues.npy`` (bool (N,): the run's ``flagged`` column), ``label_quality_scores.npy``
  (float64 (N,): 1 − suspicion as written in samples.csv) and ``classes.json``.
  With the default score ("ensemble") the suspicion is 1 − ``pred_probs[i, labels[i]]``, so
  cleanlab's ``get_label_quality_scores`` (self-confidence) gives the same ranking. With
  ``score="paper"`` the suspicion comes from the GMM clean posterior, not from class
  probabilities: ``pred_probs`` is still the ensemble (what the suggestions come from) and
  the quality scores are the paper's clean posterior. ``turn_audit.json`` says which score,
  where ``pred_probs`` came from and on how many rows it does not reproduce the suspicion.
* ``write_fiftyone(run_dir, out_dir)``: FiftyOne's ``FiftyOneImageClassificationDataset``
  layout — ``data/<id>.<ext>`` media (a link to the original file when it is reachable, else
  the run's thumbnail as PNG), ``labels.json`` with the given labels, ``suggestions.json`` in
  the same format with the suggested label, its confidence and attributes (suspicion, flagged,
  decision, final_label, path), and ``README.md`` with a snippet loading both into one dataset.

``EXPORT_FORMATS`` maps a format name to its writer (the CLI's ``export --format``). Every
file is written through ``turn_core.rundir.atomic_*``.
"""
from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import InputError
from .rundir import (
    Run,
    atomic_save_npy,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)

UNREVIEWED = "unreviewed"


# --------------------------------------------------------------------------- shared reading
def _finished_run(run_dir: str | Path) -> Run:
    run = Run(run_dir)
    if run.samples() is None:
        raise InputError(f"run {run.dir} has no samples.csv yet: export a finished run")
    if not run.classes:
        raise InputError(f"run {run.dir}: config.json lists no classes")
    return run


def given_label_indices(run: Run) -> np.ndarray:
    """(N,) int64 index into ``run.classes`` of each sample's given label."""
    index = {c: i for i, c in enumerate(run.classes)}
    names = run.samples()["given_label"].tolist()
    unknown = sorted({n for n in names if n not in index})
    if unknown:
        raise InputError(f"{run.dir / 'samples.csv'}: given label(s) {', '.join(map(repr, unknown[:5]))} "
                         "are not in config.json's classes")
    return np.array([index[n] for n in names], dtype=np.int64)


ENSEMBLE_FILE = "ensemble_probs.npy"


def ensemble_probs(run: Run) -> tuple[np.ndarray, str]:
    """(N, K) float32 class probabilities the ensemble suspicion is computed from, rows summing
    to 1, and where they came from.

    ``RUN_DIR/ensemble_probs.npy`` when the run wrote it (exact); else rebuilt from the run
    directory (``scores.signals_from_run`` + ``suggestion_probs``). The rebuild runs the k-NN
    vote on the float16 features the run saved, not the float32 ones it scored with, so a row
    whose k-th neighbour was a near tie can come out a vote different (measured: 0.02 on a
    few rows of 200).
    """
    from .scores import signals_from_run, suggestion_probs

    if (run.dir / ENSEMBLE_FILE).exists():
        p, source = np.load(run.dir / ENSEMBLE_FILE, allow_pickle=False), ENSEMBLE_FILE
    else:
        missing = [n for n in ("probs.npy", "cv_probs.npy", "features_pre.npy") if not (run.dir / n).exists()]
        if missing:
            raise InputError(f"run {run.dir} lacks {', '.join(missing)}: the class probabilities "
                             "cannot be rebuilt")
        p, source = suggestion_probs(signals_from_run(run)), "rebuilt from the run directory"
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, None)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32), source


# --------------------------------------------------------------------------- cleanlab
ENSEMBLE_SCORES = ("ensemble", "ensemble-flips")  # scores whose suspicion is 1 − pred_probs[i, label] as a rule


def write_cleanlab(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the cleanlab arrays of a finished run into ``out_dir``; return ``out_dir``.

    See the module docstring for the five files; row i of each is samples.csv row i.
    """
    run = _finished_run(run_dir)
    out = Path(out_dir)
    s = run.samples()
    labels = given_label_indices(run)
    probs, source = ensemble_probs(run)
    suspicion = s["suspicion"].to_numpy(dtype=np.float64)
    # Rows where the probabilities do not reproduce the written suspicion (6 decimals).
    off = np.abs(1.0 - probs[np.arange(len(labels)), labels] - suspicion) > 1.5e-6
    atomic_save_npy(out / "pred_probs.npy", probs)
    atomic_save_npy(out / "labels.npy", labels)
    atomic_save_npy(out / "label_issues.npy", s["flagged"].to_numpy().astype(bool))
    atomic_save_npy(out / "label_quality_scores.npy", 1.0 - suspicion)
    atomic_write_json(out / "classes.json", list(run.classes))
    score = run.settings.get("score", "ensemble")
    # "ensemble-flips" is the ensemble's suspicion unless the wide vote ranked the run (flips):
    # then no row need match pred_probs.
    from_probs = score == "ensemble" or (score == "ensemble-flips" and not off.any())
    atomic_write_json(out / "turn_audit.json", {
        "run": str(run.dir.resolve()), "score": score, "flag_rule": run.settings.get("flag_rule", "ensemble"),
        "pred_probs": f"ensemble class probabilities (turn_core.scores.suggestion_probs), {source}",
        "rows_not_matching_suspicion": int(off.sum()) if score in ENSEMBLE_SCORES else None,
        "label_quality_scores": ("1 - suspicion = pred_probs[i, labels[i]]" if from_probs
                                 else f"1 - suspicion of score {score!r} (not from pred_probs)")})
    return out


# --------------------------------------------------------------------------- FiftyOne
def write_fiftyone(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a finished run as a FiftyOne image classification dataset into ``out_dir``.

    Media ``data/<index, 8 digits>.<ext>``: a symbolic link to the original image when it
    still exists (a copy where links are refused), else the run's thumbnail as PNG. The sample
    names key both label files; classes are the run's, in order.
    """
    from .review import ReviewStore

    run = _finished_run(run_dir)
    out = Path(out_dir)
    s = run.samples()
    classes = list(run.classes)
    index = {c: i for i, c in enumerate(classes)}
    decisions = ReviewStore(run.dir).latest()
    root = run.config.get("dataset", {}).get("root")
    names = [f"{int(i):08d}" for i in s["index"]]
    _write_media(run, names, s["path"].tolist(), Path(root) if root else None, out / "data")
    given, suggested = {}, {}
    for row, name in zip(s.itertuples(index=False), names):
        d = decisions.get(int(row.index))
        given[name] = index[row.given_label]
        suggested[name] = {
            "label": index[row.suggested_label], "confidence": float(row.confidence),
            "attributes": {"suspicion": float(row.suspicion), "flagged": bool(row.flagged),
                           "decision": d.decision if d else UNREVIEWED,
                           "final_label": (d.final_label or "") if d else row.given_label,
                           "path": row.path}}
    atomic_write_json(out / "labels.json", {"classes": classes, "labels": given})
    atomic_write_json(out / "suggestions.json", {"classes": classes, "labels": suggested})
    atomic_write_text(out / "README.md", _fiftyone_readme(run, out))
    return out


def _write_media(run: Run, names: list[str], paths: list[str], root: Path | None, data: Path) -> None:
    """One file per sample under ``data``: link (or copy) the original, else the thumbnail."""
    from PIL import Image

    data.mkdir(parents=True, exist_ok=True)
    thumbs = run.thumbs()
    for name, rel in zip(names, paths):
        src = root / rel if root is not None else None
        for old in data.glob(f"{name}.*"):   # a previous export's file, maybe of another kind
            old.unlink()
        if src is not None and src.is_file():
            _link_or_copy(src.resolve(), data / f"{name}{src.suffix.lower() or '.img'}")
        elif thumbs is not None:
            buf = io.BytesIO()
            Image.fromarray(np.asarray(thumbs[int(name)])).save(buf, format="PNG")
            atomic_write_bytes(data / f"{name}.png", buf.getvalue())
        else:
            raise InputError(f"{rel}: the original image is gone and run {run.dir} has no thumbs.npy")


def _link_or_copy(src: Path, target: Path) -> None:
    """Symlink ``target`` → ``src`` via a temporary name (atomic); copy where links fail."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(src, tmp)
    except OSError:  # e.g. Windows without the privilege, or a filesystem without links
        shutil.copyfile(src, tmp)
    os.replace(tmp, target)


def _fiftyone_readme(run: Run, out: Path) -> str:
    return f"""# TURN Audit export of run `{run.dir.name}` for FiftyOne

`data/` holds the images, `labels.json` the given labels and `suggestions.json` the run's
suggested labels (FiftyOne's `FiftyOneImageClassificationDataset` format). Each suggestion
carries its confidence and the attributes `suspicion` (higher = more likely mislabeled),
`flagged`, `decision` (the review decision, or `{UNREVIEWED}`), `final_label` and `path`
(the image's path in the original dataset).

```python
import json
from pathlib import Path

import fiftyone as fo

export_dir = Path({json.dumps(str(out.resolve()))})   # this folder
dataset = fo.Dataset.from_dir(dataset_dir=str(export_dir), label_field="given",
                              dataset_type=fo.types.FiftyOneImageClassificationDataset)
dataset.merge_dir(dataset_dir=str(export_dir), labels_path="suggestions.json",
                  label_field="suggested", dataset_type=fo.types.FiftyOneImageClassificationDataset)
# Set the attributes explicitly: not every FiftyOne version reads them from the labels file.
meta = json.loads((export_dir / "suggestions.json").read_text())["labels"]
for sample in dataset.iter_samples(autosave=True):
    for key, value in meta[Path(sample.filepath).stem]["attributes"].items():
        sample["suggested"][key] = value
session = fo.launch_app(dataset.sort_by("suggested.suspicion", reverse=True))
```
"""


EXPORT_FORMATS: dict[str, Callable[[str | Path, str | Path], Path]] = {
    "cleanlab": write_cleanlab,
    "fiftyone": write_fiftyone,
}


__all__ = ["ENSEMBLE_FILE", "EXPORT_FORMATS", "UNREVIEWED", "ensemble_probs", "given_label_indices",
           "write_cleanlab", "write_fiftyone"]
