"""turn_core.review: decisions in review.sqlite (WAL, append-only history, undo, concurrency)."""
from __future__ import annotations

import multiprocessing as mp
import sqlite3
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fakerun import CLASSES, make_fake_run

from turn_core.errors import InputError
from turn_core.review import DECISIONS, SCHEMA_VERSION, ReviewStore, record_decision, schema_version


@pytest.fixture
def run(tmp_path):
    return make_fake_run(tmp_path / "run", n=60)


def test_record_latest_history(run):
    s = ReviewStore(run)
    assert s.latest() == {} and s.history() == [] and s.count_reviewed() == 0
    assert not (run / "review.sqlite").exists()  # reading creates nothing
    id1 = s.record(3, "accept", "dog", "ann")
    id2 = s.record(3, "relabel", "café", "bob")
    id3 = s.record(7, "exclude", "cat", "ann")  # a label given with exclude is dropped
    assert id1 < id2 < id3
    latest = s.latest()
    assert set(latest) == {3, 7}
    assert (latest[3].decision, latest[3].final_label, latest[3].reviewer) == ("relabel", "café", "bob")
    assert (latest[7].decision, latest[7].final_label) == ("exclude", None)
    assert [d.decision for d in s.history(3)] == ["accept", "relabel"]
    assert [d.index for d in s.history()] == [3, 3, 7]
    assert s.count_reviewed() == 2
    assert s.counts() == {"accept": 0, "relabel": 1, "keep": 0, "exclude": 1}
    assert s.get(3).final_label == "café" and s.get(4) is None
    assert all(d.created_at > 1e9 for d in s.history())


def test_persisted_across_fresh_store(run):
    ReviewStore(run).record(5, "keep", CLASSES[0], "ann", session_id="browser-1")
    # a brand-new store (new connection, as after an app restart) sees it
    d = ReviewStore(run).latest()[5]
    assert (d.decision, d.final_label, d.reviewer, d.session_id) == ("keep", CLASSES[0], "ann", "browser-1")
    con = sqlite3.connect(run / "review.sqlite")
    assert con.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == 1
    con.close()


def test_wal_mode_on(run):
    ReviewStore(run).record(0, "keep", "cat", "ann")
    con = sqlite3.connect(run / "review.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    assert schema_version(run) == SCHEMA_VERSION


def test_undo_walks_back(run):
    s = ReviewStore(run)
    s.record(1, "accept", "dog", "ann")
    s.record(1, "relabel", "bird, small", "ann")
    s.record(1, "exclude", None, "ann")
    undone = s.undo(1)
    assert undone.decision == "exclude"
    assert s.latest()[1].final_label == "bird, small"
    assert s.undo(1).decision == "relabel"
    assert s.latest()[1].decision == "accept"
    assert s.undo(1).decision == "accept"
    assert 1 not in s.latest() and s.count_reviewed() == 0
    assert s.undo(1) is None  # nothing left: no row written
    hist = s.history(1)
    assert [d.decision for d in hist] == ["accept", "relabel", "exclude", "undo", "undo", "undo"]
    assert [d.undoes for d in hist[3:]] == [hist[2].id, hist[1].id, hist[0].id]
    # deciding again after undoing works as usual
    s.record(1, "keep", "cat", "ann")
    assert s.latest()[1].decision == "keep"


def test_undo_last_per_reviewer(run):
    s = ReviewStore(run)
    s.record(1, "accept", "dog", "ann")
    s.record(2, "accept", "cat", "ann")
    s.record(2, "relabel", "café", "bob")   # bob overrides ann on image 2
    s.record(3, "keep", "cat", "bob")
    d = s.undo_last("ann")
    assert (d.index, d.reviewer) == (2, "ann")
    # bob's later decision on image 2 still stands
    assert s.latest()[2].final_label == "café"
    assert s.undo_last("ann").index == 1
    assert 1 not in s.latest()
    assert s.undo_last("ann") is None
    assert s.undo_last("bob").index == 3
    assert s.undo_last("bob").index == 2
    # after bob's undo, ann's earlier decision on 2 was already undone → unreviewed
    assert s.latest() == {}


def test_record_many_one_transaction(run):
    s = ReviewStore(run)
    ids = s.record_many([(0, "accept", "dog"), (1, "accept", "cat"), (2, "exclude", None)], "ann")
    assert len(ids) == 3 and ids == sorted(ids)
    assert set(s.latest()) == {0, 1, 2}
    # one invalid item → nothing of the batch is written
    with pytest.raises(InputError, match="horse"):
        s.record_many([(3, "accept", "dog"), (4, "accept", "horse")], "ann")
    assert set(s.latest()) == {0, 1, 2}
    assert s.record_many([], "ann") == []


@pytest.mark.parametrize("args, match", [
    ((0, "approve", "cat"), "approve"),
    ((0, "relabel", "horse"), "horse"),
    ((0, "accept", None), "needs a final label"),
    ((0, "keep", ""), "needs a final label"),
    ((-1, "keep", "cat"), "-1"),
    ((60, "keep", "cat"), "out of range"),
    (("x", "keep", "cat"), "not an integer"),
])
def test_invalid_input(run, args, match):
    s = ReviewStore(run)
    with pytest.raises(InputError, match=match):
        s.record(*args, reviewer="ann")
    assert s.history() == []


def test_missing_run_dir(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        ReviewStore(tmp_path / "nope")


def test_half_written_run_dir(tmp_path):
    # a run that died before writing config.json / samples.csv: nothing to validate against,
    # but the store opens and records (decision names are still checked)
    d = tmp_path / "half"
    d.mkdir()
    (d / "status.json").write_text('{"state": "failed"}')
    s = ReviewStore(d)
    assert s.latest() == {}
    s.record(10, "relabel", "anything", "ann")
    assert s.latest()[10].final_label == "anything"
    with pytest.raises(InputError):
        s.record(10, "nonsense", "anything", "ann")


def test_older_database_opens(run):
    # version 1 layout: no schema_version table, no session_id / undoes columns
    con = sqlite3.connect(run / "review.sqlite")
    con.execute("CREATE TABLE decisions (id INTEGER PRIMARY KEY AUTOINCREMENT, sample_index INTEGER "
                "NOT NULL, decision TEXT NOT NULL, final_label TEXT, reviewer TEXT NOT NULL DEFAULT '', "
                "created_at REAL NOT NULL)")
    con.execute("INSERT INTO decisions (sample_index, decision, final_label, reviewer, created_at) "
                "VALUES (4, 'relabel', 'dog', 'old', 1.0)")
    con.commit()
    con.close()
    assert schema_version(run) == 1
    s = ReviewStore(run)
    assert s.latest()[4].final_label == "dog"
    s.record(4, "keep", "cat", "new")
    assert s.undo(4).reviewer == "new"
    assert s.latest()[4].reviewer == "old"
    assert schema_version(run) == SCHEMA_VERSION


def test_threads_lose_nothing(run):
    s = ReviewStore(run)  # one store shared by threads, like two Streamlit sessions

    def work(name):
        for i in range(50):
            s.record(i, "accept", CLASSES[i % len(CLASSES)], name)

    threads = [threading.Thread(target=work, args=(f"t{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    hist = s.history()
    assert len(hist) == 200
    assert {r: sum(d.reviewer == r for d in hist) for r in ("t0", "t1", "t2", "t3")} == dict.fromkeys(
        ("t0", "t1", "t2", "t3"), 50)


def _write_decisions(run_dir: str, reviewer: str, n: int, start) -> None:
    start.wait()
    s = ReviewStore(run_dir)
    for i in range(n):
        s.record(i % 200, DECISIONS[i % 3], CLASSES[i % len(CLASSES)], reviewer)


def test_two_processes_lose_no_update(tmp_path):
    run = make_fake_run(tmp_path / "run", n=200)
    ReviewStore(run).record(0, "keep", "cat", "setup")  # create the file before the race
    # fork where available: fast start (spawn re-imports everything in each child)
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_write_decisions, args=(str(run), f"p{k}", 200, start)) for k in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    hist = ReviewStore(run).history()
    assert len(hist) == 401
    for who in ("p0", "p1"):
        mine = [d for d in hist if d.reviewer == who]
        assert [d.index for d in mine] == list(range(200))
    assert len({d.id for d in hist}) == 401


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_store_shared_across_fork(run):
    # a store whose connection was opened before a fork: the child must open its own
    s = ReviewStore(run)
    s.record(0, "keep", "cat", "parent")
    child = mp.get_context("fork").Process(target=s.record, args=(1, "keep", "dog", "child"))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    s.record(2, "keep", "café", "parent")  # the parent's connection still works
    assert [(d.index, d.reviewer) for d in ReviewStore(run).history()] == [
        (0, "parent"), (1, "child"), (2, "parent")]


def test_deleted_database_is_recreated(run):
    s = ReviewStore(run)
    s.record(0, "keep", "cat", "ann")  # its connection stays open while the file goes
    for suffix in ("", "-wal", "-shm"):
        Path(str(run / "review.sqlite") + suffix).unlink(missing_ok=True)
    assert s.latest() == {}
    s.record(1, "keep", "dog", "ann")
    assert set(ReviewStore(run).latest()) == {1}


# --------------------------------------------------------------------------- for the pages
def test_final_label_of_each_decision():
    from turn_core.review import final_label

    assert [final_label(d, "cat", "dog", "bird") for d in ("accept", "keep", "relabel", "exclude")] == [
        "dog", "cat", "bird", None]


def test_record_decision_stores_and_reports(tmp_path):
    from turn_core.review import record_decision

    store = ReviewStore(make_fake_run(tmp_path / "r", n=10))
    done = record_decision(store, 3, "accept", given="cat", suggested="dog", reviewer="ann")
    assert done.ok and done.message == "#3: accept → dog"
    d = store.get(3)
    assert (d.decision, d.final_label, d.reviewer) == ("accept", "dog", "ann")
    bad = record_decision(store, 99, "keep", given="cat", suggested="dog")
    assert not bad.ok and bad.message.startswith("Not stored:") and "out of range" in bad.message
    no_pick = record_decision(store, 4, "relabel", given="cat", suggested="dog")
    assert not no_pick.ok and "needs a final label" in no_pick.message
    assert store.count_reviewed() == 1


def test_record_decision_reports_a_storage_error_instead_of_raising(tmp_path):
    from turn_core.review import accept_suggestions, record_decision

    run = make_fake_run(tmp_path / "r", n=10)
    store = ReviewStore(run)
    (run / "review.sqlite").mkdir()  # the database path is taken by a folder: sqlite cannot open it
    done = record_decision(store, 1, "exclude", given="cat", suggested="dog")
    assert not done.ok and done.message.startswith("Not stored:") and "review.sqlite" in done.message
    many = accept_suggestions(store, [(1, "cat"), (2, "dog")])
    assert not many.ok and many.message.startswith("Not stored:")


def test_accept_suggestions_all_or_none(tmp_path):
    from turn_core.review import accept_suggestions

    run = make_fake_run(tmp_path / "r", n=10)
    store = ReviewStore(run)
    classes = store.run.classes
    assert accept_suggestions(store, [(1, classes[0]), (2, classes[1])], "ann").message == "Accepted 2 suggestions"
    assert {i: d.final_label for i, d in store.latest().items()} == {1: classes[0], 2: classes[1]}
    bad = accept_suggestions(store, [(3, classes[0]), (4, "not a class")])
    assert not bad.ok and 3 not in store.latest()


def test_decisions_on_the_provisional_table_survive_the_final_one(tmp_path):
    """The final samples.csv replaces the provisional one during a live review: decisions are
    keyed by row, so they stay, and the store still validates against the new table."""
    from turn_core.rundir import RunWriter

    d = make_fake_run(tmp_path / "r", n=20, state="running")
    w = RunWriter(d)
    w.update_status(provisional=True)
    s = ReviewStore(d)
    s.record(3, "accept", CLASSES[1], "ann")
    s.record(5, "exclude", None, "ann")
    import csv

    with open(d / "samples.csv", newline="", encoding="utf-8") as f:
        table = list(csv.reader(f))
    col = table[0].index("suggested_label")
    table[4][col] = CLASSES[2]                               # the final scores suggest another class
    w.write_csv("samples.csv", table[0], table[1:])          # replaced whole (temp file + rename)
    w.update_status(provisional=False)
    w.set_status("finished")
    w.close()
    again = ReviewStore(d)
    latest = again.latest()
    assert (latest[3].decision, latest[3].final_label) == ("accept", CLASSES[1])
    assert latest[5].decision == "exclude"
    again.record(19, "keep", CLASSES[0], "bob")      # the new table still has 20 rows
    with pytest.raises(InputError, match="out of range"):
        again.record(20, "keep", CLASSES[0], "bob")


def _no_table(monkeypatch):
    """Make any read of the samples table fail loudly."""
    import pandas as pd

    from turn_core.rundir import Run

    def boom(*a, **k):
        raise AssertionError("the samples table was read")

    monkeypatch.setattr(Run, "samples", boom)
    monkeypatch.setattr(pd, "read_csv", boom)


def test_a_decision_never_reads_the_samples_table(run, monkeypatch):
    _no_table(monkeypatch)
    s = ReviewStore(run)
    s.record(59, "keep", CLASSES[0], "ann")                 # the count comes from config.json
    with pytest.raises(InputError, match="out of range: the run has 60 samples"):
        s.record(60, "keep", CLASSES[0], "ann")
    assert record_decision(ReviewStore(run), 3, "accept", given=CLASSES[0], suggested=CLASSES[1]).ok
    assert set(ReviewStore(run).latest()) == {3, 59}


def test_a_run_without_n_train_counts_one_column_once(run, monkeypatch):
    import json

    from turn_core.rundir import Run

    cfg = json.loads((run / "config.json").read_text())
    del cfg["dataset"]["n_train"]
    (run / "config.json").write_text(json.dumps(cfg))
    calls = []
    real = Run.samples

    def counted(self, columns=None):
        calls.append(columns)
        return real(self, columns)

    monkeypatch.setattr(Run, "samples", counted)
    s = ReviewStore(run)
    s.record(1, "keep", CLASSES[0], "ann")
    s.record(2, "keep", CLASSES[0], "ann")
    with pytest.raises(InputError, match="out of range"):
        s.record(60, "keep", CLASSES[0], "ann")
    assert calls == [["index"]]


def test_last_id_changes_with_every_decision_and_undo(run):
    s = ReviewStore(run)
    assert s.last_id() == 0 and not (run / "review.sqlite").exists()
    a = s.record(1, "keep", CLASSES[0], "ann")
    assert s.last_id() == a
    s.undo(1)
    assert s.last_id() > a


def test_opening_retries_a_locked_database_and_names_any_other_error(run, monkeypatch):
    # "database is locked" can reach connect() outside the busy handler (two threads switching a
    # new file to WAL): seen once in a loaded CI run's test_threads_lose_nothing.
    s = ReviewStore(run)
    real, calls = ReviewStore._open, []

    def flaky(self):
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return real(self)

    monkeypatch.setattr(ReviewStore, "_open", flaky)
    s.record(0, "accept", CLASSES[0], "t")
    assert len(calls) == 3 and len(s.history()) == 1
    s.close()
    monkeypatch.setattr(ReviewStore, "_open", lambda self: (_ for _ in ()).throw(sqlite3.DatabaseError("file is not a database")))
    with pytest.raises(InputError, match="cannot open review database .*review.sqlite: file is not a database"):
        ReviewStore(run).history()
