"""AppTest of the Data & run page: settings generated from RunConfig's metadata, the source
choice, the run name, and Start (with the job registry's start replaced, so nothing trains)."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from turn_core import jobs
from turn_core.config import SETTINGS, RunConfig

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TIMEOUT = 90
OWN = ("data", "test_data", "out", "model", "weights", "checkpoint")   # asked for by the page itself


@pytest.fixture(autouse=True)
def clean_env(app_runs_root):
    return app_runs_root


@pytest.fixture
def started(monkeypatch):
    """Replace JobRegistry.start: record the config instead of training."""
    got: list[RunConfig] = []

    def fake_start(self, config):
        got.append(config)

    monkeypatch.setattr(jobs.JobRegistry, "start", fake_start)
    return got


def page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page("pages/data_run.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def widgets(at: AppTest) -> dict:
    out = {}
    for kind in ("number_input", "selectbox", "checkbox", "text_input", "slider"):
        for w in at.get(kind):
            out[w.label] = w
    return out


def test_data_page_defaults_from_env(clean_env, monkeypatch):
    monkeypatch.setenv("TURN_AUDIT_DEFAULTS", json.dumps({"lp_epochs": 3, "fft_epochs": 1, "demo_n": 300}))
    at = page()
    nums = {n.label: n.value for n in at.number_input}
    assert nums["LP epochs (E_LP)"] == 3 and nums["FFT epochs (E_FFT)"] == 1
    assert nums["Training images"] == 300


def test_data_page_server_path_outside_roots_refused(clean_env):
    at = page()
    at.radio(key="src_kind").set_value("server").run()
    at.text_input(key="server_path").input("/etc").run()
    assert not at.exception
    assert any("outside" in e.value for e in at.error)
    assert at.button(key="start_run").disabled


def test_every_setting_has_a_widget_with_its_help(clean_env):
    at = page()
    shown = widgets(at)
    for s in SETTINGS.values():
        if s.name in OWN:
            continue
        w = shown.get(s.label)
        assert w is not None, f"no widget for {s.name} ({s.label})"
        assert w.help == s.help, s.name
    from turn_core.scores import FLAG_RULES

    assert shown["Flag rule"].options == list(FLAG_RULES)
    assert {"paper", "ensemble", "confident-learning", "top-k-cl"} <= set(FLAG_RULES)
    assert shown["Method"].options == ["turn", "ce-lp", "gce-lp", "ce-fft"]


def test_lp_only_method_disables_the_fine_tuning_settings(clean_env):
    at = page()
    assert not widgets(at)["FFT epochs (E_FFT)"].disabled
    at.selectbox(key="set_method").set_value("gce-lp").run()
    shown = widgets(at)
    assert shown["FFT epochs (E_FFT)"].disabled and shown["Batch norm"].disabled
    assert not shown["LP epochs (E_LP)"].disabled and not shown["GCE q"].disabled


def test_start_passes_the_widgets_and_defaults(clean_env, monkeypatch, started):
    monkeypatch.setenv("TURN_AUDIT_DEFAULTS", json.dumps({"lp_epochs": 3, "image_size": 32}))
    at = page()
    assert not at.button(key="start_run").disabled
    at.selectbox(key="set_flag_rule").set_value("paper").run()
    at.number_input(key="set_seed").set_value(7).run()
    at.text_input(key="run_name").input("my run").run()
    at.button(key="start_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    (cfg,) = started
    assert (cfg.data, cfg.flag_rule, cfg.seed, cfg.lp_epochs, cfg.image_size) == ("demo", "paper", 7, 3, 32)
    assert Path(cfg.out) == clean_env / "my-run"
    assert (cfg.fft_epochs, cfg.tau, cfg.mean) == (RunConfig().fft_epochs, RunConfig().tau, None)


def test_busy_registry_is_a_warning(clean_env, monkeypatch):
    def busy(self, config):
        raise jobs.BusyError("a run is already in progress: runs/x")

    monkeypatch.setattr(jobs.JobRegistry, "start", busy)
    at = page()
    at.button(key="start_run").click().run()
    assert not at.exception
    assert any("Busy: a run is already in progress" in w.value for w in at.warning)


def test_taken_run_name_and_bad_text_disable_start(clean_env):
    (clean_env / "taken").mkdir()
    at = page()
    at.text_input(key="run_name").input("taken").run()
    assert at.button(key="start_run").disabled
    assert any("taken exists already" in c.value for c in at.caption)
    at.text_input(key="run_name").input("fresh").run()
    assert not at.button(key="start_run").disabled
    at.text_input(key="set_mean").input("0.5,0.5").run()
    assert at.button(key="start_run").disabled
    assert any("--mean expects three numbers" in e.value for e in at.error)


def test_no_page_imports_torch_or_private_names():
    for path in sorted((ROOT / "pages").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "torch" for a in node.names), path.name
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("turn_core"):
                assert not any(a.name.startswith("_") for a in node.names), (path.name, node.module)
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "torch", path.name
