"""Review decisions, persisted the moment they are made: ``RUN_DIR/review.sqlite``.

A person looks at a suspect image and decides one of ``DECISIONS``:

============  =====================================================================
``accept``    take the run's suggested label (``final_label`` = suggested)
``relabel``   a class the person picked (``final_label`` = that class)
``keep``      the given label was right after all (``final_label`` = given)
``exclude``   unclear / not a valid image: drop it from training (``final_label`` = None)
============  =====================================================================

Storage is an append-only history table; nothing is ever updated or deleted, so the file is
also the audit trail. Undo appends an ``undo`` row pointing (``undoes``) at the decision row it
cancels. A decision row is *live* until an undo row points at it; the effective decision of a
sample is its latest live row (none: unreviewed). Undoing twice therefore walks back through
the sample's history, like an editor's undo stack.

Concurrency: two browser sessions (threads of one Streamlit process) or two processes may
review the same run. Each thread uses its own connection (a ``ReviewStore`` may be shared
between threads; a connection never is), the database is in WAL mode (readers never block
the writer), every write
is one short ``BEGIN IMMEDIATE`` transaction (the write lock is taken up front, so a
read-then-write such as undo cannot interleave with another writer), and ``busy_timeout``
makes a second writer wait instead of failing. No update is lost.

Decisions are keyed by the sample's row in samples.csv, which the provisional table (written
after Phase I) and the final one share, so decisions made while a run trains stay valid when
the final table replaces the provisional one; an ``accept`` keeps the label it accepted.

The suspects: the images whose suspicion is at or above the run's cut-off (``suspect_rule``).
The cut-off a reviewer sets is saved in ``RUN_DIR/review.json`` the moment it changes
(``save_cutoff``), with the table it was set on; without one for the current table, the
cut-off is the one that picks as many images as the run flagged. Review, Export and the Label
Studio tasks all read it from here, so they show one suspect set.
"""
from __future__ import annotations

import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .rundir import Run, atomic_write_json, read_json
from .views.cutoff import default_cutoff

DECISIONS = ("accept", "relabel", "keep", "exclude")
UNDO = "undo"                    # decision name of an undo row (not a decision a person makes)
DB_NAME = "review.sqlite"
SETTINGS_NAME = "review.json"    # the reviewer's settings of a run (the suspect cut-off)
TABLES = ("provisional", "final")  # which samples table a cut-off was set on (``Run.table``)
SCHEMA_VERSION = 2
# How long a writer waits for another one's transaction before giving up. Transactions are a
# few milliseconds, so this only matters on a very slow disk.
BUSY_TIMEOUT_MS = 30_000

# Version 1 (never released) had no session_id / undoes columns and no schema_version table;
# _migrate adds whatever an older file lacks, so it still opens.
_COLUMNS = {  # name -> SQL type, in order
    "id": "INTEGER PRIMARY KEY AUTOINCREMENT",
    "sample_index": "INTEGER NOT NULL",
    "decision": "TEXT NOT NULL",
    "final_label": "TEXT",
    "reviewer": "TEXT NOT NULL DEFAULT ''",
    "created_at": "REAL NOT NULL",
    "session_id": "TEXT",
    "undoes": "INTEGER",         # undo rows only: id of the decision row this one cancels
}

# Decision rows no undo points at. The effective decision = the latest of these per sample.
_LIVE = f"""
    SELECT * FROM decisions
    WHERE decision != '{UNDO}'
      AND id NOT IN (SELECT undoes FROM decisions WHERE undoes IS NOT NULL)
"""
_EFFECTIVE = f"""
    WITH live AS ({_LIVE})
    SELECT live.* FROM live
    JOIN (SELECT sample_index, MAX(id) AS id FROM live GROUP BY sample_index) last
      ON live.id = last.id
"""


@dataclass(frozen=True)
class Decision:
    """One row of the history.

    ``index``: the sample's row in samples.csv; ``decision``: a DECISIONS value, or "undo" in
    ``history()``; ``final_label``: the class the image should have (None for exclude and for
    undo rows); ``reviewer``: free text (a name or the browser session); ``created_at``: unix
    time; ``id``: row id (increasing with time); ``undoes``: for undo rows, the id cancelled.
    """

    index: int
    decision: str
    final_label: str | None
    reviewer: str
    created_at: float
    id: int = 0
    session_id: str | None = None
    undoes: int | None = None


class ReviewStore:
    """Decisions of one run, in ``RUN_DIR/review.sqlite``.

    Cheap to construct (nothing is opened until the first call); safe to share between
    threads and to use from several processes at once. Raises ``InputError`` when the run
    directory does not exist, and when a decision, label or sample index is invalid.
    """

    def __init__(self, run_dir: str | Path):
        self.run = Run(run_dir)          # InputError when the folder does not exist
        self.dir = self.run.dir
        self.path = self.dir / DB_NAME
        self._classes: list[str] | None = None
        self._n_samples: int | None = None
        self._local = threading.local()   # one connection per thread (see _connection)

    # ------------------------------------------------------------------ writing
    def record(self, index: int, decision: str, final_label: str | None, reviewer: str = "",
               session_id: str | None = None) -> int:
        """Persist one decision now (its own transaction); returns the new row id."""
        row = self._validated(index, decision, final_label)
        with self._write() as con:
            return self._insert(con, *row, reviewer, session_id)

    def record_many(self, items: Iterable[tuple[int, str, str | None]], reviewer: str = "",
                    session_id: str | None = None) -> list[int]:
        """Persist several ``(index, decision, final_label)`` at once (e.g. "accept this page"):
        one transaction, so either all are stored or none. Returns the row ids in order."""
        rows = [self._validated(*item) for item in items]  # validate all before writing any
        if not rows:
            return []
        with self._write() as con:
            return [self._insert(con, *row, reviewer, session_id) for row in rows]

    def undo(self, sample_index: int, reviewer: str = "", session_id: str | None = None) -> Decision | None:
        """Cancel the effective decision of one sample; its previous one (or "unreviewed")
        becomes effective again. Returns the decision undone, None when there was none."""
        with self._write() as con:
            row = con.execute(f"WITH live AS ({_LIVE}) SELECT * FROM live WHERE sample_index = ? "
                              "ORDER BY id DESC LIMIT 1", (int(sample_index),)).fetchone()
            return self._append_undo(con, row, reviewer, session_id)

    def undo_last(self, reviewer: str, session_id: str | None = None) -> Decision | None:
        """Cancel ``reviewer``'s latest decision that is still live (calling it again walks
        further back). A later decision by someone else on the same image stays effective.
        Returns the decision undone (its ``index`` says which image), None when none is left."""
        with self._write() as con:
            row = con.execute(f"WITH live AS ({_LIVE}) SELECT * FROM live WHERE reviewer = ? "
                              "ORDER BY id DESC LIMIT 1", (reviewer,)).fetchone()
            return self._append_undo(con, row, reviewer, session_id)

    # ------------------------------------------------------------------ reading
    def latest(self) -> dict[int, Decision]:
        """Effective decision per reviewed sample: ``{sample index: Decision}``."""
        with self._read() as con:
            if con is None:
                return {}
            return {r["sample_index"]: _decision(r) for r in con.execute(_EFFECTIVE)}

    def get(self, index: int) -> Decision | None:
        """Effective decision of one sample (None: unreviewed)."""
        with self._read() as con:
            if con is None:
                return None
            r = con.execute(f"WITH live AS ({_LIVE}) SELECT * FROM live WHERE sample_index = ? "
                            "ORDER BY id DESC LIMIT 1", (int(index),)).fetchone()
            return _decision(r) if r else None

    def history(self, index: int | None = None) -> list[Decision]:
        """Every row, oldest first (undo rows included), of one sample or of all."""
        with self._read() as con:
            if con is None:
                return []
            if index is None:
                rows = con.execute("SELECT * FROM decisions ORDER BY id")
            else:
                rows = con.execute("SELECT * FROM decisions WHERE sample_index = ? ORDER BY id",
                                   (int(index),))
            return [_decision(r) for r in rows]

    def count_reviewed(self) -> int:
        """Number of samples with an effective decision."""
        with self._read() as con:
            if con is None:
                return 0
            return con.execute(f"WITH live AS ({_LIVE}) "
                               "SELECT COUNT(DISTINCT sample_index) FROM live").fetchone()[0]

    def counts(self) -> dict[str, int]:
        """Effective decisions per kind: ``{"accept": n, "relabel": n, "keep": n, "exclude": n}``."""
        out = dict.fromkeys(DECISIONS, 0)
        with self._read() as con:
            if con is None:
                return out
            for r in con.execute(f"SELECT decision, COUNT(*) AS n FROM ({_EFFECTIVE}) GROUP BY decision"):
                out[r["decision"]] = r["n"]
        return out

    # ------------------------------------------------------------------ internals
    def _validated(self, index: int, decision: str, final_label: str | None) -> tuple[int, str, str | None]:
        if decision not in DECISIONS:
            raise InputError(f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
        try:
            idx = int(index)
        except (TypeError, ValueError):
            raise InputError(f"sample index {index!r} is not an integer") from None
        if idx != index or idx < 0:
            raise InputError(f"sample index {index!r} is not a non-negative integer")
        n = self._sample_count()
        if n is not None and idx >= n:
            raise InputError(f"sample index {idx} is out of range: the run has {n} samples")
        if decision == "exclude":
            return idx, decision, None   # an excluded image has no label, whatever was passed
        if not isinstance(final_label, str) or final_label == "":
            raise InputError(f"decision {decision!r} for sample {idx} needs a final label")
        classes = self._run_classes()
        # A run directory written before config.json (or by an old version without classes)
        # cannot be checked; any non-empty label is accepted then.
        if classes and final_label not in classes:
            raise InputError(f"label {final_label!r} is not one of the run's classes "
                             f"({', '.join(map(repr, classes))})")
        return idx, decision, final_label

    def _run_classes(self) -> list[str]:
        if not self._classes:            # re-read until known: the run may still be starting
            self._classes = self.run.classes
        return self._classes

    def _sample_count(self) -> int | None:
        """How many samples the run has, without reading its table: config.json's
        ``dataset.n_train`` (written before any table, the rows every table has). A run from
        before that field falls back to the length of one column, read once per store; None
        while neither is there (a run still starting: any index is accepted then)."""
        if self._n_samples is None:
            self._n_samples = _configured_count(self.run.config)
        if self._n_samples is None:
            # A fresh Run: Run caches "no table yet" per object, and the table may appear later.
            index = Run(self.dir).samples(columns=["index"])
            if index is not None:
                self._n_samples = len(index)
        return self._n_samples

    def last_id(self) -> int:
        """The id of the newest history row (0 when none): it changes with every decision and
        undo, so it keys whatever is derived from the decisions (the Export page's files)."""
        with self._read() as con:
            if con is None:
                return 0
            return int(con.execute("SELECT COALESCE(MAX(id), 0) FROM decisions").fetchone()[0])

    @staticmethod
    def _insert(con: sqlite3.Connection, idx: int, decision: str, label: str | None,
                reviewer: str, session_id: str | None, undoes: int | None = None) -> int:
        cur = con.execute("INSERT INTO decisions (sample_index, decision, final_label, reviewer, "
                          "created_at, session_id, undoes) VALUES (?, ?, ?, ?, ?, ?, ?)",
                          (idx, decision, label, reviewer or "", time.time(), session_id, undoes))
        return int(cur.lastrowid)

    def _append_undo(self, con, row, reviewer, session_id) -> Decision | None:
        if row is None:
            return None
        self._insert(con, row["sample_index"], UNDO, None, reviewer, session_id, undoes=row["id"])
        return _decision(row)

    def close(self) -> None:
        """Close the calling thread's connection (others close when their thread ends)."""
        con = getattr(self._local, "con", None)
        if con is not None and self._local.pid == os.getpid():
            con.close()
        self._local.con = None

    def _connect(self) -> sqlite3.Connection:
        # Opening can meet "database is locked" outside the busy handler's reach (switching a new
        # file to WAL, or its first migration, while another thread does the same): retry until
        # BUSY_TIMEOUT_MS, like a locked write. Seen under load in tests/test_review.py.
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                return self._open()
            except sqlite3.Error as e:
                locked = isinstance(e, sqlite3.OperationalError) and "locked" in str(e)
                if not locked or time.monotonic() > deadline:
                    raise InputError(f"cannot open review database {self.path}: {e}") from None
                time.sleep(0.02)

    def _open(self) -> sqlite3.Connection:
        con = None
        try:
            # isolation_level=None: we issue BEGIN ourselves (BEGIN IMMEDIATE for writes).
            con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                  check_same_thread=True)
            con.row_factory = sqlite3.Row
            con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # FULL: a decision survives a power cut too, not only a crash of the app (one fsync).
            con.execute("PRAGMA synchronous = FULL")
            mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                con.close()
                raise InputError(f"cannot switch {self.path} to WAL mode (got {mode}); "
                                 "is the run folder on a network drive?")
            version = _schema_version(con)
            if version is None or version < SCHEMA_VERSION:
                con.execute("BEGIN IMMEDIATE")
                try:
                    _migrate(con)
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
        except sqlite3.Error:
            if con is not None:
                con.close()
            raise
        return con

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use.

        Kept open on purpose: closing the last connection to a WAL database checkpoints and
        deletes the WAL, which costs several fsyncs per decision. Reopened after a fork (a
        connection must never cross one) and when review.sqlite was replaced or deleted.
        """
        local = self._local
        con = getattr(local, "con", None)
        if con is not None:
            try:
                same_file = os.stat(self.path).st_ino == local.ino
            except FileNotFoundError:
                same_file = False
            if local.pid != os.getpid():
                _ORPHANED.append(con)  # the parent's: neither use nor close it in the child
                con = None
            elif not same_file:
                con.close()
                con = None
        if con is None:
            con = self._connect()
            local.con, local.pid, local.ino = con, os.getpid(), os.stat(self.path).st_ino
        return con

    def _drop_connection(self) -> None:
        try:
            self.close()
        except sqlite3.Error:
            self._local.con = None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short transaction holding the write lock from its start."""
        con = self._connection()
        try:
            con.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            self._drop_connection()
            raise InputError(f"cannot write review decisions to {self.path}: {e}") from None
        try:
            yield con
            con.execute("COMMIT")
        except BaseException as e:
            try:
                con.execute("ROLLBACK")
            except sqlite3.Error:
                self._drop_connection()
            if isinstance(e, sqlite3.Error):
                raise InputError(f"cannot write review decisions to {self.path}: {e}") from None
            raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection | None]:
        """A connection for reading, or None when nothing was ever recorded (no file)."""
        if not self.path.exists():
            yield None
            return
        yield self._connection()


_ORPHANED: list[sqlite3.Connection] = []


def _configured_count(config: dict) -> int | None:
    """config.json's ``dataset.n_train`` as an int; None when absent or not a count."""
    n = (config.get("dataset") or {}).get("n_train") if isinstance(config, dict) else None
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        return None
    return n


def _schema_version(con: sqlite3.Connection) -> int | None:
    """Version recorded in the file; 1 for a file from before versioning, None for a new file."""
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "schema_version" in tables:
        row = con.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0]) if row and row[0] is not None else 1
    return 1 if "decisions" in tables else None


def _migrate(con: sqlite3.Connection) -> None:
    """Create the tables, or bring an older file up to SCHEMA_VERSION (columns are only added)."""
    cols = ", ".join(f"{name} {sql}" for name, sql in _COLUMNS.items())
    con.execute(f"CREATE TABLE IF NOT EXISTS decisions ({cols})")
    have = {r[1] for r in con.execute("PRAGMA table_info(decisions)")}
    for name, sql in _COLUMNS.items():
        if name not in have:
            # ADD COLUMN cannot carry PRIMARY KEY / NOT NULL without default; the rest can.
            con.execute(f"ALTER TABLE decisions ADD COLUMN {name} {sql.replace('NOT NULL', '')}")
    con.execute("CREATE INDEX IF NOT EXISTS decisions_by_sample ON decisions (sample_index, id)")
    con.execute("CREATE INDEX IF NOT EXISTS decisions_by_reviewer ON decisions (reviewer, id)")
    # At most one undo per decision row, even if two sessions press undo at the same instant.
    con.execute("CREATE UNIQUE INDEX IF NOT EXISTS decisions_undoes ON decisions (undoes) "
                "WHERE undoes IS NOT NULL")
    con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = con.execute("SELECT MAX(version) FROM schema_version").fetchone()
    if row[0] is None or row[0] < SCHEMA_VERSION:
        con.execute("DELETE FROM schema_version")
        con.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
    # A newer file (row[0] > SCHEMA_VERSION) is left as is: columns are only ever added, so
    # this version reads and writes the ones it knows.


def _decision(r: sqlite3.Row) -> Decision:
    keys = r.keys()
    return Decision(index=int(r["sample_index"]), decision=r["decision"], final_label=r["final_label"],
                    reviewer=r["reviewer"] or "", created_at=float(r["created_at"]), id=int(r["id"]),
                    session_id=r["session_id"] if "session_id" in keys else None,
                    undoes=r["undoes"] if "undoes" in keys else None)


# --------------------------------------------------------------------------- for the pages
@dataclass(frozen=True)
class Recorded:
    """What became of a decision the app tried to store: ``ok`` and a one-line ``message`` for
    people ("#12: accept → dog", or "Not stored: <cause>")."""

    ok: bool
    message: str


def final_label(decision: str, given: str, suggested: str, picked: str | None = None) -> str | None:
    """The label an image gets from ``decision``: accept → ``suggested``, keep → ``given``,
    relabel → ``picked`` (the class the reviewer chose), exclude → None."""
    return {"accept": suggested, "keep": given, "relabel": picked, "exclude": None}.get(decision)


def record_decision(store: ReviewStore, index: int, decision: str, *, given: str, suggested: str,
                    picked: str | None = None, reviewer: str = "") -> Recorded:
    """Store one decision on image ``index`` (its label from ``final_label``) and say how it went.

    Never raises for bad input or storage trouble (a locked, read-only or full disk): the
    ``Recorded`` message names the cause, so every page that records decisions (Review, Feature
    clusters) reports it the same way instead of crashing."""
    label = final_label(decision, given, suggested, picked)
    try:
        store.record(int(index), decision, label, reviewer)
    except (InputError, OSError, sqlite3.Error) as e:
        return Recorded(False, f"Not stored: {e}")
    return Recorded(True, f"#{index}: {decision}" + (f" → {label}" if label else ""))


def accept_suggestions(store: ReviewStore, items: Iterable[tuple[int, str]], reviewer: str = "") -> Recorded:
    """Accept the suggested label of every ``(index, suggested_label)`` in one transaction (all
    stored or none), reported like ``record_decision``."""
    rows = [(int(i), "accept", str(label)) for i, label in items]
    try:
        store.record_many(rows, reviewer)
    except (InputError, OSError, sqlite3.Error) as e:
        return Recorded(False, f"Not stored: {e}")
    return Recorded(True, f"Accepted {len(rows)} suggestions")


# --------------------------------------------------------------------------- the suspects
@dataclass(frozen=True)
class SuspectRule:
    """Which images are a run's suspects now: those with ``suspicion >= cutoff``.

    ``source``: "saved" (the reviewer's cut-off from review.json) or "flag count" (none saved
    for this table: the cut-off that picks as many images as the run's flag rule flagged);
    ``table``: the samples table it applies to ("provisional" or "final")."""

    cutoff: float
    source: str
    table: str

    def describe(self) -> str:
        """One line for people (pages, export notes)."""
        why = ("the cut-off saved on Loss distributions" if self.source == "saved"
               else "as many images as the run's flag rule flagged")
        return f"suspicion ≥ {self.cutoff:.3f} ({why}; {self.table} scores)"

    def mask(self, df) -> np.ndarray:
        """(N,) bool over the samples table ``df``: True for the suspects."""
        return df["suspicion"].to_numpy(float) >= self.cutoff


def save_cutoff(run_dir: str | Path, value: float | None, *, table: str = "final") -> Path:
    """Save the suspect cut-off of a run now (review.json, written whole and renamed).

    ``value``: a number in [0, 1], or None to go back to the run's flag count; ``table``: the
    samples table it was set on (``Run.table``; a cut-off on the provisional scores does not
    carry over to the final ones, whose scale differs). Other keys of review.json are kept.
    Raises ``InputError`` for a value outside [0, 1], an unknown table or a missing run folder."""
    run = Run(run_dir)
    if table not in TABLES:
        raise InputError(f"table {table!r} is not one of {', '.join(TABLES)}")
    if value is not None:
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise InputError(f"cut-off {value!r} is not a number") from None
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise InputError(f"cut-off {value!r} is not in [0, 1]")
    current = read_json(run.dir / SETTINGS_NAME)
    settings = current if isinstance(current, dict) else {}
    settings["cutoff"] = None if value is None else {"value": value, "table": table, "saved_at": time.time()}
    try:
        return atomic_write_json(run.dir / SETTINGS_NAME, settings)
    except OSError as e:
        raise InputError(f"cannot save the cut-off to {run.dir / SETTINGS_NAME}: {e}") from None


def saved_cutoff(run_dir: str | Path, table: str = "final") -> float | None:
    """The cut-off saved for ``table``; None when none is (or review.json is unreadable, or it
    was set on the other table)."""
    settings = read_json(Path(run_dir) / SETTINGS_NAME)
    saved = settings.get("cutoff") if isinstance(settings, dict) else None
    if not isinstance(saved, dict) or saved.get("table", "final") != table:
        return None
    value = saved.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        return None
    return float(value)


def suspect_rule(run_dir: str | Path | Run, df=None) -> SuspectRule:
    """The run's suspect rule now: the cut-off saved for its current table, else the one that
    picks as many images as the run flagged (``views.default_cutoff``). ``df``: the samples
    table (read from the run when None)."""
    run = run_dir if isinstance(run_dir, Run) else Run(run_dir)
    table = run.table
    value = saved_cutoff(run.dir, table)
    if value is not None:
        return SuspectRule(value, "saved", table)
    if df is None:  # the two columns the flag count needs, not the whole table
        df = run.samples(columns=["suspicion", "flagged"])
    return SuspectRule(default_cutoff(df), "flag count", table)


def schema_version(run_dir: str | Path) -> int | None:
    """The schema version of a run's review.sqlite (None: no file, 1: file before versioning)."""
    path = Path(run_dir) / DB_NAME
    if not path.exists():
        return None
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return _schema_version(con)
    finally:
        con.close()


__all__ = ["DECISIONS", "SCHEMA_VERSION", "SETTINGS_NAME", "TABLES", "UNDO", "Decision", "Recorded", "ReviewStore",
           "SuspectRule", "accept_suggestions", "final_label", "record_decision", "save_cutoff", "saved_cutoff",
           "schema_version", "suspect_rule"]
