"""Issue 5, reliability and security: the cases not already covered beside their modules.

RELIABILITY.md maps every case of the issue to its test; ``test_reliability_table_is_current``
keeps that table honest (every test it names must be collected by pytest).
"""
from __future__ import annotations

import ast
import csv
import json
import os
import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from inputs import zip_bytes

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from fakerun import make_fake_run

from turn_core.config import RunConfig

TINY = dict(data="demo", demo_n=150, image_size=32, lp_epochs=2, fft_epochs=1, batch_size=64)
APP_FILES = [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py"))]


# --------------------------------------------------------------------------- the table
def test_reliability_table_is_current():
    text = (ROOT / "RELIABILITY.md").read_text(encoding="utf-8")
    ids = sorted(set(re.findall(r"`(tests/[\w/]+\.py::[^`\s]+)`", text)))
    assert len(ids) >= 30, ids
    files = sorted({i.split("::")[0] for i in ids})
    for f in files:
        assert (ROOT / f).is_file(), f
    p = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    collected = set(p.stdout.split())
    from browser_util import have_chromium

    missing = []
    for i in ids:
        if i in collected:
            continue
        path, name = i.split("::", 1)
        # A browser module skips at import without Chromium: check its source instead.
        if "browser" in path and not have_chromium() and f"def {name.split('[')[0]}(" in (ROOT / path).read_text():
            continue
        missing.append(i)
    assert not missing, f"RELIABILITY.md names tests pytest does not collect: {missing}\n{p.stdout[-2000:]}"


# --------------------------------------------------------------------------- killed mid-training
_KILL_AT = """
import json, os, signal, sys
from turn_core.config import RunConfig
from turn_core.pipeline import run

phase = sys.argv[2]
def progress(ev):
    if ev.get("phase") == phase:   # a kill -9 (OOM killer, server restart) at this point
        os.kill(os.getpid(), signal.SIGKILL)
run(RunConfig(**json.loads(sys.argv[1])), progress=progress)
"""


def _killed_run(tmp_path: Path, phase: str) -> tuple[Path, RunConfig]:
    runs = tmp_path / "runs"
    cfg = RunConfig(**TINY, out=str(runs / "live"), seed=3, tau=0.4)
    env = dict(os.environ, TURN_AUDIT_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", _KILL_AT, json.dumps(cfg.to_dict()), phase], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=240, check=False)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    d = Path(cfg.out)
    assert json.loads((d / "status.json").read_text())["state"] == "running"  # as the kill left it
    return d, cfg


def _app_marks_interrupted(runs: Path, name: str, monkeypatch) -> None:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("TURN_AUDIT_RUNS", str(runs))
    monkeypatch.setenv("TURN_AUDIT_DATA_ROOTS", str(runs.parent))
    st.cache_resource.clear()
    st.cache_data.clear()
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90)
        at.session_state["run"] = name
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        # app start persisted the state (recover_interrupted), not just displayed it
        assert json.loads((runs / name / "status.json").read_text())["state"] == "interrupted"
        at.switch_page("pages/training.py").run()
        assert not at.exception, [e.value for e in at.exception]
        assert any(w.value.startswith("Interrupted:") for w in at.warning), [w.value for w in at.warning]
    finally:
        st.cache_resource.clear()
        st.cache_data.clear()


def _same_settings(d: Path, cfg: RunConfig) -> None:
    from turn_core.jobs import restart_config

    again = restart_config(d)
    assert again.out == str(d.parent / "live-restart")
    assert {**again.to_dict(), "out": cfg.out} == cfg.to_dict()


def test_app_restart_mid_training_marks_interrupted_and_restarts_same_settings(tmp_path, monkeypatch):
    d, cfg = _killed_run(tmp_path, "lp")      # killed while training the linear head
    _app_marks_interrupted(d.parent, d.name, monkeypatch)
    _same_settings(d, cfg)


def test_killed_before_the_image_cache_can_still_restart_with_same_settings(tmp_path):
    d, cfg = _killed_run(tmp_path, "cache")
    _same_settings(d, cfg)


# --------------------------------------------------------------------------- security
def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            yield owner, name, node


def test_no_pickle_deserialisation_in_the_code():
    bad = []
    for path in sorted((ROOT / "turn_core").glob("*.py")) + APP_FILES:
        for owner, name, node in _calls(ast.parse(path.read_text(encoding="utf-8"))):
            kw = {k.arg: k.value for k in node.keywords}
            where = f"{path.name}:{node.lineno}"
            if owner == "torch" and name == "load":
                v = kw.get("weights_only")
                if not (isinstance(v, ast.Constant) and v.value is True):
                    bad.append(f"{where} torch.load without weights_only=True")
            if owner in ("pickle", "dill", "joblib", "cloudpickle") and name in ("load", "loads"):
                bad.append(f"{where} {owner}.{name}")
            if name == "load" and "allow_pickle" in kw and not (
                    isinstance(kw["allow_pickle"], ast.Constant) and kw["allow_pickle"].value is False):
                bad.append(f"{where} np.load(allow_pickle=...)")
    assert not bad, bad


@pytest.fixture
def app_env(app_runs_root):
    return app_runs_root


def _data_page():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90).run()
    at.switch_page("pages/data_run.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_zip_upload_with_path_traversal_refused_on_the_page(app_env, tmp_path, monkeypatch):
    monkeypatch.setenv("TURN_AUDIT_DATA_ROOTS", str(tmp_path))
    at = _data_page()
    at.radio(key="src_kind").set_value("zip").run()
    evil = zip_bytes({"ds/cat/a.png": b"x", "../../escaped.txt": b"owned"})
    at.file_uploader(key="up_zip").set_value(("evil.zip", evil, "application/zip")).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert any("../../escaped.txt" in e and "'..'" in e for e in errors), errors
    assert not list(tmp_path.rglob("escaped.txt"))
    assert at.button(key="start_run").disabled


def test_server_folder_outside_default_root_refused(app_env, monkeypatch):
    # No TURN_AUDIT_DATA_ROOTS: only the folder the app was started in is allowed.
    monkeypatch.delenv("TURN_AUDIT_DATA_ROOTS", raising=False)
    at = _data_page()
    at.radio(key="src_kind").set_value("server").run()
    at.text_input(key="server_path").input("/etc").run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any(e.startswith("/etc is outside the folders this server may read") and str(Path.cwd().resolve()) in e
               for e in errors), errors
    assert at.button(key="start_run").disabled


def _formula_safe_and_round_trip(tmp_path, classes):
    from turn_core import export
    from turn_core.review import ReviewStore

    run = make_fake_run(tmp_path / "run", n=70, classes=classes, dataset_root=tmp_path / "data")
    ReviewStore(run).record(0, "relabel", "=1+1", "ann")
    corrected = export.write_corrected_csv(run, tmp_path / "corrected.csv")
    with open(corrected, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for col in ("given_label", "suggested_label", "final_label"):
            v = r[col]
            if v.startswith("'") and v[1:] in classes:   # escaped: only what a spreadsheet would run
                assert v[1:].startswith(("=", "+", "-", "@", "\t", "\r")), (col, v)
            else:
                assert v in classes and not v.startswith(("=", "+", "-", "@", "\t", "\r")), (col, v)
    # the manifest is for programs: verbatim, and it reads back exactly (csv module and turn_core)
    manifest = export.write_clean_manifest(run)
    want = export.clean_manifest(run)
    with open(manifest, encoding="utf-8", newline="") as f:
        back = list(csv.DictReader(f))
    assert [(r["path"], r["label"]) for r in back] == list(zip(want["path"], want["label"]))
    assert back[0]["label"] == "=1+1" and {r["label"] for r in back} <= set(classes)
    from turn_core.data import load_dataset

    ds = load_dataset(manifest)   # (labels are whitespace-stripped on load: tab / CR lose theirs)
    assert [ds.classes[i] for i in ds.labels] == [lab.strip() for lab in want["label"]]


def test_corrected_csv_formula_safe_and_manifest_round_trips_exactly(tmp_path):
    _formula_safe_and_round_trip(tmp_path, ["=1+1", "+SUM(A1)", "-5", "@cmd", "\tTAB", "plain, \"quoted\" café"])


def test_labels_with_carriage_return_round_trip(tmp_path):
    _formula_safe_and_round_trip(tmp_path, ["=1+1", "\rCR", "a\rb", "plain"])


def test_upload_size_limit_is_configured():
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    limit = cfg.get("server", {}).get("maxUploadSize")
    assert isinstance(limit, int) and 1 <= limit <= 4096, limit
    # the ZIP guard's unpacked limit is what protects the disk; the upload limit caps the request
    import inspect

    from turn_core.safety import extract_zip_safely

    assert inspect.signature(extract_zip_safely).parameters["max_total_bytes"].default >= limit * 1024 ** 2


def test_no_user_string_rendered_as_raw_html():
    bad = []
    for path in APP_FILES:
        for owner, name, node in _calls(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            kw = {k.arg: k.value for k in node.keywords}
            raw = kw.get("unsafe_allow_html")
            literal_html = node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
            if raw is not None and not (isinstance(raw, ast.Constant) and raw.value is False) and not literal_html:
                bad.append(f"{where} {name}(<non-literal>, unsafe_allow_html=...)")
            if name == "html" and owner in ("st", "components", "v1") and not (
                    node.args and isinstance(node.args[0], ast.Constant)):
                bad.append(f"{where} {owner}.html(<non-literal>)")
    assert not bad, bad
