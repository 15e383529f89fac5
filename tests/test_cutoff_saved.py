"""The suspect cut-off is saved in the run folder (review.json) and is one rule everywhere:
turn_core.review's save_cutoff / saved_cutoff / suspect_rule, and the pages that read it
(AppTest: a fresh AppTest is a browser reload — a new session with empty session state)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from fakerun import make_fake_run
from streamlit.testing.v1 import AppTest

from turn_core import views
from turn_core.errors import InputError
from turn_core.review import SETTINGS_NAME, save_cutoff, saved_cutoff, suspect_rule
from turn_core.rundir import Run, RunWriter, atomic_write_json

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture
def run(tmp_path):
    return make_fake_run(tmp_path / "run", n=60)


# --------------------------------------------------------------------------- the library
def test_without_a_saved_cutoff_the_rule_is_the_flag_count(run):
    rule = suspect_rule(run)
    df = Run(run).samples()
    assert (rule.source, rule.table) == ("flag count", "final")
    assert rule.cutoff == views.default_cutoff(df)
    assert int(rule.mask(df).sum()) == int(df["flagged"].sum())
    assert "flagged" in rule.describe()


def test_saved_cutoff_is_read_back_and_described(run):
    path = save_cutoff(run, 0.7)
    assert path == run / SETTINGS_NAME
    assert saved_cutoff(run) == 0.7
    rule = suspect_rule(run)
    assert (rule.cutoff, rule.source) == (0.7, "saved")
    assert "0.700" in rule.describe() and "saved" in rule.describe()
    df = Run(run).samples()
    assert rule.mask(df).tolist() == (df["suspicion"] >= 0.7).tolist()


def test_other_settings_in_review_json_are_kept(run):
    atomic_write_json(run / SETTINGS_NAME, {"learning": {"every": 25}})
    save_cutoff(run, 0.3)
    save_cutoff(run, None)
    data = json.loads((run / SETTINGS_NAME).read_text())
    assert data["learning"] == {"every": 25} and data["cutoff"] is None
    assert suspect_rule(run).source == "flag count"


@pytest.mark.parametrize("bad", [1.5, -0.1, math.nan, math.inf, "high", [0.5]])
def test_bad_cutoff_is_refused_by_name(run, bad):
    with pytest.raises(InputError, match="cut-off"):
        save_cutoff(run, bad)
    assert not (run / SETTINGS_NAME).exists()


def test_bad_table_or_folder_is_refused(run, tmp_path):
    with pytest.raises(InputError, match="table 'draft'"):
        save_cutoff(run, 0.5, table="draft")
    with pytest.raises(InputError, match="does not exist"):
        save_cutoff(tmp_path / "nowhere", 0.5)


def test_cutoff_of_the_provisional_table_does_not_carry_to_the_final_one(run):
    w = RunWriter(run)
    w.update_status(provisional=True)
    w.close()
    assert Run(run).table == "provisional"
    save_cutoff(run, 0.9, table="provisional")
    assert suspect_rule(run).source == "saved"
    w = RunWriter(run)
    w.update_status(provisional=False)    # the final table replaced it
    w.close()
    assert saved_cutoff(run, "final") is None
    assert suspect_rule(run).source == "flag count"


@pytest.mark.parametrize("content", ["{not json", '{"cutoff": {"value": 7, "table": "final"}}',
                                     '{"cutoff": {"value": true}}', '{"cutoff": 0.5}', "[]"])
def test_unreadable_review_json_falls_back(run, content):
    (run / SETTINGS_NAME).write_text(content)
    assert suspect_rule(run).source == "flag count"


def test_a_new_run_in_the_folder_forgets_the_cutoff(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / SETTINGS_NAME).write_text('{"cutoff": {"value": 0.4, "table": "final"}}')
    w = RunWriter(d)
    w.reset()
    w.close()
    assert not (d / SETTINGS_NAME).exists()


# --------------------------------------------------------------------------- the pages
@pytest.fixture
def app_run(app_runs_root):
    return make_fake_run(app_runs_root / "fin", n=60)


def _app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90)
    at.session_state["run"] = "fin"
    return at.run()


def _no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def test_cutoff_survives_a_reload_and_drives_review_and_export(app_run):
    at = _app()
    at.switch_page("pages/losses.py").run()
    _no_exception(at)
    at.slider(key="_cutoff_w::fin").set_value(0.8).run()
    _no_exception(at)
    assert saved_cutoff(app_run) == pytest.approx(0.8)
    n = int((Run(app_run).samples()["suspicion"] >= 0.8).sum())
    assert 0 < n < int(Run(app_run).samples()["flagged"].sum())

    again = _app()                        # a reload: new session, nothing in session state
    again.switch_page("pages/losses.py").run()
    _no_exception(again)
    assert again.slider(key="_cutoff_w::fin").value == pytest.approx(0.8)
    assert next(m for m in again.metric if m.label == "Suspects at this cut-off").value == str(n)
    again.switch_page("pages/review.py").run()
    _no_exception(again)
    assert any(m.value == f"### 0 of {n} suspects reviewed" for m in again.markdown)
    again.switch_page("pages/export.py").run()
    _no_exception(again)
    assert any(f"**{n} suspects**" in m.value for m in again.markdown)
    labels = {b.label for b in again.get("download_button")}
    assert f"Download Label Studio tasks ({n} suspects)" in labels

    again.switch_page("pages/losses.py").run()
    again.button(key="cutoff_reset").click().run()
    _no_exception(again)
    assert saved_cutoff(app_run) is None
    assert again.slider(key="_cutoff_w::fin").value == pytest.approx(
        round(views.default_cutoff(Run(app_run).samples()), 4))


def test_pages_open_a_running_run_on_its_provisional_table(app_run):
    w = RunWriter(app_run)
    w.set_status("running", method="turn")
    w.update_status(provisional=True)
    w.close()
    at = _app()
    for page in ("pages/review.py", "pages/losses.py", "pages/export.py"):
        at.switch_page(page).run()
        _no_exception(at)
        assert any("Provisional suspects" in m.value for m in at.info), page
    at.switch_page("pages/training.py").run()
    _no_exception(at)
    assert any("first suspects are ready" in m.value for m in at.info)
