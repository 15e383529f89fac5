"""The run directory: the single source of truth of a run.

Layout (every file optional until the run reaches the step that writes it)::

    RUN_DIR/
      config.json          {"format": 1, "settings": RunConfig, "classes": [...],
                            "versions": {...}, "dataset": {"fingerprint", "n_train", ...}}
      status.json          {"state": running|finished|failed|cancelled|interrupted,
                            "pid", "host", "started", "ended", "error", "method", "format",
                            "provisional": true while the samples table is the provisional one}
      events.jsonl         one JSON object a line: {"t", "phase", "kind", ...} (see EVENT KINDS)
      samples.parquet      one row per training image (see SAMPLE_COLUMNS; OPTIONAL_COLUMNS
                           true_label, is_noisy when the true labels are known; runs before
                           the rename wrote clean_label, which ``Run.samples`` reads as true_label),
                           in row groups of SAMPLES_CHUNK_ROWS, typed as ``parquet_type`` says. What
                           readers read (only the columns they need). Runs written before it
                           have samples.csv only: ``Run.samples`` writes it once, when first opened.
                           A TURN / CE-FFT run first writes a *provisional* table after Phase I
                           (pretrained features only), then status.json "provisional": true; the
                           final table replaces it whole (same rows, same order) at the end and
                           sets "provisional": false
      samples.csv          the same table as text, for other tools (floats with 6 decimals,
                           knn_agreement 4; CRLF rows); written with the Parquet, read by no page.
                           The Parquet records which CSV it holds: a CSV changed since (by hand,
                           or by an older version rerun in the folder) is converted again
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
      review.sqlite        review decisions (turn_core.review), keyed by samples table row
      review.json          the reviewer's settings, e.g. {"cutoff": {"value", "table", "saved_at"}}:
                           the suspect cut-off and the table (provisional / final) it was set on
      queue_learned.npz    the learning queue's suspicion after n_decisions reviews (turn_core.views.queue)
      duplicates.csv       near- and exact-duplicate pairs: a,b,similarity,label_a,label_b,kind
      projections/         cached 2-D embeddings (turn_core.projections)
      exports/             what the export step wrote

Writers use ``atomic_write_*`` (or write under a temporary name and rename) so a killed process
never leaves half a file; the big ones (samples table, thumbnails, features) are written in
chunks (``write_samples_chunks``, ``write_npy_chunks``), never whole in memory. Readers accept a
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
    """``arr`` as ``np.save`` writes it (C order), through a temporary file + rename.

    Written straight from the array's memory: no in-memory copy of the file, and none of the
    array unless it is not C-contiguous."""
    arr = np.asarray(arr)
    if arr.ndim == 0:   # a scalar has no rows to stream; it is a few bytes
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        return atomic_write_bytes(path, buf.getvalue())
    return write_npy_chunks(path, arr.shape, arr.dtype, [arr])


# Bytes of one chunk the streaming writers hold at a time (thumbnails, features).
CHUNK_BYTES = 64 << 20


def chunk_rows(row_bytes: int, target: int = CHUNK_BYTES) -> int:
    """Rows per chunk so that one chunk of rows of ``row_bytes`` bytes is about ``target``."""
    return max(1, int(target) // max(1, int(row_bytes)))


def row_chunks(arr: np.ndarray, rows: int | None = None):
    """``arr`` (N, ...) as consecutive views ``arr[lo:hi]`` of ``rows`` rows (default: about
    ``CHUNK_BYTES`` each). Views, not copies: a cast per chunk keeps the peak at one chunk."""
    n = len(arr)
    step = rows or chunk_rows(arr[:1].nbytes if n else 1)
    for lo in range(0, n, step):
        yield arr[lo:lo + step]


def _npy_header(f, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """The header ``np.save`` writes for a C-order array of ``shape`` and ``dtype``. numpy pads
    it so that the row count can grow to 21 digits in place, so its length does not depend on
    shape[0]: that is what lets ``write_npy_chunks`` rewrite it once the rows are counted."""
    d = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    try:
        np.lib.format.write_array_header_1_0(f, d)
    except ValueError:   # a header over 64 KiB (a huge structured dtype): format 2.0, as np.save
        np.lib.format.write_array_header_2_0(f, d)


def write_npy_chunks(path: str | Path, shape: tuple[int | None, ...], dtype, chunks: Iterable[np.ndarray]) -> Path:
    """Write an ``.npy`` file from row chunks, holding one chunk at a time.

    shape: the whole array's (N, ...); N may be None when the number of rows is known only at
    the end (the header is then rewritten in place). dtype: the file's; each chunk (M, ...)
    is cast to it on its own, so a float32 source becomes a float16 file without a float16
    copy of the whole. The bytes equal ``np.save`` of the concatenated chunks. The rows go
    through a plain file handle (no memmap whose dirty pages would count in RSS) to a
    temporary name, renamed when complete. Raises ``InputError`` when a chunk's row shape or
    the total row count does not match ``shape``.
    """
    path = Path(path)
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise InputError(f"{path.name}: object arrays cannot be saved without pickle")
    rest = tuple(int(d) for d in shape[1:])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        with open(tmp, "wb") as f:
            _npy_header(f, (shape[0] or 0, *rest), dtype)
            rows = 0
            for chunk in chunks:
                chunk = np.asarray(chunk)
                if chunk.shape[1:] != rest:
                    raise InputError(f"{path.name}: a chunk of shape {chunk.shape} does not hold rows of shape {rest}")
                f.write(np.ascontiguousarray(chunk, dtype=dtype).data)   # no copy when it already is
                rows += len(chunk)
            if shape[0] is None:
                f.seek(0)
                _npy_header(f, (rows, *rest), dtype)
            elif rows != shape[0]:
                raise InputError(f"{path.name}: the chunks hold {rows} rows, not {shape[0]}")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _temp_name(path: Path) -> Path:
    """A new empty file beside ``path`` to write it under (same folder: the rename is atomic)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


# --------------------------------------------------------------------------- the samples table
SAMPLES_PARQUET, SAMPLES_CSV = "samples.parquet", "samples.csv"
SAMPLES_CHUNK_ROWS = 65_536   # rows per Parquet row group / CSV chunk the writers hold at a time
# samples.parquet's key-value metadata: "<size>:<mtime_ns>" of the samples.csv it holds. A CSV
# that differs (edited by hand, written by an older version that knows no Parquet) is converted
# again; a copied run folder (copy2 keeps both) is not.
_CSV_KEY = b"turn_audit.samples_csv"
_TEXT_COLUMNS = {"path", "given_label", "predicted_label", "suggested_label", "true_label", *_OLD_COLUMNS}
_INT8_COLUMNS = {"flagged", "is_noisy"}
# Column types of samples.parquet: "index" int64, labels and paths string (Parquet stores them
# dictionary-encoded), flagged / is_noisy int8, every other column float64. float64, not
# float32: the floats are the CSV's 6-decimal text parsed, and float32 cannot hold 0.123457 as
# the CSV reader does, so the two tables would differ and metrics.json (computed at those
# decimals) would not describe the Parquet exactly. Readers get int64 and float64 back.


def samples_header(n_fft: int, has_true: bool) -> list[str]:
    """The samples table's columns: SAMPLE_COLUMNS, loss_fft_1..n_fft, OPTIONAL_COLUMNS if ``has_true``."""
    return SAMPLE_COLUMNS + [f"loss_fft_{e}" for e in range(1, n_fft + 1)] + (OPTIONAL_COLUMNS if has_true else [])


def parquet_type(name: str):
    """The pyarrow type of column ``name`` in samples.parquet (see the comment above)."""
    import pyarrow as pa

    if name == "index":
        return pa.int64()
    if name in _TEXT_COLUMNS:
        return pa.string()
    return pa.int8() if name in _INT8_COLUMNS else pa.float64()


def _text_columns(chunk: dict, start: int, classes: list[str], n_fft: int, has_true: bool) -> dict[str, list]:
    """One chunk of ``write_samples_chunks`` as samples.csv's cells: column → (M,) list of str
    (ints for index, flagged, is_noisy). Raises ``InputError`` when the arrays' lengths differ."""
    names = np.asarray(list(classes), dtype=object)
    losses = np.asarray(chunk["losses"])
    if len(losses) != n_fft + 1:
        raise InputError(f"samples table: losses hold {len(losses)} rows, not 1 + {n_fft} FFT epochs")
    m = len(chunk["paths"])

    def fixed(key: str, values, decimals: int = 6) -> list[str]:
        values = np.asarray(values)
        if len(values) != m:
            raise InputError(f"samples table: {key} holds {len(values)} rows, the paths {m}")
        return [f"{v:.{decimals}f}" for v in values.tolist()]

    def label(key: str) -> list[str]:
        idx = np.asarray(chunk[key])
        if len(idx) != m:
            raise InputError(f"samples table: {key} holds {len(idx)} rows, the paths {m}")
        return names[idx].tolist()

    given = np.asarray(chunk["given"])
    cols = {"index": list(range(start, start + m)), "path": [str(p) for p in chunk["paths"]],
            "given_label": label("given"), "predicted_label": label("predicted"),
            "suggested_label": label("suggested"), "suspicion": fixed("suspicion", chunk["suspicion"]),
            "clean_prob": fixed("clean_prob", chunk["clean_prob"]),
            "flagged": np.asarray(chunk["flagged"]).astype(np.int64).tolist(),
            "confidence": fixed("confidence", chunk["confidence"]), "margin": fixed("margin", chunk["margin"]),
            "knn_agreement": fixed("knn_agreement", chunk["knn_agreement"], 4),
            "loss_lp": fixed("losses", losses[0])}
    for e in range(1, n_fft + 1):
        cols[f"loss_fft_{e}"] = fixed("losses", losses[e])
    if has_true:
        cols["true_label"] = label("true")
        cols["is_noisy"] = (np.asarray(chunk["true"]) != given).astype(np.int64).tolist()
    if len(cols["flagged"]) != m:
        raise InputError(f"samples table: flagged holds {len(cols['flagged'])} rows, the paths {m}")
    return cols


def _csv_identity(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}"


def _is_of_csv(table, csv_path: Path) -> bool:
    """False when samples.csv exists and is not the one the Parquet ``table`` was written with."""
    try:
        st = os.stat(csv_path)
    except FileNotFoundError:
        return True    # nothing to compare: the Parquet is the table
    recorded = (table.metadata.metadata or {}).get(_CSV_KEY)
    return recorded is None or recorded.decode() == _csv_identity(st)


def _arrow_column(name: str, cells: list):
    """samples.csv's cells of one column as the Parquet's array (floats: the text parsed)."""
    import pyarrow as pa

    kind = parquet_type(name)
    if pa.types.is_floating(kind):
        return pa.array(np.array(cells, dtype=np.float64), kind)
    if pa.types.is_integer(kind):
        return pa.array(np.asarray(cells, dtype=kind.to_pandas_dtype()), kind)
    return pa.array(cells, kind)


def samples_file(run_dir: str | Path) -> Path | None:
    """The file ``Run.samples`` reads: samples.parquet, else samples.csv (an older run), else None.
    Its modification time changes when the table is replaced (provisional → final)."""
    for name in (SAMPLES_PARQUET, SAMPLES_CSV):
        if (Path(run_dir) / name).exists():
            return Path(run_dir) / name
    return None


def read_samples_csv(path, columns: list[str] | None = None, *, chunksize: int | None = None):
    """samples.csv (a path or an open binary file) as a DataFrame (or, with ``chunksize``, an
    iterator of them): text columns str, empty cells "" (not NaN), an old ``clean_label``
    column named ``true_label``. ``columns``: only these (names the file lacks are left out;
    order as given)."""
    import pandas as pd

    want = None
    if columns is not None:
        wanted = set(columns) | {o for o, n in _OLD_COLUMNS.items() if n in columns}
        want = wanted.__contains__  # pandas takes a callable
    frames = pd.read_csv(path, dtype={c: str for c in _TEXT_COLUMNS}, keep_default_na=False, usecols=want,
                         chunksize=chunksize)

    def tidy(df):
        df = df.rename(columns={o: n for o, n in _OLD_COLUMNS.items() if n not in df.columns})
        return df if columns is None else df[[c for c in columns if c in df.columns]]

    return (tidy(df) for df in frames) if chunksize else tidy(frames)


def samples_csv_to_parquet(csv_path: str | Path, parquet_path: str | Path) -> Path:
    """Write ``parquet_path`` from an older run's samples.csv, ``SAMPLES_CHUNK_ROWS`` rows at a
    time (temporary file + rename), in today's column names and ``parquet_type``'s types. Raises
    ``OSError`` when the folder cannot be written, ``ValueError`` when a column does not parse."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet_path = Path(parquet_path)
    tmp = _temp_name(parquet_path)
    try:
        with open(csv_path, "rb") as f:   # one open file: the identity recorded is of what was read
            csv_id = _csv_identity(os.fstat(f.fileno()))
            out = None
            for df in read_samples_csv(f, chunksize=SAMPLES_CHUNK_ROWS):
                schema = pa.schema([(c, parquet_type(c)) for c in df.columns])
                if out is None:
                    out = pq.ParquetWriter(tmp, schema)
                out.write_table(pa.table([pa.array(df[c].to_numpy()).cast(t)
                                          for c, t in zip(df.columns, schema.types)], schema=schema))
            if out is None:   # a header-only CSV: no rows, its columns
                f.seek(0)
                out = pq.ParquetWriter(tmp, pa.schema([(c, parquet_type(c)) for c in read_samples_csv(f).columns]))
        out.add_key_value_metadata({_CSV_KEY: csv_id})
        out.close()
        _fsync_path(tmp)
        os.replace(tmp, parquet_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return parquet_path


def open_samples(run_dir: str | Path):
    """The samples table of ``run_dir`` to read columns from: a ``pyarrow.parquet.ParquetFile``
    (held open, so a table that replaces it later cannot mix in), or None before the run wrote
    one. A samples.csv the Parquet was not written with (an older run's, with no Parquet, or one
    changed since) is converted to samples.parquet first (once: the next open finds it); when
    that fails (a folder that cannot be written), the CSV read whole, a DataFrame.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    run_dir = Path(run_dir)

    def parquet():
        # One open file for both footers: the table cannot change between them. Labels are read
        # as dictionaries (a few distinct values) and only then made strings: 10× faster than
        # Parquet's own decoding to strings (0.06 s vs 0.7 s for one label column at 1M rows).
        f = pa.OSFile(str(run_dir / SAMPLES_PARQUET))
        names = pq.ParquetFile(f).schema_arrow.names
        return pq.ParquetFile(f, read_dictionary=[c for c in names if c in _TEXT_COLUMNS and c != "path"])

    try:
        table = parquet()
        if _is_of_csv(table, run_dir / SAMPLES_CSV):
            return table
    except FileNotFoundError:
        if not (run_dir / SAMPLES_CSV).exists():
            return None
    try:
        samples_csv_to_parquet(run_dir / SAMPLES_CSV, run_dir / SAMPLES_PARQUET)
        return parquet()
    except (OSError, ValueError):
        return read_samples_csv(run_dir / SAMPLES_CSV)


def samples_frame(source, columns: list[str] | None = None):
    """``open_samples``'s table as a DataFrame, only ``columns`` read (names it lacks are left
    out; order as given; None: all, in file order). Dtypes as ``read_samples_csv`` gives them,
    whichever file it is: text str, index / flagged / is_noisy int64, the others float64."""
    import pyarrow as pa

    if not hasattr(source, "schema_arrow"):   # the CSV of a folder that could not be converted
        return source if columns is None else source[[c for c in columns if c in source.columns]]
    names = source.schema_arrow.names
    old = {o: n for o, n in _OLD_COLUMNS.items() if o in names and n not in names}
    wanted = None if columns is None else set(columns)
    read = [c for c in names if wanted is None or c in wanted or old.get(c) in wanted]
    table = source.read(columns=read)

    def widen(t):
        if pa.types.is_dictionary(t):
            return widen(t.value_type)
        if pa.types.is_integer(t):
            return pa.int64()
        return pa.float64() if pa.types.is_floating(t) else pa.string() if pa.types.is_string(t) else t

    table = table.cast(pa.schema([(f.name, widen(f.type)) for f in table.schema]))
    df = table.to_pandas().rename(columns=old)
    return df if columns is None else df[[c for c in columns if c in df.columns]]


# --------------------------------------------------------------------------- writing a run
class RunWriter:
    """Appends to one run directory. Used by the pipeline only (one writer per run)."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._events = open(self.dir / "events.jsonl", "a", encoding="utf-8")  # noqa: SIM115 (held until close())

    # Files one run writes; a new run in the same folder removes the previous run's first so
    # nothing stale (events, features, review decisions of other samples) mixes in.
    # samples.parquet comes after samples.csv: while reset removes them, a reader never finds a
    # CSV without its Parquet (which it would convert, bringing the old table back for a while).
    RUN_FILES = ("events.jsonl", "samples.csv", "samples.parquet", "metrics.json", "gmm.json", "features_pre.npy",
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

    def write_npy_chunks(self, name: str, shape: tuple[int | None, ...], dtype,
                         chunks: Iterable[np.ndarray]) -> Path:
        """``name`` from row chunks, one in memory at a time (see ``write_npy_chunks``)."""
        return write_npy_chunks(self.dir / name, shape, dtype, chunks)

    def write_csv(self, name: str, header: list[str], rows: Iterable[Iterable[Any]]) -> Path:
        return atomic_write_text(self.dir / name, csv_text(header, rows))

    def write_skipped(self, skipped: Iterable[tuple[str, str]]) -> Path:
        """skipped.csv from (path, reason) pairs."""
        return self.write_csv("skipped.csv", ["path", "reason"], skipped)

    def write_samples(self, *, paths: list[str], classes: list[str], given: np.ndarray,
                      predicted: np.ndarray, suggested: np.ndarray, suspicion: np.ndarray,
                      clean_prob: np.ndarray, flagged: np.ndarray, confidence: np.ndarray,
                      margin: np.ndarray, knn_agreement: np.ndarray, losses: np.ndarray,
                      true: np.ndarray | None = None, provisional: bool = False,
                      chunk_rows: int = SAMPLES_CHUNK_ROWS) -> Path:
        """samples.parquet and samples.csv: one row per training image, columns SAMPLE_COLUMNS
        + loss_fft_<e>.

        given / predicted / suggested / true: int class indices (N,) into ``classes``;
        suspicion, clean_prob, confidence, margin, knn_agreement: floats (N,); flagged: bool or
        0/1 (N,); losses: (1 + E, N) per-sample CE after LP, then after each FFT epoch e.
        ``true`` (the true labels, when known) adds the OPTIONAL_COLUMNS. Floats are written
        with 6 decimals (knn_agreement 4), the precision metrics.json is computed at.
        ``chunk_rows`` rows at a time (``write_samples_chunks``); the files do not depend on it.
        """
        losses = np.asarray(losses)
        columns = {"paths": paths, "given": given, "predicted": predicted, "suggested": suggested,
                   "suspicion": suspicion, "clean_prob": clean_prob, "flagged": flagged,
                   "confidence": confidence, "margin": margin, "knn_agreement": knn_agreement}
        if true is not None:
            columns["true"] = true
        n = len(paths)

        def chunks():
            for lo in range(0, n, chunk_rows):
                yield {**{k: v[lo:lo + chunk_rows] for k, v in columns.items()},
                       "losses": losses[:, lo:lo + chunk_rows]}

        return self.write_samples_chunks(chunks(), classes=classes, n_fft=len(losses) - 1,
                                         has_true=true is not None, provisional=provisional)

    def write_samples_chunks(self, chunks: Iterable[dict], *, classes: list[str], n_fft: int = 0,
                             has_true: bool = False, provisional: bool = False) -> Path:
        """samples.parquet and samples.csv from row chunks, holding one chunk at a time.

        chunks: dicts with ``write_samples``'s arrays for M consecutive rows each (``losses``
        (1 + n_fft, M); ``true`` when ``has_true``); the index column counts on across chunks.
        Each chunk is one Parquet row group and is appended to the CSV. The CSV is the text
        ``write_samples`` always wrote; the Parquet holds the same values (its floats are that
        text parsed, see ``parquet_type``). Returns the path of samples.csv.

        Both tables are written whole under temporary names, then renamed, the CSV first; the
        Parquet records which CSV it was written with (size, modification time). A reader
        between the renames finds a Parquet that is not the CSV's and converts the new CSV
        itself (``open_samples``): it reads the new table either way, never a mix. Only then
        does status.json say ``"provisional": provisional``: a reader that sees the flag finds
        the table it names.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        header = samples_header(n_fft, has_true)
        schema = pa.schema([(c, parquet_type(c)) for c in header])
        pq_path, csv_path = self.dir / SAMPLES_PARQUET, self.dir / SAMPLES_CSV
        pq_tmp, csv_tmp = _temp_name(pq_path), _temp_name(csv_path)
        try:
            with pq.ParquetWriter(pq_tmp, schema) as out:
                with open(csv_tmp, "w", encoding="utf-8", newline="") as f:
                    w = csv.writer(f, lineterminator="\r\n")   # see csv_text: CRLF rows
                    w.writerow(header)
                    start = 0
                    for chunk in chunks:
                        text = _text_columns(chunk, start, classes, n_fft, has_true)
                        w.writerows(zip(*text.values()))
                        out.write_table(pa.table([_arrow_column(c, v) for c, v in text.items()], schema=schema))
                        start += len(text["index"])
                    f.flush()
                    os.fsync(f.fileno())
                    csv_id = _csv_identity(os.fstat(f.fileno()))   # a rename keeps size and mtime
                out.add_key_value_metadata({_CSV_KEY: csv_id})
            _fsync_path(pq_tmp)
            os.replace(csv_tmp, csv_path)
            os.replace(pq_tmp, pq_path)
        except BaseException:
            pq_tmp.unlink(missing_ok=True)
            csv_tmp.unlink(missing_ok=True)
            raise
        self.update_status(provisional=bool(provisional))
        return csv_path

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
        """True while the samples table is the provisional one (pretrained features only, written
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
        None reads every column. Read from samples.parquet (only those columns' data); an
        older run with only samples.csv gets its samples.parquet here, once (``open_samples``).
        Dtypes are the same from either file: path and labels str, index / flagged /
        is_noisy int64, the others float64. An older run's ``clean_label`` column comes back
        as ``true_label``. Cached per Run object and column set, and every column set comes
        from the one table this object opened first: after the provisional table is replaced
        by the final one, a new Run reads the final table; this one never mixes the two.
        """
        key = "samples" if columns is None else "samples:" + ",".join(columns)
        if key not in self._cache:
            if "samples_table" not in self._cache:
                source = open_samples(self.dir)
                if source is None:
                    return None   # not cached: the table may appear later
                self._cache["samples_table"] = source
            self._cache[key] = samples_frame(self._cache["samples_table"], columns)
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
