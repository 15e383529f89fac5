"""What leaves the tool: corrected labels, a cleaned manifest, Label Studio tasks.

Everything here combines the run's ``samples.csv`` with the review decisions
(``turn_core.review``) and writes through ``turn_core.rundir.atomic_write_*`` (temporary file
in the same folder, then rename), so a failed or interrupted export leaves the previous file
intact and no half-written file behind.

Terms used below:

* ``given_label``: the label the dataset came with.
* ``suggested_label``: what the run suggests (equal to the given label when not flagged).
* ``suspicion``: a number in [0, 1]; **higher = more likely mislabeled**. Sort by it,
  descending, to review the most doubtful images first.
* ``final_label``: what the image should be labelled after review (see ``corrected_labels``).
* ``decision``: ``unreviewed`` or one of ``turn_core.review.DECISIONS``.
* *suspects*: the images whose suspicion is at or above the run's cut-off
  (``turn_core.review.suspect_rule``): the cut-off the reviewer saved on Loss distributions
  (``review.json``), or, when none is saved for the run's current table, the cut-off that picks
  as many images as the run's flag rule flagged. The same set the Review page queues.
* ``is_label_issue``: 0/1, the answer to "is this label wrong?": 1 for a suspect until a person
  reviewed the image, then the person's answer (see ``corrected_labels``).

Two kinds of CSV are written, on purpose differently:

* *for people* (corrected labels, per-class changes): text cells that a spreadsheet would run
  as a formula get a leading ``'`` (``turn_core.safety.spreadsheet_safe``);
* *for programs* (the cleaned manifest): written verbatim, so it reads back exactly.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np
import pandas as pd

from .errors import InputError
from .review import ReviewStore, SuspectRule, suspect_rule
from .rundir import Run, atomic_write_text
from .safety import spreadsheet_safe as _spreadsheet_safe

log = logging.getLogger("turn_core")

CORRECTED_COLUMNS = ["path", "given_label", "suggested_label", "final_label", "decision",
                     "suspicion", "is_label_issue"]
CHANGES_COLUMNS = ["class", "n_images", "n_changed_to_other", "n_changed_from_other", "n_excluded"]
UNREVIEWED = "unreviewed"
_NEEDED = ["path", "given_label", "suggested_label", "suspicion", "flagged"]
# Rows serialised per write: a 1M-row export never exists as one string (the file grows chunk
# by chunk); big enough that the per-chunk overhead does not show.
CHUNK_ROWS = 50_000
DOWNLOADS = "exports/.downloads"      # the Export page's download files, under RUN_DIR
DOWNLOAD_FILES = {"corrected": "corrected_labels.csv", "manifest": "cleaned_manifest.csv",
                  "label_studio": "label_studio_tasks.json"}   # name → file (see download_file)


# --------------------------------------------------------------------------- tables
def corrected_labels(run_dir: str | Path | Run, rule: SuspectRule | None = None) -> pd.DataFrame:
    """One row per training image, in samples.csv order, with exactly ``CORRECTED_COLUMNS``.

    * ``final_label``: unreviewed → the given label; ``accept`` → the suggested label the
      reviewer accepted (stored with the decision: a decision made on the provisional table
      keeps its label when the final table suggests another); ``relabel`` → the class the
      reviewer picked; ``keep`` → the given label; ``exclude`` → empty string (drop the image).
    * ``decision``: ``unreviewed`` or the effective review decision.
    * ``suspicion``: float in [0, 1], higher = more likely mislabeled (copied from the run).
    * ``is_label_issue``: int 0/1. Unreviewed → 1 when the image is a suspect, i.e. its
      suspicion is at or above the cut-off of ``rule`` (default: ``review.suspect_rule`` —
      the cut-off saved on Loss distributions, else the one that picks as many images as the
      run's flag rule flagged); reviewed → 1 when the reviewer's final label differs from the
      given one or the image was excluded, else 0.

    Reads only the columns it needs. Raises ``InputError`` when the run has no samples table yet.
    """
    run = _run(run_dir)
    s = _samples(run, ["index", *_NEEDED])
    num = _numeric(s)
    suspect = (rule or suspect_rule(run, num)).mask(num)
    n = len(s)
    index = s["index"].to_numpy(np.int64) if "index" in s.columns else np.arange(n)
    given = s["given_label"].astype(str).to_numpy(object)
    suggested = s["suggested_label"].astype(str).to_numpy(object)
    final, decision, issue = apply_decisions(index, given, suggested, suspect,
                                             ReviewStore(run.dir).latest())
    # Text columns stay Python objects: converting a million strings to pandas' string type and
    # back (for writing) would cost more than the rest of the export.
    text = {"path": s["path"].astype(str).to_numpy(object), "given_label": given, "suggested_label": suggested,
            "final_label": final, "decision": decision}
    return pd.DataFrame({
        **{k: pd.Series(v, dtype=object) for k, v in text.items()},
        "suspicion": pd.to_numeric(s["suspicion"], errors="coerce").to_numpy(float),
        "is_label_issue": issue,
    }, columns=CORRECTED_COLUMNS)


def apply_decisions(index: np.ndarray, given: np.ndarray, suggested: np.ndarray, suspect: np.ndarray,
                    decisions: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The review decisions applied to a table of N images; returns (final_label (N,) object,
    decision (N,) object, is_label_issue (N,) int64) as ``corrected_labels`` defines them.

    ``index`` (N,) int: each row's sample index (the key of ``decisions``: index → Decision);
    ``given`` / ``suggested`` (N,) str; ``suspect`` (N,) bool. Works per decision, not per row:
    a million unreviewed rows cost three array copies."""
    final = given.copy()
    decision = np.full(len(given), UNREVIEWED, dtype=object)
    issue = np.asarray(suspect, dtype=bool).astype(np.int64)
    if decisions:
        keys = np.fromiter(decisions, dtype=np.int64, count=len(decisions))
        rows = pd.Index(index).get_indexer(keys)   # -1: a decision on a row the table lacks
        for key, row in zip(keys.tolist(), rows.tolist()):
            if row < 0:
                continue
            d = decisions[key]
            if d.decision == "accept":
                label = d.final_label or suggested[row]   # older rows may lack it: the suggestion
            elif d.decision == "relabel":
                label = d.final_label or ""
            elif d.decision == "keep":
                label = given[row]
            else:  # exclude
                label = ""
            final[row], decision[row] = label, d.decision
            issue[row] = int(d.decision == "exclude" or label != given[row])
    return final, decision, issue


def clean_manifest(run_dir: str | Path | Run, corrected: pd.DataFrame | None = None) -> pd.DataFrame:
    """The training set after review, as a manifest: columns ``path,label`` (+ ``true_label``
    when the run knew the truth). Excluded images are dropped; unreviewed images keep their
    given label; reviewed ones get their final label. ``path`` is as in samples.csv (relative
    to the dataset root). ``corrected``: ``corrected_labels`` of the run when already at hand."""
    run = _run(run_dir)
    corrected = corrected_labels(run) if corrected is None else corrected
    out = pd.DataFrame({"path": corrected["path"], "label": corrected["final_label"]})
    truth = _truth(run)
    if truth is not None:
        out["true_label"] = truth
    return out[(corrected["decision"] != "exclude").to_numpy()].reset_index(drop=True)


def changes_per_class(run_dir: str | Path | Run, corrected: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per class (``CHANGES_COLUMNS``), in the run's class order:

    ``n_images``: images given this label; ``n_changed_to_other``: of those, how many now
    carry another label; ``n_changed_from_other``: images given another label that now carry
    this one; ``n_excluded``: images given this label that were excluded.
    ``corrected``: ``corrected_labels`` of the run when already at hand. Counted by group, not
    per class over every row (a 1,000-class run costs one pass).
    """
    run = _run(run_dir)
    c = corrected_labels(run) if corrected is None else corrected
    excluded = (c["decision"] == "exclude").to_numpy()
    given = c["given_label"].astype(str).to_numpy(object)
    final = c["final_label"].astype(str).to_numpy(object)
    changed = ~excluded & (final != given)
    classes = list(run.classes)
    known = set(classes)
    # a label of an older run not listed in config.json, in order of first appearance
    classes += [k for k in pd.unique(np.concatenate([given, final[~excluded]])) if k not in known]

    def count(labels):
        return pd.Series(labels).value_counts().reindex(classes, fill_value=0).to_numpy(np.int64)

    # changed implies final != given, so "changed to k" counts images given another label
    table = {"class": classes, "n_images": count(given), "n_changed_to_other": count(given[changed]),
             "n_changed_from_other": count(final[changed]), "n_excluded": count(given[excluded])}
    return pd.DataFrame(table, columns=CHANGES_COLUMNS)


def review_outcome(run_dir: str | Path | Run, corrected: pd.DataFrame | None = None) -> dict | None:
    """How the review changed label quality, when the true labels are known; else None.

    Counted over images that were not excluded: ``errors_fixed`` (given ≠ truth, final = truth),
    ``errors_introduced`` (given = truth, final ≠ truth), ``errors_remaining`` (final ≠ truth).
    Exclusions are counted apart, since dropping an image is neither a right nor a wrong label:
    ``errors_excluded`` (given ≠ truth) and ``clean_excluded`` (given = truth).
    ``errors_before``: given ≠ truth over all images; ``n_reviewed``: images with a decision.
    ``corrected``: ``corrected_labels`` of the run when already at hand.
    """
    run = _run(run_dir)
    truth = _truth(run)
    if truth is None:
        return None
    c = corrected_labels(run) if corrected is None else corrected
    t = pd.Series(truth, index=c.index)
    excluded = c["decision"] == "exclude"
    kept = ~excluded
    wrong_before = c["given_label"] != t
    wrong_after = c["final_label"] != t
    return {
        "n_images": len(c),
        "n_reviewed": int((c["decision"] != UNREVIEWED).sum()),
        "errors_before": int(wrong_before.sum()),
        "errors_fixed": int((kept & wrong_before & ~wrong_after).sum()),
        "errors_introduced": int((kept & ~wrong_before & wrong_after).sum()),
        "errors_remaining": int((kept & wrong_after).sum()),
        "errors_excluded": int((excluded & wrong_before).sum()),
        "clean_excluded": int((excluded & ~wrong_before).sum()),
    }


def label_studio_tasks(run_dir: str | Path | Run, image_url_prefix: str = "/data/local-files/?d=",
                       only_suspects: bool = True, rule: SuspectRule | None = None) -> list[dict]:
    """Label Studio import tasks, most suspicious first: the suspects (the images at or above
    the cut-off of ``rule``, default ``review.suspect_rule``: the Review page's queue).

    ``data.image`` = ``image_url_prefix`` + the sample's path (URL-quoted, ``/`` kept). With
    Label Studio's local-file serving the prefix must include the dataset folder relative to
    ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``, e.g. ``/data/local-files/?d=pets/``. ``data``
    also carries ``path``, ``index``, ``given_label``, ``suggested_label``, ``suspicion``.
    Each task has one prediction (model_version ``turn-audit``, score = suspicion) choosing
    the suggested label, matching ``label_studio_config`` (``label`` → ``image``).
    ``only_suspects=False`` exports every image instead of the suspects.
    """
    return list(iter_label_studio_tasks(run_dir, image_url_prefix, only_suspects, rule))


def iter_label_studio_tasks(run_dir: str | Path | Run, image_url_prefix: str = "/data/local-files/?d=",
                            only_suspects: bool = True, rule: SuspectRule | None = None) -> Iterator[dict]:
    """``label_studio_tasks`` one task at a time (the writer streams them to disk)."""
    run = _run(run_dir)
    s = _samples(run, ["index", *_NEEDED])
    num = _numeric(s)
    rows = s[(rule or suspect_rule(run, num)).mask(num)] if only_suspects else s
    suspicion = pd.to_numeric(rows["suspicion"], errors="coerce").fillna(0.0).to_numpy(float)
    order = np.argsort(-suspicion, kind="stable")  # most suspicious first, stable on ties
    index = rows["index"].to_numpy(np.int64) if "index" in rows.columns else rows.index.to_numpy(np.int64)
    columns = [rows[c].astype(str).to_numpy(object)[order].tolist()
               for c in ("path", "given_label", "suggested_label")]
    for path, given, suggested, i, score in zip(*columns, index[order].tolist(), suspicion[order].tolist()):
        yield {
            "data": {"image": image_url_prefix + quote(path, safe="/"), "path": path, "index": int(i),
                     "given_label": given, "suggested_label": suggested, "suspicion": score},
            "predictions": [{"model_version": "turn-audit", "score": score, "result": [{
                "from_name": "label", "to_name": "image", "type": "choices",
                "value": {"choices": [suggested]}}]}],
        }


def label_studio_config(classes: Sequence[str]) -> str:
    """A Label Studio labeling config (XML) matching ``label_studio_tasks``: an image and one
    single-choice question named ``label`` over ``classes`` (names XML-escaped)."""
    choices = "\n".join(f"    <Choice value={quoteattr(str(c))}/>" for c in classes)
    return ('<View>\n  <Image name="image" value="$image"/>\n'
            '  <Choices name="label" toName="image" choice="single" showInline="true">\n'
            f"{choices}\n  </Choices>\n</View>\n")


# --------------------------------------------------------------------------- writers
def write_corrected_csv(run_dir: str | Path | Run, out_path: str | Path, spreadsheet_safe: bool = True, *,
                        rule: SuspectRule | None = None, corrected: pd.DataFrame | None = None,
                        chunk_rows: int = CHUNK_ROWS) -> Path:
    """Write ``corrected_labels`` as UTF-8 CSV (atomically). With ``spreadsheet_safe`` (the
    default) text cells starting with ``= + - @``, tab or CR get a leading ``'`` so a
    spreadsheet does not evaluate them; numbers are written as numbers either way.

    Streamed: ``chunk_rows`` rows at a time into a temporary file, renamed over ``out_path``
    at the end. ``rule`` / ``corrected``: the suspect rule and table when already at hand."""
    table = corrected_labels(run_dir, rule) if corrected is None else corrected
    return _stream_table(table, out_path, spreadsheet_safe, chunk_rows=chunk_rows)


def write_clean_manifest(run_dir: str | Path | Run, out_path: str | Path | None = None, *,
                         corrected: pd.DataFrame | None = None, chunk_rows: int = CHUNK_ROWS) -> Path:
    """Write ``clean_manifest`` where ``turn_core.data.load_dataset`` can read it back.

    Default location: the dataset root (config.json ``dataset.root``) as
    ``cleaned-<run name>.csv``, so the paths, relative to the dataset root, are relative to
    the CSV's folder too. ``out_path`` may name another file in the dataset root or in a folder
    above it (paths are then rewritten relative to that folder); a folder elsewhere is refused,
    since ``load_dataset`` only accepts paths below the CSV's folder. Written verbatim — no
    spreadsheet escaping — so labels with commas, quotes or accents round-trip exactly.
    Streamed like ``write_corrected_csv``.

    Raises ``InputError`` when the dataset root is unknown (e.g. an old run) and no ``out_path``
    is given, or the folder does not exist, is not writable, or is not above the images.
    """
    run = _run(run_dir)
    manifest = clean_manifest(run, corrected)
    root_text = str((run.config.get("dataset") or {}).get("root") or "")
    root = Path(root_text) if root_text else None
    if out_path is None:
        if root is None:
            raise InputError(f"run {run.dir.name} does not record its dataset folder; "
                             "choose where to write the cleaned manifest")
        out = root / f"cleaned-{run.dir.name}.csv"
    else:
        out = Path(out_path)
    folder = out.parent
    if not folder.is_dir():
        raise InputError(f"cannot write the cleaned manifest: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"cannot write the cleaned manifest: folder {folder} is not writable")
    if root is not None and folder.resolve() != root.resolve():
        if not root.resolve().is_relative_to(folder.resolve()):
            raise InputError(f"cannot write the cleaned manifest to {folder}: it must lie in the "
                             f"dataset folder {root} or a folder above it, so that its image paths "
                             "stay relative to the CSV")
        prefix = root.resolve().relative_to(folder.resolve()).as_posix()
        manifest["path"] = [f"{prefix}/{p}" for p in manifest["path"]]
    return _stream_table(manifest, out, spreadsheet_safe=False, what="cleaned manifest", chunk_rows=chunk_rows)


def clean_manifest_csv(run_dir: str | Path | Run) -> str:
    """``clean_manifest`` as CSV text (paths relative to the dataset root), e.g. for a
    browser download; verbatim like ``write_clean_manifest``. Whole in memory: for a large run
    write a file instead (``write_downloads``)."""
    df = clean_manifest(run_dir)
    buf = _StringSink()
    _write_csv_rows(buf, [str(c) for c in df.columns], [df[c].to_numpy() for c in df.columns], False, CHUNK_ROWS)
    return buf.getvalue()


def write_label_studio_json(run_dir: str | Path | Run, out_path: str | Path,
                            image_url_prefix: str = "/data/local-files/?d=",
                            only_suspects: bool = True, rule: SuspectRule | None = None) -> Path:
    """Write ``label_studio_tasks`` as a JSON list (atomically, UTF-8), one task at a time:
    the bytes are those of ``json.dumps(tasks, ensure_ascii=False, indent=2)`` plus a newline,
    without the list or its text ever being whole in memory."""
    tasks = iter_label_studio_tasks(run_dir, image_url_prefix, only_suspects, rule)
    with _atomic_file(out_path, "Label Studio tasks") as f:
        first = True
        for task in tasks:
            # indent=2 inside a list: every line of the task two spaces deeper (newlines inside
            # strings are escaped by json, so each real newline is a line break of the layout)
            f.write(("[\n  " if first else ",\n  ")
                    + json.dumps(task, ensure_ascii=False, indent=2).replace("\n", "\n  "))
            first = False
        f.write("[]\n" if first else "\n]\n")
    return Path(out_path)


def write_downloads(run_dir: str | Path | Run, rule: SuspectRule | None = None, *,
                    folder: str | Path | None = None, corrected: pd.DataFrame | None = None,
                    chunk_rows: int = CHUNK_ROWS) -> dict[str, Path]:
    """Every file of ``DOWNLOAD_FILES`` through ``download_file``; returns {name: path}. The
    corrected table is built at most once, and only when a file made from it is out of date."""
    run = _run(run_dir)
    rule = rule or suspect_rule(run)
    out = Path(folder) if folder is not None else run.dir / DOWNLOADS
    key = download_key(run, rule)
    if corrected is None and not all(_fresh(out / DOWNLOAD_FILES[n], key) for n in ("corrected", "manifest")):
        corrected = corrected_labels(run, rule)
    return {name: download_file(run, name, rule, folder=folder, corrected=corrected, chunk_rows=chunk_rows)
            for name in DOWNLOAD_FILES}


def _fresh(path: Path, key: dict) -> bool:
    """Whether ``path`` exists and was written from ``key`` (its ``.key.json`` says so)."""
    try:
        return path.is_file() and json.loads(_key_path(path).read_text(encoding="utf-8")) == key
    except (OSError, ValueError):
        return False


def _key_path(path: Path) -> Path:
    return path.with_name(path.name + ".key.json")   # one per file: two clicks never race on it


def download_file(run_dir: str | Path | Run, name: str, rule: SuspectRule | None = None, *,
                  folder: str | Path | None = None, corrected: pd.DataFrame | None = None,
                  copy_to: str | Path | None = None, chunk_rows: int = CHUNK_ROWS) -> Path:
    """One of the Export page's downloads as a file, written only when what it is made of changed.

    ``name``: a ``DOWNLOAD_FILES`` key — ``corrected`` (corrected_labels.csv, spreadsheet-safe),
    ``manifest`` (the cleaned manifest, paths relative to the dataset root, verbatim) or
    ``label_studio`` (the suspects' tasks). Written into ``folder`` (default
    ``RUN_DIR/exports/.downloads``) with its ``download_key`` (last decision id, suspect rule,
    table file) beside it; while the key is unchanged and the file is there, nothing is read or
    written, so a page may call this on every click. ``corrected``: ``corrected_labels(run,
    rule)`` when already at hand. ``copy_to``: also put a copy of the file there (through a
    temp file and a rename), for the Export page's "also written to exports/" promise; a copy
    that cannot be written is logged and never fails the download itself. Raises
    ``InputError`` for an unknown ``name``, a run without a samples table or a folder that is
    not writable.
    """
    if name not in DOWNLOAD_FILES:
        raise InputError(f"download {name!r} is not one of {', '.join(DOWNLOAD_FILES)}")
    run = _run(run_dir)
    rule = rule or suspect_rule(run)
    path = (Path(folder) if folder is not None else run.dir / DOWNLOADS) / DOWNLOAD_FILES[name]
    key = download_key(run, rule)
    if not _fresh(path, key):
        _write_download(run, name, rule, path, key, corrected, chunk_rows)
    if copy_to is not None:
        _copy_atomically(path, Path(copy_to))
    return path


def _copy_atomically(src: Path, dest: Path) -> None:
    try:
        with _atomic_file(dest, f"copy of {src.name}") as out, open(src, encoding="utf-8", newline="") as f:
            shutil.copyfileobj(f, out)
    except (InputError, OSError) as e:  # the download still works; only the disk copy is missing
        log.warning("could not write a copy of %s to %s: %s", src.name, dest, e)


def _write_download(run: Run, name: str, rule: SuspectRule, path: Path, key: dict,
                    corrected: pd.DataFrame | None, chunk_rows: int) -> None:
    if name == "label_studio":
        write_label_studio_json(run, path, rule=rule)
    else:
        corrected = corrected_labels(run, rule) if corrected is None else corrected
        if name == "corrected":
            write_corrected_csv(run, path, rule=rule, corrected=corrected, chunk_rows=chunk_rows)
        else:
            _stream_table(clean_manifest(run, corrected), path, spreadsheet_safe=False,
                          what="cleaned manifest", chunk_rows=chunk_rows)
    _atomic_text(_key_path(path), json.dumps(key) + "\n", "download key")


def download_key(run_dir: str | Path | Run, rule: SuspectRule) -> dict:
    """What the exports of a run are made of now, as a small JSON-able dict: the newest review
    row id (changes with every decision and undo), the suspect rule, and the samples table's
    file (name, size, mtime). Equal keys give equal export files."""
    run = _run(run_dir)
    table = {}
    for name in ("samples.parquet", "samples.csv"):
        try:
            st_ = (run.dir / name).stat()
        except OSError:
            continue
        table[name] = [st_.st_size, st_.st_mtime_ns]
    return {"last_id": ReviewStore(run.dir).last_id(), "cutoff": rule.cutoff, "source": rule.source,
            "table": rule.table, "files": table}


def export_all(run_dir: str | Path | Run, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write every review export into ``RUN_DIR/exports/`` (or ``out_dir``).

    Returns ``{"corrected": corrected_labels.csv, "label_studio": label_studio_tasks.json,
    "label_studio_config": label_studio_config.xml, "changes": changes_per_class.csv}`` plus
    ``"outcome": review_outcome.json`` when the truth is known. The cleaned manifest is not
    among them: it belongs next to the dataset (``write_clean_manifest``). The corrected table
    is built once and shared by every file made from it.
    """
    run = _run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.dir / "exports"
    rule = suspect_rule(run)
    corrected = corrected_labels(run, rule)
    paths = {
        "corrected": write_corrected_csv(run, out / "corrected_labels.csv", rule=rule, corrected=corrected),
        "label_studio": write_label_studio_json(run, out / "label_studio_tasks.json", rule=rule),
        "label_studio_config": _atomic_text(out / "label_studio_config.xml",
                                            label_studio_config(run.classes), "Label Studio config"),
        "changes": _stream_table(changes_per_class(run, corrected), out / "changes_per_class.csv", True),
    }
    outcome = review_outcome(run, corrected)
    if outcome is not None:
        paths["outcome"] = _atomic_text(out / "review_outcome.json",
                                        json.dumps(outcome, indent=2) + "\n", "review outcome")
    return paths


# --------------------------------------------------------------------------- train again
def cleaned_run_config(run_dir: str | Path | Run, runs_root: str | Path, *, when: float | None = None):
    """Write the cleaned manifest next to the dataset (``write_clean_manifest``) and return the
    ``RunConfig`` of a new run on it: the run's settings, ``data`` = the manifest, no injected
    noise (the manifest carries the corrected labels), ``out`` = a new folder under
    ``runs_root`` named by ``rundir.new_run_name(method, data, suffix="cleaned")``.

    Raises ``InputError`` when the run's settings are unreadable or the manifest cannot be
    written (see ``write_clean_manifest``)."""
    import dataclasses

    from .config import RunConfig
    from .rundir import new_run_name

    run = _run(run_dir)
    try:
        base = RunConfig.from_dict(run.settings)
    except (TypeError, ValueError) as e:
        raise InputError(f"{run.dir / 'config.json'}: the run's settings are unreadable ({e})") from None
    manifest = write_clean_manifest(run)
    name = new_run_name(base.method, base.data, suffix="cleaned", when=when)
    return dataclasses.replace(base, data=str(manifest), out=str(Path(runs_root) / name),
                               inject_noise=None, inject_noise_rate=0.0)


# --------------------------------------------------------------------------- helpers
def _run(run_dir: str | Path | Run) -> Run:
    return run_dir if isinstance(run_dir, Run) else Run(run_dir)


def _samples(run: Run, columns: list[str]) -> pd.DataFrame:
    """The columns of the samples table an export needs (``_NEEDED`` must be among them)."""
    s = run.samples(columns=columns)
    if s is None:
        raise InputError(f"run {run.dir.name} has no samples.csv yet (state: {run.status.get('state')}); "
                         "there is nothing to export")
    missing = [c for c in _NEEDED if c in columns and c not in s.columns]
    if missing:
        raise InputError(f"{run.dir / 'samples.csv'} lacks column(s) {', '.join(missing)}")
    return s


def _numeric(s: pd.DataFrame) -> pd.DataFrame:
    """``s`` with ``suspicion`` as floats and ``flagged`` as 0/1 ints (an unreadable cell counts
    as 0: never a suspect, not flagged)."""
    return s.assign(suspicion=pd.to_numeric(s["suspicion"], errors="coerce").fillna(0.0),
                    flagged=pd.to_numeric(s["flagged"], errors="coerce").fillna(0).astype(int))


def _truth(run: Run) -> list[str] | None:
    """The true labels of the samples table as strings, None when absent or empty."""
    # Run.samples returns an older run's "clean_label" column as "true_label".
    s = _samples(run, ["true_label"])
    if "true_label" not in s.columns:
        return None
    truth = s["true_label"].astype(str).tolist()
    return truth if any(t != "" for t in truth) else None


class _StringSink:
    """A text sink collecting what is written (``clean_manifest_csv``'s in-memory CSV)."""

    def __init__(self):
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def getvalue(self) -> str:
        return "".join(self.parts)


def _write_csv_rows(f, header: list[str], columns: Sequence, spreadsheet_safe: bool, chunk_rows: int) -> None:
    """CSV as ``rundir.csv_text`` writes it (CRLF rows), ``chunk_rows`` rows at a time.

    ``columns``: one sequence per header name (a Series, array or list), all of one length."""
    w = csv.writer(f, lineterminator="\r\n")
    w.writerow([_spreadsheet_safe(h) for h in header] if spreadsheet_safe else header)
    if spreadsheet_safe:
        columns = [_safe_column(col) for col in columns]
    n = len(columns[0]) if len(columns) else 0
    for start in range(0, n, max(int(chunk_rows), 1)):
        # Python objects first: csv then writes 0.25 / 1, never "np.float64(0.25)".
        w.writerows(zip(*[_tolist(col[start:start + chunk_rows]) for col in columns]))


def _safe_column(values) -> np.ndarray:
    """``spreadsheet_safe`` over a column, applied once per distinct value: a label column of a
    million rows holds a few classes, and a numeric column is returned as is (the function
    leaves numbers unchanged), so a 1M-row export makes thousands of calls, not millions."""
    values = np.asarray(values)
    if values.dtype != object:
        return values
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    safe = np.empty(len(uniques), dtype=object)
    safe[:] = [_spreadsheet_safe(v) for v in uniques]
    return safe[codes]


def _tolist(values) -> list:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _stream_table(df: pd.DataFrame, out_path: str | Path, spreadsheet_safe: bool, what: str = "export",
                  chunk_rows: int = CHUNK_ROWS) -> Path:
    with _atomic_file(out_path, what) as f:
        _write_csv_rows(f, [str(c) for c in df.columns], [df[c].to_numpy() for c in df.columns],
                        spreadsheet_safe, chunk_rows)
    return Path(out_path)


@contextmanager
def _atomic_file(out_path: str | Path, what: str) -> Iterator:
    """A UTF-8 text file to stream into, renamed over ``out_path`` only when the block ends
    without error (fsync first): a failed export leaves the previous file and no temporary."""
    path = Path(out_path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except PermissionError as e:
        raise InputError(f"cannot write the {what} to {out_path}: permission denied") from e
    try:
        # newline="": the csv writer's CRLF goes to disk as is
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, IsADirectoryError):
            raise InputError(f"cannot write the {what} to {out_path}: it is a folder") from e
        if isinstance(e, PermissionError):
            raise InputError(f"cannot write the {what} to {out_path}: permission denied") from e
        raise


def _atomic_text(out_path: str | Path, text: str, what: str) -> Path:
    try:
        return atomic_write_text(out_path, text)
    except PermissionError as e:
        raise InputError(f"cannot write the {what} to {out_path}: permission denied") from e
    except IsADirectoryError as e:
        raise InputError(f"cannot write the {what} to {out_path}: it is a folder") from e


__all__ = [
    "CHANGES_COLUMNS",
    "CHUNK_ROWS",
    "CORRECTED_COLUMNS",
    "DOWNLOADS",
    "DOWNLOAD_FILES",
    "UNREVIEWED",
    "apply_decisions",
    "changes_per_class",
    "clean_manifest",
    "clean_manifest_csv",
    "cleaned_run_config",
    "corrected_labels",
    "download_file",
    "download_key",
    "export_all",
    "iter_label_studio_tasks",
    "label_studio_config",
    "label_studio_tasks",
    "review_outcome",
    "write_clean_manifest",
    "write_corrected_csv",
    "write_downloads",
    "write_label_studio_json",
]
