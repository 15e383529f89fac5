"""AppTest of every page of the workbench against synthetic run directories.

No browser here: fragments' timers never fire and downloads are not fetched (see
tests/test_browser_e2e.py for that). Each test gets its own runs root (TURN_AUDIT_RUNS) and
clean Streamlit caches.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakerun import make_fake_run
from streamlit.testing.v1 import AppTest

from turn_core.review import ReviewStore
from turn_core.rundir import atomic_write_json

APP = str(Path(__file__).resolve().parents[1] / "app.py")
PAGES = ["pages/overview.py", "pages/data_run.py", "pages/training.py", "pages/losses.py",
         "pages/clusters.py", "pages/review.py", "pages/export.py"]
TIMEOUT = 90


@pytest.fixture(autouse=True)
def clean_env(app_runs_root):
    return app_runs_root


def app(run: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if run is not None:
        at.session_state["run"] = run
    return at


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [m.value for m in at.caption] + [m.value for m in at.title]
    parts += [m.value for m in at.info] + [m.value for m in at.warning] + [m.value for m in at.error]
    parts += [m.value for m in at.success] + [m.value for m in at.subheader]
    return "\n".join(str(p) for p in parts)


def make_running(root: Path, name: str = "live") -> Path:
    d = make_fake_run(root / name, n=30, state="running")
    for f in ("samples.csv", "thumbs.npy", "features_post.npy", "metrics.json", "gmm.json"):
        (d / f).unlink()
    return d


def make_interrupted(root: Path, name: str = "dead") -> Path:
    d = make_running(root, name)
    st_ = json.loads((d / "status.json").read_text())
    st_["pid"] = 2 ** 22 + 12345  # no such process
    atomic_write_json(d / "status.json", st_)
    return d


def make_incomplete(root: Path, name: str = "half") -> Path:
    d = root / name
    d.mkdir()
    (d / "config.json").write_text("{not json")
    return d


# --------------------------------------------------------------------------- every page, every state
@pytest.mark.parametrize("state", ["none", "finished", "failed", "running", "interrupted", "incomplete"])
def test_every_page_renders(clean_env, state):
    root = clean_env
    run = None
    if state == "finished":
        run = make_fake_run(root / "fin", n=40).name
    elif state == "failed":
        run = make_fake_run(root / "bad", n=30, state="failed").name
    elif state == "running":
        run = make_running(root).name
    elif state == "interrupted":
        run = make_interrupted(root).name
    elif state == "incomplete":
        run = make_incomplete(root).name
    at = app(run).run()
    no_exception(at)
    for page in PAGES:
        at.switch_page(page).run()
        no_exception(at)
    if state == "interrupted":
        assert json.loads((root / "dead" / "status.json").read_text())["state"] == "interrupted"


def test_overview_shows_runs_and_metrics(clean_env):
    make_fake_run(clean_env / "fin", n=40)
    make_fake_run(clean_env / "bad", n=20, state="failed")
    at = app("fin").run()
    no_exception(at)
    assert at.title[0].value == "Overview"
    table = at.dataframe[0].value
    assert set(table["run"]) == {"fin", "bad"}
    labels = [m.label for m in at.metric]
    assert {"Images", "Flagged", "Test accuracy", "Detection F1", "AUROC"} <= set(labels)
    assert at.metric[0].value == "40"


def test_no_runs_points_to_data_page(clean_env):
    at = app().run()
    no_exception(at)
    assert "No runs yet" in texts(at)


def test_failed_run_shows_cause_and_log_hint(clean_env):
    make_fake_run(clean_env / "bad", n=20, state="failed")
    at = app("bad").run()
    at.switch_page("pages/training.py").run()
    no_exception(at)
    err = " ".join(e.value for e in at.error)
    assert "boom: synthetic failure" in err and "run.log" in err


def test_review_decision_persists_across_sessions_and_undo(clean_env):
    d = make_fake_run(clean_env / "fin", n=40)
    at = app("fin").run()
    at.switch_page("pages/review.py").run()
    no_exception(at)
    header = next(m.value for m in at.markdown if "suspects reviewed" in m.value)
    assert header.startswith("### 0 of ")
    m = int(header.split(" of ")[1].split()[0])
    at.session_state["reviewer"] = "ann"  # the sidebar input (AppTest drops the sidebar after switch_page)
    at.button(key="rv_accept").click().run()
    no_exception(at)
    latest = ReviewStore(d).latest()
    assert len(latest) == 1
    (idx, dec), = latest.items()
    assert dec.decision == "accept" and dec.reviewer == "ann"

    # A fresh session (new AppTest) sees the stored decision.
    fresh = app("fin").run()
    fresh.switch_page("pages/review.py").run()
    no_exception(fresh)
    assert any(m_.value == f"### 1 of {m} suspects reviewed" for m_ in fresh.markdown)

    # Keep / exclude / relabel on the next suspects, then undo the last one.
    fresh.session_state["reviewer"] = "bob"
    fresh.button(key="rv_exclude").click().run()
    assert len(ReviewStore(d).latest()) == 2
    fresh.button(key="rv_undo").click().run()
    no_exception(fresh)
    latest = ReviewStore(d).latest()
    assert len(latest) == 1 and idx in latest
    assert any(m_.value == f"### 1 of {m} suspects reviewed" for m_ in fresh.markdown)


def test_review_relabel_and_bulk_accept(clean_env):
    d = make_fake_run(clean_env / "fin", n=60)
    at = app("fin").run()
    at.switch_page("pages/review.py").run()
    sb = at.selectbox(key="rv_relabel::fin")
    target = sb.options[-1]
    sb.set_value(target).run()
    at.button(key="rv_relabel_btn").click().run()
    no_exception(at)
    (dec,) = ReviewStore(d).latest().values()
    assert dec.decision == "relabel" and dec.final_label == target
    at.button(key="rv_bulk").click().run()
    no_exception(at)
    latest = ReviewStore(d).latest()
    assert len(latest) > 1
    assert sum(1 for v in latest.values() if v.decision == "accept") == len(latest) - 1


def test_review_filters(clean_env):
    make_fake_run(clean_env / "fin", n=60)
    at = app("fin").run()
    at.switch_page("pages/review.py").run()
    pair = at.selectbox(key="rv_pair::fin")
    assert pair.options[0] == "All pairs" and len(pair.options) > 1
    pair.set_value(pair.options[1]).run()
    no_exception(at)
    at.radio(key="rv_status::fin").set_value("all").run()
    at.multiselect(key="rv_cls::fin").select("cat").run()
    no_exception(at)


def test_losses_page_cutoff_drives_review_queue(clean_env):
    make_fake_run(clean_env / "fin", n=60)
    at = app("fin").run()
    at.switch_page("pages/losses.py").run()
    no_exception(at)
    at.slider(key="_cutoff_w::fin").set_value(0.0).run()
    no_exception(at)
    suspects = next(m for m in at.metric if m.label == "Suspects at this cut-off")
    assert suspects.value == "60"
    at.switch_page("pages/review.py").run()
    no_exception(at)
    assert any(m.value == "### 0 of 60 suspects reviewed" for m in at.markdown)
    at.switch_page("pages/losses.py").run()
    at.select_slider(key="loss_epoch").set_value("after LP").run()
    at.selectbox(key="loss_class").set_value("dog").run()
    at.radio(key="loss_split").set_value("truth").run()
    no_exception(at)


def test_clusters_page_computes_and_caches(clean_env):
    d = make_fake_run(clean_env / "fin", n=40)
    at = app("fin").run()
    at.switch_page("pages/clusters.py").run()
    no_exception(at)
    assert (d / "projections").is_dir() and len(list((d / "projections").glob("*.npy"))) == 2
    at.selectbox(key="cl_colour").set_value("truth").run()
    no_exception(at)


def test_export_page(clean_env):
    data = clean_env.parent / "data"
    d = make_fake_run(clean_env / "fin", n=40, dataset_root=data)
    ReviewStore(d).record(0, "exclude", None, "ann")
    at = app("fin").run()
    at.switch_page("pages/export.py").run()
    no_exception(at)
    assert at.title[0].value == "Export"
    keys = {b.key for b in at.get("download_button")}
    assert {"dl_corrected", "dl_manifest", "dl_ls"} <= keys
    assert any(m.label == "Errors fixed" for m in at.metric)
    at.button(key="ex_write_all").click().run()
    no_exception(at)
    assert (d / "exports" / "corrected_labels.csv").exists()
    assert (d / "exports" / "label_studio_tasks.json").exists()


def test_delete_run_needs_confirmation(clean_env):
    make_fake_run(clean_env / "a", n=20)
    make_fake_run(clean_env / "b", n=20)
    at = app("a").run()
    at.selectbox(key="delete_pick").set_value("b").run()
    assert at.button(key="delete_btn").disabled
    at.checkbox(key="delete_sure").check().run()
    at.button(key="delete_btn").click().run()
    no_exception(at)
    assert not (clean_env / "b").exists() and (clean_env / "a").exists()


def test_run_query_param_selects_run(clean_env):
    make_fake_run(clean_env / "a", n=20)
    make_fake_run(clean_env / "b", n=20)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["run"] = "a"
    at.run()
    no_exception(at)
    assert at.session_state["run"] == "a"


def test_delete_refuses_the_training_run(clean_env):
    make_fake_run(clean_env / "a", n=20)
    at = app("a").run()

    class Busy:  # the registry's current job says run "a" is training
        def snapshot(self):
            return {"state": "running", "run_dir": str(clean_env / "a")}

    from pages import _shared

    reg = _shared.registry()
    reg._job = Busy()
    try:
        at.checkbox(key="delete_sure").check().run()
        at.button(key="delete_btn").click().run()
        no_exception(at)
        assert (clean_env / "a").exists()
        assert any("training right now" in e.value for e in at.error)
    finally:
        reg._job = None


def test_start_from_export_page_lists_the_new_run_at_once(clean_env, monkeypatch):
    data = clean_env.parent / "data"
    make_fake_run(clean_env / "fin", n=30, dataset_root=data)
    import threading

    from pages import _shared

    gate = threading.Event()

    def runner(config, progress=None, cancel=None):
        gate.wait(10)
        return config.out

    reg = _shared.registry()
    reg._runner = runner
    try:
        at = app("fin").run()
        at.switch_page("pages/export.py").run()
        at.button(key="ex_rerun").click().run()
        no_exception(at)
        job = reg.current()
        assert job is not None and job.run_dir.name.endswith("-cleaned")
        assert json.loads((job.run_dir / "status.json").read_text())["state"] == "running"
        assert (data / "cleaned-fin.csv").is_file()
    finally:
        gate.set()
        reg.wait(10)


# --------------------------------------------------------------------------- pages at scale
def _no_table_reads(monkeypatch):
    """Fail any read of the samples table (whole or by column) from here on."""
    import pandas as pd

    from turn_core.rundir import Run

    def boom(*a, **k):
        raise AssertionError("the samples table was read")

    monkeypatch.setattr(Run, "samples", boom)
    monkeypatch.setattr(pd, "read_csv", boom)
    monkeypatch.setattr(pd, "read_parquet", boom)


def test_a_review_decision_reads_no_table(clean_env, monkeypatch):
    d = make_fake_run(clean_env / "fin", n=40)
    at = app("fin").run()
    at.switch_page("pages/review.py").run()
    no_exception(at)
    _no_table_reads(monkeypatch)          # the page is open: deciding and rerunning read nothing
    at.button(key="rv_accept").click().run()
    no_exception(at)
    at.button(key="rv_keep").click().run()
    no_exception(at)
    assert ReviewStore(d).count_reviewed() == 2
    assert any(m.value.startswith("### 2 of ") for m in at.markdown)


def test_queue_order_is_cached_per_cutoff_and_equals_the_uncached_order(clean_env, monkeypatch):
    from pages import _shared
    from turn_core import views
    from turn_core.rundir import Run

    run = Run(make_fake_run(clean_env / "fin", n=80))
    df = _shared.columns(run, ["suspicion", "flagged", "given_label", "suggested_label"])
    calls = []
    real = views.suspect_order
    monkeypatch.setattr(views, "suspect_order", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    first = _shared.queue_order(run, df, 0.5)
    assert _shared.queue_order(run, df, 0.5) is first and calls == [0.5]     # cached
    full = run.samples()
    uncached = views.review_queue(full, cutoff=0.5)["index"].tolist()
    assert df["index"].to_numpy()[first].tolist() == uncached
    lower = _shared.queue_order(run, df, 0.2)                                # a new cut-off: recomputed
    assert calls == [0.5, 0.2] and len(lower) > len(first)
    assert df["index"].to_numpy()[lower].tolist() == views.review_queue(full, cutoff=0.2)["index"].tolist()


def test_overview_with_a_thousand_classes_shows_pairs_not_a_grid(clean_env):
    classes = [f"class {i:04d}" for i in range(1000)]
    make_fake_run(clean_env / "big", n=3000, classes=classes)
    at = app("big").run()
    no_exception(at)
    frames = [f.value for f in at.dataframe]
    assert all(f.shape[1] <= 10 and len(f) <= 50 for f in frames[1:])   # frames[0]: the runs table
    pairs = next(f for f in frames if "suggested_label" in f.columns)
    assert pairs["count"].is_monotonic_decreasing
    at.text_input(key="ov_pair_find").input("class 0042").run()
    no_exception(at)
    pairs = next(f.value for f in at.dataframe if "suggested_label" in f.value.columns)
    assert len(pairs) > 0 and ((pairs["given_label"] == "class 0042") | (pairs["suggested_label"] == "class 0042")).all()
    at.text_input(key="ov_class_find").input("class 0999").run()
    noise = next(f.value for f in at.dataframe if "estimated_noise_rate" in f.value.columns)
    assert noise["class"].tolist() == ["class 0999"]


def test_training_page_reads_only_appended_events(clean_env, monkeypatch):
    from pages import _state as keys
    from turn_core.rundir import Run

    d = make_running(clean_env)
    at = app("live").run()
    at.switch_page("pages/training.py").run()
    no_exception(at)
    tail = at.session_state[keys.event_tail(str(d))]
    size = (d / "events.jsonl").stat().st_size
    assert tail.offset == size and len(tail.events) == len(Run(d).events())
    monkeypatch.setattr(Run, "events", lambda self: (_ for _ in ()).throw(AssertionError("whole log parsed")))
    with open(d / "events.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"t": 1.0, "phase": "fft", "kind": "epoch", "epoch": 2, "epochs": 2, "loss": 0.1})
                + "\n" + '{"t": 2.0, "phase": "ff')                  # a line still being written
    at.run()
    no_exception(at)
    tail = at.session_state[keys.event_tail(str(d))]
    assert tail.events[-1]["loss"] == 0.1 and tail.offset < (d / "events.jsonl").stat().st_size


def test_export_page_writes_no_file_per_rerun_and_follows_a_decision(clean_env):
    from turn_core import export as ex

    d = make_fake_run(clean_env / "fin", n=40)
    at = app("fin").run()
    at.switch_page("pages/export.py").run()
    no_exception(at)
    assert not (d / ex.DOWNLOADS).exists()            # downloads are written when clicked, not drawn
    at.toggle(key="ex_changed").set_value(False).run()
    no_exception(at)
    assert not (d / ex.DOWNLOADS).exists()
    shown = at.dataframe[0].value
    assert (shown["decision"] == "unreviewed").all() and len(shown) == 40
    ReviewStore(d).record(0, "exclude", None, "ann")
    at.run()
    no_exception(at)
    shown = at.dataframe[0].value
    assert shown.loc[0, "decision"] == "exclude" and shown.loc[0, "final_label"] == ""
    assert not (d / ex.DOWNLOADS).exists()


def test_review_and_export_pages_read_the_parquet_table(clean_env, monkeypatch):
    """A run whose table is samples.parquet: once it exists (written by the run, or converted on
    the first open of an older CSV-only run), Review and Export never parse samples.csv."""
    import pandas as pd

    from turn_core.rundir import Run

    d = make_fake_run(clean_env / "pq", n=40)
    assert Run(d).samples(columns=["index"]) is not None and (d / "samples.parquet").exists()

    def no_csv(*a, **k):
        raise AssertionError("samples.csv was parsed")

    monkeypatch.setattr(pd, "read_csv", no_csv)
    at = app("pq").run()
    at.switch_page("pages/review.py").run()
    no_exception(at)
    at.button(key="rv_accept").click().run()
    no_exception(at)
    at.switch_page("pages/export.py").run()
    no_exception(at)
    assert ReviewStore(d).count_reviewed() == 1
