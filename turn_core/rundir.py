"""The run directory: the single source of truth of a run.

Layout (every file optional until the run reaches the step that writes it)::

    RUN_DIR/
      config.json          {"format": 1, "settings": RunConfig, "classes": [...],
                            "versions": {...}, "dataset": {"fingerprint", "n_train", ...}}
      status.json          {"state": running|finished|failed|cancelled|interrupted,
                            "pid", "host", "started", "ended", "error", "method", "format",
                            "provisional": true while samples.csv is the provisional table}
      events.jsonl         one JSON object a line: {"t", "phase", "kind", ...} (see EVENT KINDS)
      samples.csv          one row per training image (see SAMPLE_COLUMNS; OPTIONAL_COLUMNS
                           true_label, is_noisy when the true labels are known; runs before
                           the rename wrote clean_label, which ``Run.samples`` reads as true_label).
                           A TURN / CE-FFT run first writes a *provisional* table after Phase I
                           (pretrained features only), then status.json "provisional": true; the
                           final table replaces it whole (same rows, same order) at the end and
                           sets "provisional": false
      metrics.json         test accuracy; flag precision/recall/F1/AUROC when the true labels are known
      gmm.json             [{"epoch", "means", "variances", "weights", "clean_component", "tau"}]
      features_pre.npy     float16 (N, D): pretrained features of the training images
      features_post.npy    float16 (N, D): features after FFT (TURN / CE-FFT only)
      neighbours_pre.npy   int32 (N, k): row i = the k nearest other samples of sample i in
                           features_pre by cosine, most similar first (k = knn_k; turn_core.knn,
                           method knn_method), searched once per run: the k-NN vote, the Review
                           page's neighbour panel, the learning queue and near-duplicates use it.
                           Written with the provisional table (TURN / CE-FFT) and at the end
      neighbour_sims_pre.npy  float16 (N, k): the cosine similarities of those neighbours
      neighbours_post.npy, neighbour_sims_post.npy  the same for features_post. A run from
                           before these files gets them once, when first opened
                           (turn_core.views.neighbours); a file older than its features is stale
      probs.npy            float32 (N, K): final model's class probabilities
      cv_probs.npy         float32 (V, N, K): out-of-fold linear-probe probabilities per feature view
      ensemble_probs.npy   float32 (N, K): the ensemble's class probabilities (suspicion = 1 − p[given])
      thumbs.npy           uint8 (N, T, T, 3): a thumbnail of every training image, row = sample
      model.safetensors    final weights
      skipped.csv          path,reason — files that could not be used
      run.log              tracebacks and warnings
      review.sqlite        review decisions (turn_core.review), keyed by samples.csv row
      review.json          the reviewer's settings, e.g. {"cutoff": {"value", "table", "saved_at"}}:
                           the suspect cut-off and the table (provisional / final) it was set on
      queue_learned.npz    the learning queue's suspicion after n_decisions reviews (turn_core.views.queue)
      duplicates.csv       near- and exact-duplicate pairs: a,b,similarity,label_a,label_b,kind
      projections/         cached 2-D embeddings (turn_core.projections)
      exports/             what the export step wrote

Writers use ``atomic_write_*`` so a killed process never leaves half a file; readers accept a
directory from an older version or half written and report what is missing instead of raising.

Words: "clean" is the GMM's (``clean_prob``, the clean set); the known-correct label of a
benchmark or demo image is its "true label".
"""
from __future__ import annotations

import csv
import io
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

FORMAT_VERSION = 1
# The one list of run states (status.json "state"); readers add "incomplete" for a folder
# whose status.json is missing or unreadable.
STATES = ("running", "finished", "failed", "cancelled", "interrupted")

# Columns of samples.csv, in order. loss_fft_<e> columns (e = 1..E_FFT) follow loss_lp.
SAMPLE_COLUMNS = [
    "index",            # row number = index into features/thumbs arrays
    "path",             # as given in the manifest (relative to the dataset root)
    "given_label",      # class name the dataset gave
    "predicted_label",  # final model's argmax
    "suggested_label",  # what we suggest the label should be (== given when not flagged)
    "suspicion",        # higher = more likely mislabeled, in [0, 1]
    "clean_prob",       # GMM posterior of the clean component (last epoch)
    "flagged",          # 0/1: the run's flag rule says "label issue"
    "confidence",       # model probability of suggested_label
    "margin",           # p(given) − max p(other), in [−1, 1]
    "knn_agreement",    # fraction of feature-space neighbours sharing the given label
    "loss_lp",          # CE loss after linear probing
]
OPTIONAL_COLUMNS = ["true_label", "is_noisy"]  # present when the true labels are known
# Column names of older runs → today's name (read side only; writers use today's names).
_OLD_COLUMNS = {"clean_label": "true_label"}


def now() -> float:
    return time.time()


# --------------------------------------------------------------------------- atomic writes
def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder + rename.

    A crash mid-write leaves the previous file intact (rename is atomic on POSIX).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def atomic_save_npy(path: str | Path, arr: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return atomic_write_bytes(path, buf.getvalue())


def csv_text(header: Iterable[Any], rows: Iterable[Iterable[Any]]) -> str:
    """CSV text as RFC 4180 writes it (CRLF rows).

    CRLF, not "\n": Python's csv quotes a field only when it holds a character of the line
    terminator, so with "\n" a label containing a bare carriage return would split its row.
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``; None when it is missing or unreadable (readers never raise)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


_read_json = read_json


# --------------------------------------------------------------------------- writing a run
class RunWriter:
    """Appends to one run directory. Used by the pipeline only (one writer per run)."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._events = open(self.dir / "events.jsonl", "a", encoding="utf-8")  # noqa: SIM115 (held until close())

    # Files one run writes; a new run in the same folder removes the previous run's first so
    # nothing stale (events, features, review decisions of other samples) mixes in.
    RUN_FILES = ("events.jsonl", "samples.csv", "metrics.json", "gmm.json", "features_pre.npy",
                 "features_post.npy", "neighbours_pre.npy", "neighbour_sims_pre.npy", "neighbours_post.npy",
                 "neighbour_sims_post.npy", "probs.npy", "cv_probs.npy", "ensemble_probs.npy", "thumbs.npy",
                 "model.safetensors", "skipped.csv", "run.log", "config.json", "review.json",
                 "queue_learned.npz", "duplicates.csv")

    def reset(self) -> None:
        """Start the folder afresh for a new run (the caller checked no live run owns it).

        Review decisions are people's work: a folder holding them is never reset.
        """
        import shutil

        if (self.dir / "review.sqlite").exists():
            raise InputError(f"run directory {self.dir} holds review decisions; choose another output folder")
        self._events.close()
        for name in self.RUN_FILES:
            (self.dir / name).unlink(missing_ok=True)
        shutil.rmtree(self.dir / "projections", ignore_errors=True)
        self._events = open(self.dir / "events.jsonl", "a", encoding="utf-8")  # noqa: SIM115 (held until close())

    def set_status(self, state: str, **extra: Any) -> None:
        assert state in STATES, state
        cur = _read_json(self.dir / "status.json") or {}
        cur.update(extra)
        cur.update(state=state, format=FORMAT_VERSION, pid=os.getpid(), host=socket.gethostname())
        if state == "running":
            cur["started"] = now()
            cur.pop("ended", None)
        else:
            cur["ended"] = now()
        atomic_write_json(self.dir / "status.json", cur)

    def update_status(self, **fields: Any) -> None:
        """Set ``fields`` in status.json, keeping its state and times (``set_status`` would
        restart the clock of a running run). Does nothing when there is no status.json yet."""
        cur = _read_json(self.dir / "status.json")
        if not isinstance(cur, dict):
            return
        cur.update(fields)
        atomic_write_json(self.dir / "status.json", cur)

    def event(self, phase: str, kind: str, **fields: Any) -> dict:
        ev = {"t": now(), "phase": phase, "kind": kind, **fields}
        self._events.write(json.dumps(ev, default=_json_default) + "\n")
        self._events.flush()
        return ev

    def write_json(self, name: str, obj: Any) -> Path:
        return atomic_write_json(self.dir / name, obj)

    def write_npy(self, name: str, arr: np.ndarray) -> Path:
        return atomic_save_npy(self.dir / name, arr)

    def write_csv(self, name: str, header: list[str], rows: Iterable[Iterable[Any]]) -> Path:
        return atomic_write_text(self.dir / name, csv_text(header, rows))

    def write_skipped(self, skipped: Iterable[tuple[str, str]]) -> Path:
        """skipped.csv from (path, reason) pairs."""
        return self.write_csv("skipped.csv", ["path", "reason"], skipped)

    def write_samples(self, *, paths: list[str], classes: list[str], given: np.ndarray,
                      predicted: np.ndarray, suggested: np.ndarray, suspicion: np.ndarray,
                      clean_prob: np.ndarray, flagged: np.ndarray, confidence: np.ndarray,
                      margin: np.ndarray, knn_agreement: np.ndarray, losses: np.ndarray,
                      true: np.ndarray | None = None, provisional: bool = False) -> Path:
        """samples.csv: one row per training image, columns SAMPLE_COLUMNS + loss_fft_<e>.

        given / predicted / suggested / true: int class indices (N,) into ``classes``;
        suspicion, clean_prob, confidence, margin, knn_agreement: floats (N,); flagged: bool or
        0/1 (N,); losses: (1 + E, N) per-sample CE after LP, then after each FFT epoch e.
        ``true`` (the true labels, when known) adds the OPTIONAL_COLUMNS. Floats are written
        with 6 decimals (knn_agreement 4), the precision metrics.json is computed at.

        The table is written whole (temporary file + rename), and only then does status.json
        say ``"provisional": provisional``: a reader that sees the flag finds the table it names.
        """
        losses = np.asarray(losses)
        n_fft = len(losses) - 1
        header = SAMPLE_COLUMNS + [f"loss_fft_{e}" for e in range(1, n_fft + 1)]
        if true is not None:
            header += OPTIONAL_COLUMNS
        rows = []
        for i in range(len(paths)):
            row = [i, paths[i], classes[given[i]], classes[predicted[i]], classes[suggested[i]],
                   f"{suspicion[i]:.6f}", f"{clean_prob[i]:.6f}", int(flagged[i]),
                   f"{confidence[i]:.6f}", f"{margin[i]:.6f}", f"{knn_agreement[i]:.4f}"]
            row += [f"{losses[e][i]:.6f}" for e in range(n_fft + 1)]
            if true is not None:
                row += [classes[true[i]], int(true[i] != given[i])]
            rows.append(row)
        path = self.write_csv("samples.csv", header, rows)
        self.update_status(provisional=bool(provisional))
        return path

    def write_metrics(self, metrics: dict) -> Path:
        """metrics.json (see the layout above)."""
        return self.write_json("metrics.json", metrics)

    def write_model(self, model, *, model_name: str, classes: list[str]) -> Path:
        """model.safetensors: the torch ``model``'s state dict, with the timm name and the
        class list as metadata. Written to a temporary name and renamed."""
        # imported here: reading a run needs neither torch nor safetensors
        from safetensors.torch import save_file

        sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        tmp = self.dir / ".model.safetensors.tmp"
        save_file(sd, str(tmp), metadata={"model": model_name, "classes": json.dumps(classes)})
        target = self.dir / "model.safetensors"
        os.replace(tmp, target)
        return target

    def close(self) -> None:
        self._events.close()


def new_run_name(method: str, source: str, *, suffix: str | None = None, when: float | None = None) -> str:
    """The folder name of a new run: ``YYYYmmdd-HHMMSS-<method>-<source stem>[-<suffix>]``.

    ``source`` is the data string of the run ("demo", a folder or a CSV path); characters that do
    not belong in a folder name become "-". The one naming rule of the app, the CLI and restarts.
    """
    import re

    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    stem = "demo" if source in ("", "demo") else (Path(str(source).rstrip("/\\")).stem or "data")
    parts = [stamp, method, stem] + ([suffix] if suffix else [])
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(parts)).strip("-.") or stamp


def delete_run(root: str | Path, name: str, *, busy: Iterable[str | Path] = ()) -> Path:
    """Remove run ``name`` under ``root`` with its review decisions; return the folder removed.

    Raises ``InputError`` when ``name`` is not a run folder directly under ``root`` (no path
    tricks: ``..``, links and nested names are refused) or when it is one of the ``busy`` run
    directories (a run training right now)."""
    import shutil

    root = Path(root).resolve()
    target = (root / str(name)).resolve()
    if not name or target.parent != root or not target.is_dir() or not is_run_dir(target):
        raise InputError(f"{name!r} is not a run folder under {root}")
    if any(target == Path(b).resolve() for b in busy if b):
        raise InputError(f"run {name} is training right now: cancel it first")
    shutil.rmtree(target)
    return target


# --------------------------------------------------------------------------- reading a run
@dataclass
class RunInfo:
    """Headline facts of one run, for the run picker."""

    dir: Path
    name: str
    state: str            # a STATES value, or "incomplete" when status.json is missing/broken
    method: str | None
    started: float | None
    ended: float | None
    error: str | None
    metrics: dict


def is_run_dir(path: Path) -> bool:
    return (path / "status.json").exists() or (path / "config.json").exists()


def pid_alive(pid: int | None, host: str | None) -> bool:
    """True when ``pid`` runs on this host (a run on another host is taken as alive)."""
    if not pid:
        return False
    if host and host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_status(run_dir: str | Path) -> dict:
    """status.json, with a run whose process is gone reported as ``interrupted``.

    A run left "running" by a killed process (server restart, kill -9) would otherwise show
    as running forever; the check looks at the recorded pid on this host.
    """
    run_dir = Path(run_dir)
    st = _read_json(run_dir / "status.json")
    if not isinstance(st, dict) or st.get("state") not in STATES:
        return {"state": "incomplete", "error": "status.json is missing or unreadable"}
    if st["state"] == "running" and not pid_alive(st.get("pid"), st.get("host")):
        st = dict(st, state="interrupted", error=st.get("error") or "the process running it stopped")
    return st


def mark_interrupted_if_dead(run_dir: str | Path) -> bool:
    """Persist ``interrupted`` for a run whose process died; True when it changed the file."""
    run_dir = Path(run_dir)
    raw = _read_json(run_dir / "status.json")
    st = read_status(run_dir)
    if isinstance(raw, dict) and raw.get("state") == "running" and st["state"] == "interrupted":
        raw.update(state="interrupted", ended=now(), error=st["error"])
        atomic_write_json(run_dir / "status.json", raw)
        return True
    return False


def list_runs(root: str | Path) -> list[RunInfo]:
    """Every run directory directly under ``root``, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        if d.is_dir() and is_run_dir(d):
            st = read_status(d)
            cfg = _read_json(d / "config.json") or {}
            method = st.get("method") or (cfg.get("settings") or {}).get("method")
            out.append(RunInfo(d, d.name, st["state"], method, st.get("started"), st.get("ended"),
                               st.get("error"), _read_json(d / "metrics.json") or {}))
    out.sort(key=lambda r: r.started or 0, reverse=True)
    return out


class Run:
    """Read-only view of a run directory; each artefact loads lazily and may be None.

    ``Run(path)`` raises ``InputError`` only when the folder does not exist; a half-written or
    older directory opens, and ``missing()`` says what it lacks.
    """

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        if not self.dir.is_dir():
            raise InputError(f"run directory {self.dir} does not exist")
        self._cache: dict[str, Any] = {}

    # -- small JSON files (re-read every call: they change while a run is going)
    @property
    def status(self) -> dict:
        return read_status(self.dir)

    @property
    def config(self) -> dict:
        return _read_json(self.dir / "config.json") or {}

    @property
    def settings(self) -> dict:
        return self.config.get("settings", {})

    @property
    def classes(self) -> list[str]:
        return list(self.config.get("classes", []))

    @property
    def provisional(self) -> bool:
        """True while samples.csv is the provisional table (pretrained features only, written
        after Phase I); False for the final table and for runs from before provisional tables."""
        return bool(self.status.get("provisional"))

    @property
    def table(self) -> str:
        """Which samples table the run holds now: "provisional" or "final"."""
        return "provisional" if self.provisional else "final"

    @property
    def metrics(self) -> dict:
        return _read_json(self.dir / "metrics.json") or {}

    @property
    def gmm(self) -> list[dict]:
        return _read_json(self.dir / "gmm.json") or []

    def events(self) -> list[dict]:
        """All events; a torn last line (process killed mid-write) is skipped."""
        out = []
        try:
            with open(self.dir / "events.jsonl", encoding="utf-8") as f:
                for line in f:
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue
        except FileNotFoundError:
            pass
        return out

    # -- large artefacts (cached per Run object)
    def samples(self, columns: list[str] | None = None):
        """The per-sample table as a pandas DataFrame (None until the run wrote it).

        ``columns``: read only these (a name the table lacks is left out; order as given);
        None reads every column. An older run's ``clean_label`` column comes back as
        ``true_label``. Cached per Run object and column set.
        """
        key = "samples" if columns is None else "samples:" + ",".join(columns)
        if key not in self._cache:
            import pandas as pd

            p = self.dir / "samples.csv"
            df = None
            if p.exists():
                text_cols = ["path", "given_label", "predicted_label", "suggested_label", "true_label"]
                dtypes = {c: str for c in text_cols + list(_OLD_COLUMNS)}
                want = None
                if columns is not None:
                    wanted = set(columns) | {o for o, n in _OLD_COLUMNS.items() if n in columns}
                    want = wanted.__contains__  # pandas takes a callable
                df = pd.read_csv(p, dtype=dtypes, keep_default_na=False, usecols=want)
                df = df.rename(columns={o: n for o, n in _OLD_COLUMNS.items() if n not in df.columns})
                if columns is not None:
                    df = df[[c for c in columns if c in df.columns]]
            self._cache[key] = df
        return self._cache[key]

    def _npy(self, name: str) -> np.ndarray | None:
        if name not in self._cache:
            p = self.dir / name
            try:
                self._cache[name] = np.load(p, mmap_mode="r", allow_pickle=False) if p.exists() else None
            except ValueError:
                self._cache[name] = None
        return self._cache[name]

    def features(self, which: str = "pre") -> np.ndarray | None:
        """(N, D) features: ``which`` is "pre" (pretrained) or "post" (after FFT)."""
        return self._npy(f"features_{which}.npy")

    @staticmethod
    def neighbour_files(which: str) -> tuple[str, str]:
        """File names of view ``which``'s saved neighbours: (indices, similarities)."""
        return f"neighbours_{which}.npy", f"neighbour_sims_{which}.npy"

    def neighbours(self, which: str = "pre") -> tuple[np.ndarray, np.ndarray] | None:
        """The saved neighbours of feature view ``which`` ("pre" or "post"): (indices (N, k)
        int32, similarities (N, k) float16) as read-only memmaps, row i most similar first.

        None when either file is missing, unreadable, of mismatched shapes, or older than
        features_<which>.npy (stale: the features were written again since). Only a result is
        cached, so a file written after a None (an older run's first open) is found next call.
        """
        key = f"neighbours:{which}"
        if key in self._cache:
            return self._cache[key]
        paths = [self.dir / n for n in self.neighbour_files(which)]
        feats = self.dir / f"features_{which}.npy"
        try:
            stamp = min(p.stat().st_mtime for p in paths)
            if feats.exists() and stamp < feats.stat().st_mtime:
                return None
            idx, sims = (np.load(p, mmap_mode="r", allow_pickle=False) for p in paths)
        except (OSError, ValueError):
            return None
        if idx.ndim != 2 or idx.shape != sims.shape:
            return None
        self._cache[key] = (idx, sims)
        return self._cache[key]

    def thumbs(self) -> np.ndarray | None:
        """(N, T, T, 3) uint8 thumbnails; row i is samples row i."""
        return self._npy("thumbs.npy")

    def thumbnail(self, index: int) -> np.ndarray | None:
        t = self.thumbs()
        return None if t is None or not 0 <= index < len(t) else np.asarray(t[index])

    def log_path(self) -> Path:
        return self.dir / "run.log"

    def missing(self) -> list[str]:
        need = ["config.json", "status.json", "samples.csv", "thumbs.npy", "features_pre.npy"]
        return [n for n in need if not (self.dir / n).exists()]
