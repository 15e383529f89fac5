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

import json
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import pandas as pd

from .errors import InputError
from .review import ReviewStore, SuspectRule, suspect_rule
from .rundir import Run, atomic_write_text, csv_text
from .safety import spreadsheet_safe as _spreadsheet_safe

CORRECTED_COLUMNS = ["path", "given_label", "suggested_label", "final_label", "decision",
                     "suspicion", "is_label_issue"]
CHANGES_COLUMNS = ["class", "n_images", "n_changed_to_other", "n_changed_from_other", "n_excluded"]
UNREVIEWED = "unreviewed"
_NEEDED = ["path", "given_label", "suggested_label", "suspicion", "flagged"]


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

    Raises ``InputError`` when the run has no samples.csv yet.
    """
    run = _run(run_dir)
    s = _samples(run)
    decisions = ReviewStore(run.dir).latest()
    index = s["index"].astype(int).tolist() if "index" in s.columns else list(range(len(s)))
    given = s["given_label"].astype(str).tolist()
    suggested = s["suggested_label"].astype(str).tolist()
    num = _numeric(s)
    suspect = (rule or suspect_rule(run, num)).mask(num).tolist()

    final, decision, issue = [], [], []
    for i, g, sug, f in zip(index, given, suggested, suspect):
        d = decisions.get(i)
        if d is None:
            final.append(g), decision.append(UNREVIEWED), issue.append(int(bool(f)))
            continue
        if d.decision == "accept":
            label = d.final_label or sug   # older rows may lack it: the suggestion then
        elif d.decision == "relabel":
            label = d.final_label or ""
        elif d.decision == "keep":
            label = g
        else:  # exclude
            label = ""
        final.append(label), decision.append(d.decision)
        issue.append(int(d.decision == "exclude" or label != g))

    return pd.DataFrame({
        "path": s["path"].astype(str).tolist(),
        "given_label": given,
        "suggested_label": suggested,
        "final_label": final,
        "decision": decision,
        "suspicion": pd.to_numeric(s["suspicion"], errors="coerce").astype(float).tolist(),
        "is_label_issue": issue,
    }, columns=CORRECTED_COLUMNS)


def clean_manifest(run_dir: str | Path | Run) -> pd.DataFrame:
    """The training set after review, as a manifest: columns ``path,label`` (+ ``true_label``
    when the run knew the truth). Excluded images are dropped; unreviewed images keep their
    given label; reviewed ones get their final label. ``path`` is as in samples.csv (relative
    to the dataset root)."""
    run = _run(run_dir)
    corrected = corrected_labels(run)
    out = pd.DataFrame({"path": corrected["path"], "label": corrected["final_label"]})
    truth = _truth(run)
    if truth is not None:
        out["true_label"] = truth
    return out[corrected["decision"] != "exclude"].reset_index(drop=True)


def changes_per_class(run_dir: str | Path | Run) -> pd.DataFrame:
    """Per class (``CHANGES_COLUMNS``), in the run's class order:

    ``n_images``: images given this label; ``n_changed_to_other``: of those, how many now
    carry another label; ``n_changed_from_other``: images given another label that now carry
    this one; ``n_excluded``: images given this label that were excluded.
    """
    run = _run(run_dir)
    c = corrected_labels(run)
    excluded = c["decision"] == "exclude"
    changed = ~excluded & (c["final_label"] != c["given_label"])
    classes = list(run.classes)
    for label in list(c["given_label"]) + list(c.loc[~excluded, "final_label"]):
        if label not in classes:   # a label of an older run not listed in config.json
            classes.append(label)
    rows = []
    for k in classes:
        given_k = c["given_label"] == k
        rows.append([k, int(given_k.sum()), int((given_k & changed).sum()),
                     int((~given_k & changed & (c["final_label"] == k)).sum()),
                     int((given_k & excluded).sum())])
    return pd.DataFrame(rows, columns=CHANGES_COLUMNS)


def review_outcome(run_dir: str | Path | Run) -> dict | None:
    """How the review changed label quality, when the true labels are known; else None.

    Counted over images that were not excluded: ``errors_fixed`` (given ≠ truth, final = truth),
    ``errors_introduced`` (given = truth, final ≠ truth), ``errors_remaining`` (final ≠ truth).
    Exclusions are counted apart, since dropping an image is neither a right nor a wrong label:
    ``errors_excluded`` (given ≠ truth) and ``clean_excluded`` (given = truth).
    ``errors_before``: given ≠ truth over all images; ``n_reviewed``: images with a decision.
    """
    run = _run(run_dir)
    truth = _truth(run)
    if truth is None:
        return None
    c = corrected_labels(run)
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
    run = _run(run_dir)
    s = _samples(run)
    num = _numeric(s)
    rows = s[(rule or suspect_rule(run, num)).mask(num)] if only_suspects else s
    suspicion = pd.to_numeric(rows["suspicion"], errors="coerce").fillna(0.0)
    order = suspicion.sort_values(ascending=False, kind="mergesort").index  # stable on ties
    has_index = "index" in rows.columns
    tasks = []
    for pos in order:
        r = rows.loc[pos]
        path, suggested, score = str(r["path"]), str(r["suggested_label"]), float(suspicion[pos])
        tasks.append({
            "data": {"image": image_url_prefix + quote(path, safe="/"), "path": path,
                     "index": int(r["index"]) if has_index else int(pos),
                     "given_label": str(r["given_label"]), "suggested_label": suggested,
                     "suspicion": score},
            "predictions": [{"model_version": "turn-audit", "score": score, "result": [{
                "from_name": "label", "to_name": "image", "type": "choices",
                "value": {"choices": [suggested]}}]}],
        })
    return tasks


def label_studio_config(classes: Sequence[str]) -> str:
    """A Label Studio labeling config (XML) matching ``label_studio_tasks``: an image and one
    single-choice question named ``label`` over ``classes`` (names XML-escaped)."""
    choices = "\n".join(f"    <Choice value={quoteattr(str(c))}/>" for c in classes)
    return ('<View>\n  <Image name="image" value="$image"/>\n'
            '  <Choices name="label" toName="image" choice="single" showInline="true">\n'
            f"{choices}\n  </Choices>\n</View>\n")


# --------------------------------------------------------------------------- writers
def write_corrected_csv(run_dir: str | Path | Run, out_path: str | Path,
                        spreadsheet_safe: bool = True) -> Path:
    """Write ``corrected_labels`` as UTF-8 CSV (atomically). With ``spreadsheet_safe`` (the
    default) text cells starting with ``= + - @``, tab or CR get a leading ``'`` so a
    spreadsheet does not evaluate them; numbers are written as numbers either way."""
    return _write_table(corrected_labels(run_dir), out_path, spreadsheet_safe)


def write_clean_manifest(run_dir: str | Path | Run, out_path: str | Path | None = None) -> Path:
    """Write ``clean_manifest`` where ``turn_core.data.load_dataset`` can read it back.

    Default location: the dataset root (config.json ``dataset.root``) as
    ``cleaned-<run name>.csv``, so the paths, relative to the dataset root, are relative to
    the CSV's folder too. ``out_path`` may name another file in the dataset root or in a folder
    above it (paths are then rewritten relative to that folder); a folder elsewhere is refused,
    since ``load_dataset`` only accepts paths below the CSV's folder. Written verbatim — no
    spreadsheet escaping — so labels with commas, quotes or accents round-trip exactly.

    Raises ``InputError`` when the dataset root is unknown (e.g. an old run) and no ``out_path``
    is given, or the folder does not exist, is not writable, or is not above the images.
    """
    run = _run(run_dir)
    manifest = clean_manifest(run)
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
    return _write_table(manifest, out, spreadsheet_safe=False, what="cleaned manifest")


def clean_manifest_csv(run_dir: str | Path | Run) -> str:
    """``clean_manifest`` as CSV text (paths relative to the dataset root), e.g. for a
    browser download; verbatim like ``write_clean_manifest``."""
    df = clean_manifest(run_dir)
    return csv_text(list(df.columns), zip(*[df[c].tolist() for c in df.columns]))


def write_label_studio_json(run_dir: str | Path | Run, out_path: str | Path,
                            image_url_prefix: str = "/data/local-files/?d=",
                            only_suspects: bool = True) -> Path:
    """Write ``label_studio_tasks`` as a JSON list (atomically, UTF-8)."""
    tasks = label_studio_tasks(run_dir, image_url_prefix, only_suspects)
    return _atomic_text(out_path, json.dumps(tasks, ensure_ascii=False, indent=2) + "\n", "Label Studio tasks")


def export_all(run_dir: str | Path | Run, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write every review export into ``RUN_DIR/exports/`` (or ``out_dir``).

    Returns ``{"corrected": corrected_labels.csv, "label_studio": label_studio_tasks.json,
    "label_studio_config": label_studio_config.xml, "changes": changes_per_class.csv}`` plus
    ``"outcome": review_outcome.json`` when the truth is known. The cleaned manifest is not
    among them: it belongs next to the dataset (``write_clean_manifest``).
    """
    run = _run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.dir / "exports"
    paths = {
        "corrected": write_corrected_csv(run, out / "corrected_labels.csv"),
        "label_studio": write_label_studio_json(run, out / "label_studio_tasks.json"),
        "label_studio_config": _atomic_text(out / "label_studio_config.xml",
                                            label_studio_config(run.classes), "Label Studio config"),
        "changes": _write_table(changes_per_class(run), out / "changes_per_class.csv", True),
    }
    outcome = review_outcome(run)
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


def _samples(run: Run) -> pd.DataFrame:
    s = run.samples()
    if s is None:
        raise InputError(f"run {run.dir.name} has no samples.csv yet (state: {run.status.get('state')}); "
                         "there is nothing to export")
    missing = [c for c in _NEEDED if c not in s.columns]
    if missing:
        raise InputError(f"{run.dir / 'samples.csv'} lacks column(s) {', '.join(missing)}")
    return s


def _numeric(s: pd.DataFrame) -> pd.DataFrame:
    """``s`` with ``suspicion`` as floats and ``flagged`` as 0/1 ints (an unreadable cell counts
    as 0: never a suspect, not flagged)."""
    return s.assign(suspicion=pd.to_numeric(s["suspicion"], errors="coerce").fillna(0.0),
                    flagged=pd.to_numeric(s["flagged"], errors="coerce").fillna(0).astype(int))


def _truth(run: Run) -> list[str] | None:
    """The true labels of samples.csv as strings, None when absent or empty."""
    s = _samples(run)
    # "clean_label": the column's name in runs written before it became "true_label".
    col = next((c for c in ("true_label", "clean_label") if c in s.columns), None)
    if col is None:
        return None
    truth = s[col].astype(str).tolist()
    return truth if any(t != "" for t in truth) else None


def _write_table(df: pd.DataFrame, out_path: str | Path, spreadsheet_safe: bool,
                 what: str = "export") -> Path:
    # Columns to Python objects first: csv then writes 0.25 / 1, never "np.float64(0.25)".
    columns = [df[c].tolist() for c in df.columns]
    if spreadsheet_safe:
        header = [_spreadsheet_safe(str(c)) for c in df.columns]
        columns = [[_spreadsheet_safe(v) for v in col] for col in columns]
    else:
        header = [str(c) for c in df.columns]
    return _atomic_text(out_path, csv_text(header, zip(*columns)), what)


def _atomic_text(out_path: str | Path, text: str, what: str) -> Path:
    try:
        return atomic_write_text(out_path, text)
    except PermissionError as e:
        raise InputError(f"cannot write the {what} to {out_path}: permission denied") from e
    except IsADirectoryError as e:
        raise InputError(f"cannot write the {what} to {out_path}: it is a folder") from e


__all__ = [
    "CHANGES_COLUMNS",
    "CORRECTED_COLUMNS",
    "UNREVIEWED",
    "changes_per_class",
    "clean_manifest",
    "clean_manifest_csv",
    "cleaned_run_config",
    "corrected_labels",
    "export_all",
    "label_studio_config",
    "label_studio_tasks",
    "review_outcome",
    "write_clean_manifest",
    "write_corrected_csv",
    "write_label_studio_json",
]
