"""turn_core.export: corrected labels, cleaned manifest, Label Studio tasks; atomic writes."""
from __future__ import annotations

import csv
import io
import json
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fakerun import CLASSES, make_fake_run

from turn_core import export, views
from turn_core.errors import InputError
from turn_core.review import ReviewStore, save_cutoff, suspect_rule
from turn_core.rundir import Run


def _read_csv(path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _samples(run) -> list[dict]:
    return _read_csv(Path(run) / "samples.csv")


def _rewrite_samples(run, edit) -> None:
    rows = _samples(run)
    header = list(rows[0])
    rows, header = edit(rows, header)
    buf = io.StringIO()
    w = csv.DictWriter(buf, header, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    (Path(run) / "samples.csv").write_text(buf.getvalue(), encoding="utf-8")


@pytest.fixture
def run(tmp_path):
    return make_fake_run(tmp_path / "run", n=60, dataset_root=tmp_path / "data")


def _decide(run) -> dict[int, tuple[str, str | None]]:
    """A few decisions on the fake run; returns {index: (decision, expected final label)}."""
    rows = _samples(run)
    flagged = [int(r["index"]) for r in rows if r["flagged"] == "1"]
    plain = [int(r["index"]) for r in rows if r["flagged"] == "0"]
    a, b, c = flagged[:3]
    d, e = plain[:2]
    other = next(k for k in CLASSES if k not in (rows[b]["given_label"],))
    s = ReviewStore(run)
    s.record(a, "accept", rows[a]["suggested_label"], "ann")
    s.record(b, "relabel", other, "ann")
    s.record(c, "exclude", None, "ann")
    s.record(d, "keep", rows[d]["given_label"], "ann")
    s.record(e, "relabel", rows[e]["given_label"], "bob")  # relabel to the same class
    return {a: ("accept", rows[a]["suggested_label"]), b: ("relabel", other), c: ("exclude", ""),
            d: ("keep", rows[d]["given_label"]), e: ("relabel", rows[e]["given_label"])}


# --------------------------------------------------------------------------- corrected labels
def test_corrected_csv_cell_by_cell(run, tmp_path):
    decided = _decide(run)
    out = export.write_corrected_csv(run, tmp_path / "out" / "corrected.csv")
    with open(out, encoding="utf-8", newline="") as f:
        header = next(csv.reader(f))
    assert header == ["path", "given_label", "suggested_label", "final_label", "decision",
                      "suspicion", "is_label_issue"]
    got = _read_csv(out)
    samples = _samples(run)
    cutoff = suspect_rule(run).cutoff
    assert len(got) == len(samples) == 60
    for s, g in zip(samples, got):
        i = int(s["index"])
        assert g["path"] == s["path"]
        assert g["given_label"] == s["given_label"]
        assert g["suggested_label"] == s["suggested_label"]
        assert float(g["suspicion"]) == float(s["suspicion"])
        if i in decided:
            decision, final = decided[i]
            assert (g["decision"], g["final_label"]) == (decision, final), i
            expect_issue = decision == "exclude" or final != s["given_label"]
            assert g["is_label_issue"] == str(int(expect_issue)), i
        else:
            assert g["decision"] == "unreviewed"
            assert g["final_label"] == s["given_label"]
            assert g["is_label_issue"] == str(int(float(s["suspicion"]) >= cutoff))
    # the relabel-to-other row is an issue, the keep row is not
    by_decision = {g["decision"]: g for g in got}
    assert by_decision["keep"]["is_label_issue"] == "0"
    assert by_decision["exclude"]["is_label_issue"] == "1"


def test_corrected_labels_dataframe(run):
    decided = _decide(run)
    df = export.corrected_labels(run)
    assert list(df.columns) == export.CORRECTED_COLUMNS
    assert df["is_label_issue"].dtype.kind == "i" and df["suspicion"].dtype.kind == "f"
    assert (df["decision"] != "unreviewed").sum() == len(decided)


def test_undo_shows_in_export(run, tmp_path):
    idx = 0
    given = _samples(run)[0]["given_label"]
    other = next(c for c in CLASSES if c != given)
    s = ReviewStore(run)
    s.record(idx, "relabel", other, "ann")
    assert export.corrected_labels(run).loc[0, "final_label"] == other
    s.undo(idx)
    row = export.corrected_labels(run).loc[0]
    assert (row["decision"], row["final_label"]) == ("unreviewed", given)


def test_formula_injection_escaped(tmp_path):
    classes = ["=1+1", "@x", "-5", "+cmd", "plain"]
    run = make_fake_run(tmp_path / "run", n=40, classes=classes)
    _rewrite_samples(run, lambda rows, h: ([dict(r, suspicion="-0.25") if i == 0 else r
                                            for i, r in enumerate(rows)], h))
    out = export.write_corrected_csv(run, tmp_path / "c.csv")
    rows = _read_csv(out)
    for r in rows:
        for col in ("given_label", "suggested_label", "final_label"):
            v = r[col]
            assert v.startswith("'") or v == "plain", (col, v)
            assert v in ("plain", "'=1+1", "'@x", "'-5", "'+cmd")
    assert rows[0]["suspicion"] == "-0.25"          # numbers stay numbers
    assert all(r["is_label_issue"] in ("0", "1") for r in rows)
    raw = export.write_corrected_csv(run, tmp_path / "raw.csv", spreadsheet_safe=False)
    assert {r["given_label"] for r in _read_csv(raw)} <= set(classes)
    # the per-class table is for people too
    changes = _read_csv(export.export_all(run, tmp_path / "all")["changes"])
    assert {r["class"] for r in changes} == {"'=1+1", "'@x", "'-5", "'+cmd", "plain"}


def test_missing_samples_is_input_error(tmp_path):
    d = tmp_path / "half"
    d.mkdir()
    (d / "status.json").write_text('{"state": "running", "pid": 1}')
    with pytest.raises(InputError, match="no samples.csv"):
        export.corrected_labels(d)
    with pytest.raises(InputError, match="does not exist"):
        export.corrected_labels(tmp_path / "nope")


# --------------------------------------------------------------------------- clean manifest
def test_clean_manifest_round_trips(run, tmp_path):
    decided = _decide(run)
    out = export.write_clean_manifest(run)
    assert out == tmp_path / "data" / "cleaned-run.csv"
    rows = _read_csv(out)
    samples = _samples(run)
    kept = [s for s in samples if decided.get(int(s["index"]), ("", ""))[0] != "exclude"]
    assert len(rows) == len(kept) == 59
    assert list(rows[0]) == ["path", "label", "true_label"]
    for s, r in zip(kept, rows):
        i = int(s["index"])
        expect = decided[i][1] if i in decided else s["given_label"]
        assert (r["path"], r["label"], r["true_label"]) == (s["path"], expect, s["true_label"])
    # labels with commas, quotes and accents: verbatim, never spreadsheet-escaped
    text = out.read_text(encoding="utf-8")
    assert '"bird, small"' in text and '"say ""hi"""' in text and "café" in text
    assert "'" not in text
    # and every path points at a real file next to the CSV
    assert all((out.parent / r["path"]).is_file() for r in rows)


def test_clean_manifest_loads_with_load_dataset(run):
    try:
        from turn_core.data import load_dataset
    except ImportError:
        pytest.skip("turn_core.data.load_dataset not available yet")
    decided = _decide(run)
    out = export.write_clean_manifest(run)
    ds = load_dataset(out)
    expected = export.clean_manifest(run)
    assert ds.paths == expected["path"].tolist()
    assert [ds.classes[k] for k in ds.labels] == expected["label"].tolist()
    # turn_core.data reads the manifest's true_label column into Dataset.true_labels (versions
    # before the rename had clean_labels and read only a clean_label column: nothing to check)
    if hasattr(ds, "true_labels"):
        assert [ds.classes[k] for k in ds.true_labels] == expected["true_label"].tolist()
    assert len(ds) == 60 - sum(d == "exclude" for d, _ in decided.values())


def test_clean_manifest_without_truth_and_other_folder(tmp_path):
    run = make_fake_run(tmp_path / "run", n=30, dataset_root=tmp_path / "top" / "data")
    _rewrite_samples(run, lambda rows, h: (rows, [c for c in h if c not in ("true_label", "is_noisy")]))
    assert list(export.clean_manifest(run).columns) == ["path", "label"]
    assert export.review_outcome(run) is None
    # a folder above the dataset root: paths get the sub-folder prefix
    out = export.write_clean_manifest(run, tmp_path / "top" / "m.csv")
    rows = _read_csv(out)
    assert rows[0]["path"] == "data/img/0000.png"
    assert all((out.parent / r["path"]).is_file() for r in rows)
    # a folder beside it would need "../" paths, which manifests cannot hold
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(InputError, match="above"):
        export.write_clean_manifest(run, tmp_path / "elsewhere" / "m.csv")
    assert export.clean_manifest_csv(run).splitlines()[0] == "path,label"


def test_clean_manifest_bad_root(tmp_path):
    demo_like = make_fake_run(tmp_path / "run", n=20)  # dataset root unknown ("")
    with pytest.raises(InputError, match="choose where"):
        export.write_clean_manifest(demo_like)
    gone = make_fake_run(tmp_path / "run2", n=20, dataset_root=tmp_path / "data")
    for p in sorted((tmp_path / "data").rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    (tmp_path / "data").rmdir()
    with pytest.raises(InputError, match="does not exist"):
        export.write_clean_manifest(gone)


def test_clean_manifest_read_only_root(run, tmp_path, monkeypatch):
    # os.access stands in for chmod: the tests may run as root, who may write anywhere
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path / "data"
                        else real_access(p, mode))
    with pytest.raises(InputError, match="not writable"):
        export.write_clean_manifest(run)
    assert not (tmp_path / "data" / "cleaned-run.csv").exists()


# --------------------------------------------------------------------------- atomicity
def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("broken", ["replace", "fsync"])
def test_failed_export_leaves_previous_file(run, tmp_path, monkeypatch, broken):
    out = tmp_path / "exp" / "corrected.csv"
    export.write_corrected_csv(run, out)
    before = out.read_bytes()
    ReviewStore(run).record(0, "exclude", None, "ann")  # the next export would differ

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, broken, boom)
    with pytest.raises(OSError, match="disk full"):
        export.write_corrected_csv(run, out)
    monkeypatch.undo()
    assert out.read_bytes() == before
    assert _no_temp_files(out.parent)
    # with the disk back, the export goes through
    export.write_corrected_csv(run, out)
    assert out.read_bytes() != before


def test_failed_manifest_leaves_previous_file(run, tmp_path, monkeypatch):
    out = export.write_clean_manifest(run)
    before = out.read_bytes()
    ReviewStore(run).record(1, "exclude", None, "ann")
    monkeypatch.setattr(os, "replace", lambda *a, **k: (_ for _ in ()).throw(OSError("no space")))
    with pytest.raises(OSError):
        export.write_clean_manifest(run)
    monkeypatch.undo()
    assert out.read_bytes() == before
    assert _no_temp_files(out.parent)


def test_failure_while_building_writes_nothing(run, tmp_path, monkeypatch):
    out = tmp_path / "x.json"
    export.write_label_studio_json(run, out)
    before = out.read_bytes()

    real = export.iter_label_studio_tasks

    def broken(*a, **k):  # fails after the first task was streamed to the temporary file
        yield next(real(*a, **k))
        raise RuntimeError("bug")

    monkeypatch.setattr(export, "iter_label_studio_tasks", broken)
    with pytest.raises(RuntimeError):
        export.write_label_studio_json(run, out)
    assert out.read_bytes() == before
    assert _no_temp_files(out.parent)


# --------------------------------------------------------------------------- Label Studio
def test_label_studio_json_structure(run, tmp_path):
    out = export.write_label_studio_json(run, tmp_path / "ls.json", image_url_prefix="/data/local-files/?d=pets/")
    tasks = json.loads(out.read_text(encoding="utf-8"))
    samples = _samples(run)
    cutoff = suspect_rule(run).cutoff
    suspects = [s for s in samples if float(s["suspicion"]) >= cutoff]
    assert len(tasks) == len(suspects) > 0
    scores = [t["predictions"][0]["score"] for t in tasks]
    assert scores == sorted(scores, reverse=True)
    by_index = {int(s["index"]): s for s in samples}
    for t in tasks:
        s = by_index[t["data"]["index"]]
        assert float(s["suspicion"]) >= cutoff
        assert t["data"]["image"] == "/data/local-files/?d=pets/" + s["path"]
        assert t["data"]["given_label"] == s["given_label"]
        (pred,) = t["predictions"]
        assert pred["model_version"] == "turn-audit"
        assert pred["score"] == pytest.approx(float(s["suspicion"]))
        assert pred["result"] == [{"from_name": "label", "to_name": "image", "type": "choices",
                                   "value": {"choices": [s["suggested_label"]]}}]
    assert len(export.label_studio_tasks(run, only_suspects=False)) == 60


# --------------------------------------------------------------------------- one suspect set
def _unflag_the_top(run) -> None:
    """Make the run's flags differ from its top suspects: the 3 most suspicious lose their flag,
    3 unflagged ones gain it (the flag count stays, so the flag-count cut-off does not move)."""
    order = sorted(_samples(run), key=lambda r: -float(r["suspicion"]))
    top = {r["index"] for r in order[:3]}
    low = {r["index"] for r in order[-3:]}
    _rewrite_samples(run, lambda rows, h: ([dict(r, flagged="0" if r["index"] in top else
                                                 "1" if r["index"] in low else r["flagged"]) for r in rows], h))


def test_suspects_follow_suspicion_not_the_flag_column(run):
    _unflag_the_top(run)
    df = export.corrected_labels(run)
    susp = df["suspicion"].to_numpy()
    rule = suspect_rule(run)
    assert rule.source == "flag count"
    assert df["is_label_issue"].tolist() == [int(v >= rule.cutoff) for v in susp]
    # the 3 most suspicious (unflagged now) are suspects; the 3 least (flagged now) are not
    order = susp.argsort()
    assert df["is_label_issue"].to_numpy()[order[-3:]].tolist() == [1, 1, 1]
    assert df["is_label_issue"].to_numpy()[order[:3]].tolist() == [0, 0, 0]


def test_export_uses_the_saved_cutoff_and_matches_the_review_queue(run):
    _unflag_the_top(run)
    save_cutoff(run, 0.8)
    rule = suspect_rule(run)
    assert (rule.source, rule.cutoff) == ("saved", 0.8)
    s = ReviewStore(run)
    first = int(_samples(run)[0]["index"])
    s.record(first, "keep", _samples(run)[0]["given_label"], "ann")

    df = export.corrected_labels(run)
    frame = Run(run).samples()
    queue = views.review_queue(frame, cutoff=rule.cutoff, decisions=s.latest())
    tasks = export.label_studio_tasks(run)
    assert [t["data"]["index"] for t in tasks] == queue["index"].tolist()   # same set, same order
    assert 0 < len(tasks) < int((frame["suspicion"] >= 0.5).sum())
    unreviewed = df["decision"] == "unreviewed"
    in_queue = frame["index"].isin(queue["index"])
    assert (df.loc[unreviewed, "is_label_issue"] == in_queue[unreviewed].astype(int)).all()
    # back to the run's flag count
    save_cutoff(run, None)
    assert suspect_rule(run).source == "flag count"
    assert len(export.label_studio_tasks(run)) == int(frame["flagged"].sum())


def test_an_accept_keeps_the_label_it_accepted_when_the_table_changes(run):
    row = _samples(run)[0]
    accepted = row["suggested_label"]
    ReviewStore(run).record(0, "accept", accepted, "ann")
    other = next(c for c in CLASSES if c not in (accepted, row["given_label"]))
    # the final table replaces the provisional one and suggests another class for image 0
    _rewrite_samples(run, lambda rows, h: ([dict(r, suggested_label=other) if r["index"] == "0" else r
                                            for r in rows], h))
    got = export.corrected_labels(run).loc[0]
    assert (got["decision"], got["final_label"], got["suggested_label"]) == ("accept", accepted, other)


def test_label_studio_quotes_paths(tmp_path):
    run = make_fake_run(tmp_path / "run", n=10)
    _rewrite_samples(run, lambda rows, h: ([dict(r, path=f"my pics/#{r['index']}.png", flagged="1")
                                            for r in rows], h))
    t = export.label_studio_tasks(run)[0]
    assert t["data"]["image"].startswith("/data/local-files/?d=my%20pics/%23")
    assert t["data"]["path"].startswith("my pics/#")


def test_label_studio_config_matches_classes():
    xml = export.label_studio_config(CLASSES)
    root = ET.fromstring(xml)
    choices = root.find("Choices")
    assert choices.get("name") == "label" and choices.get("toName") == "image"
    assert [c.get("value") for c in choices.findall("Choice")] == CLASSES
    assert root.find("Image").get("name") == "image"


# --------------------------------------------------------------------------- summaries
def test_changes_per_class_and_outcome(run):
    decided = _decide(run)
    samples = _samples(run)
    ch = export.changes_per_class(run)
    assert list(ch.columns) == export.CHANGES_COLUMNS
    assert ch["class"].tolist() == CLASSES
    assert ch["n_images"].sum() == 60
    assert ch["n_excluded"].sum() == 1
    changed = [(samples[i]["given_label"], final) for i, (d, final) in decided.items()
               if d != "exclude" and final != samples[i]["given_label"]]
    assert ch["n_changed_to_other"].sum() == ch["n_changed_from_other"].sum() == len(changed)
    for given, final in changed:
        assert ch.set_index("class").loc[given, "n_changed_to_other"] >= 1
        assert ch.set_index("class").loc[final, "n_changed_from_other"] >= 1

    out = export.review_outcome(run)
    truth = {int(s["index"]): s["true_label"] for s in samples}
    given = {int(s["index"]): s["given_label"] for s in samples}
    final = {i: decided[i][1] if i in decided else given[i] for i in truth}
    kept = [i for i in truth if decided.get(i, ("",))[0] != "exclude"]
    assert out["n_reviewed"] == 5
    assert out["errors_before"] == sum(given[i] != truth[i] for i in truth)
    assert out["errors_fixed"] == sum(given[i] != truth[i] and final[i] == truth[i] for i in kept)
    assert out["errors_introduced"] == sum(given[i] == truth[i] and final[i] != truth[i] for i in kept)
    assert out["errors_remaining"] == sum(final[i] != truth[i] for i in kept)
    assert out["errors_excluded"] + out["clean_excluded"] == 1


def test_export_all(run):
    _decide(run)
    paths = export.export_all(run)
    assert set(paths) == {"corrected", "label_studio", "label_studio_config", "changes", "outcome"}
    for p in paths.values():
        assert p.parent == run / "exports" and p.is_file() and p.stat().st_size > 0
    assert json.loads(paths["outcome"].read_text())["n_reviewed"] == 5
    assert _no_temp_files(run / "exports")


def test_review_outcome_reads_runs_from_before_the_true_label_rename(run):
    _decide(run)
    new = export.review_outcome(run)
    _rewrite_samples(run, lambda rows, h: ([{("clean_label" if k == "true_label" else k): v for k, v in r.items()}
                                           for r in rows],
                                          ["clean_label" if c == "true_label" else c for c in h]))
    assert "clean_label" in _read_csv(run / "samples.csv")[0]
    assert export.review_outcome(run) == new and new["errors_before"] > 0


def test_cleaned_run_config(run, tmp_path):
    _decide(run)
    cfg = export.cleaned_run_config(run, tmp_path / "runs", when=0)
    from turn_core.rundir import new_run_name

    original = json.loads((run / "config.json").read_text())["settings"]
    manifest = tmp_path / "data" / "cleaned-run.csv"
    assert cfg.data == str(manifest) and manifest.is_file()
    assert cfg.out == str(tmp_path / "runs" / new_run_name(cfg.method, original["data"], suffix="cleaned", when=0))
    assert cfg.out.endswith("-data-cleaned") and cfg.inject_noise is None and cfg.inject_noise_rate == 0.0
    assert (cfg.fft_epochs, cfg.tau, cfg.seed) == (original["fft_epochs"], original["tau"], original["seed"])
    cfg.validate()


def test_cleaned_run_config_refuses_a_run_without_dataset_folder(tmp_path):
    bare = make_fake_run(tmp_path / "bare", n=20)  # no dataset_root recorded
    with pytest.raises(InputError, match="dataset folder"):
        export.cleaned_run_config(bare, tmp_path / "runs")


# --------------------------------------------------------------------------- streaming
def _whole_csv(df, spreadsheet_safe: bool) -> bytes:
    """The CSV as one string, the way exports were written before they streamed."""
    from turn_core.rundir import csv_text
    from turn_core.safety import spreadsheet_safe as safe

    cols = [df[c].tolist() for c in df.columns]
    header = [str(c) for c in df.columns]
    if spreadsheet_safe:
        header, cols = [safe(h) for h in header], [[safe(v) for v in col] for col in cols]
    return csv_text(header, zip(*cols)).encode("utf-8")


def test_streamed_exports_equal_the_whole_table_written_at_once(tmp_path):
    classes = [*CLASSES, "=SUM(A1)", "a\r\nb"]
    run = make_fake_run(tmp_path / "run", n=53, classes=classes, dataset_root=tmp_path / "data")
    s = ReviewStore(run)
    s.record_many([(3, "relabel", "=SUM(A1)"), (4, "relabel", "a\r\nb"), (5, "exclude", None),
                   (6, "accept", classes[0])], "ann")
    corrected = export.corrected_labels(run)
    out = export.write_corrected_csv(run, tmp_path / "c.csv", chunk_rows=7)   # 8 chunks, the last short
    assert out.read_bytes() == _whole_csv(corrected, True)
    assert export.write_corrected_csv(run, tmp_path / "c1.csv", chunk_rows=1).read_bytes() == out.read_bytes()
    m = export.write_clean_manifest(run, tmp_path / "data" / "m.csv", chunk_rows=4)
    assert m.read_bytes() == _whole_csv(export.clean_manifest(run), False)
    assert export.clean_manifest_csv(run).encode("utf-8") == m.read_bytes()
    ls = export.write_label_studio_json(run, tmp_path / "t.json", only_suspects=False)
    tasks = export.label_studio_tasks(run, only_suspects=False)
    assert ls.read_text(encoding="utf-8") == json.dumps(tasks, ensure_ascii=False, indent=2) + "\n"
    save_cutoff(run, 1.0)                                   # no suspect left: an empty list
    none = export.write_label_studio_json(run, tmp_path / "t0.json")
    assert none.read_text(encoding="utf-8") == "[]\n" and json.loads(none.read_text()) == []


def test_exports_read_only_the_columns_they_need(run, monkeypatch):
    asked = []
    real = Run.samples

    def spy(self, columns=None):
        asked.append(columns)
        return real(self, columns)

    monkeypatch.setattr(Run, "samples", spy)
    export.export_all(run)
    export.write_clean_manifest(run)
    assert asked and None not in asked
    assert all(set(c) <= {"index", "true_label", *export._NEEDED} for c in asked)


def test_downloads_are_written_once_per_change_of_the_decisions(run, monkeypatch):
    paths = export.write_downloads(run)
    assert set(paths) == {"corrected", "manifest", "label_studio"}
    assert paths["corrected"].read_bytes() == export.write_corrected_csv(run, run / "x.csv").read_bytes()
    stamps = {k: p.stat().st_mtime_ns for k, p in paths.items()}
    calls = []
    real = export.corrected_labels
    monkeypatch.setattr(export, "corrected_labels", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert export.write_downloads(run) == paths and calls == []          # unchanged: nothing done
    assert {k: p.stat().st_mtime_ns for k, p in paths.items()} == stamps
    ReviewStore(run).record(0, "exclude", None, "ann")                   # a decision: written again
    export.write_downloads(run)
    assert calls == [1]
    assert next(csv.DictReader(io.StringIO(paths["corrected"].read_text(encoding="utf-8"))))["decision"] == "exclude"
    save_cutoff(run, 0.99)                                               # another cut-off: again
    export.write_downloads(run)
    assert len(calls) == 2
    assert json.loads(paths["label_studio"].read_text()) == export.label_studio_tasks(run)


def test_download_file_writes_one_file_per_key(run, monkeypatch):
    path = export.download_file(run, "label_studio")
    assert path.name == export.DOWNLOAD_FILES["label_studio"]
    assert not (path.parent / export.DOWNLOAD_FILES["corrected"]).exists()   # only the one asked for
    stamp = path.stat().st_mtime_ns
    monkeypatch.setattr(export, "write_label_studio_json", lambda *a, **k: pytest.fail("rewritten"))
    assert export.download_file(run, "label_studio") == path and path.stat().st_mtime_ns == stamp
    monkeypatch.undo()
    ReviewStore(run).undo_last("nobody")              # nothing to undo: no new row, same key
    assert export.download_file(run, "label_studio").stat().st_mtime_ns == stamp
    with pytest.raises(InputError, match="not one of"):
        export.download_file(run, "everything")


def test_download_file_copies_to_the_exports_folder_without_failing_the_download(run, tmp_path, caplog):
    dest = tmp_path / "exports" / "corrected_labels.csv"
    path = export.download_file(run, "corrected", copy_to=dest)
    assert dest.read_bytes() == path.read_bytes()
    ReviewStore(run).record(0, "exclude", None, "ann")    # a new decision: a new file, a new copy
    path = export.download_file(run, "corrected", copy_to=dest)
    assert dest.read_bytes() == path.read_bytes()
    assert next(csv.DictReader(io.StringIO(dest.read_text(encoding="utf-8"))))["decision"] == "exclude"
    blocked = tmp_path / "a-folder"
    blocked.mkdir()
    with caplog.at_level("WARNING", logger="turn_core"):
        assert export.download_file(run, "corrected", copy_to=blocked).read_bytes() == path.read_bytes()
    assert "could not write a copy" in caplog.text and blocked.is_dir()
