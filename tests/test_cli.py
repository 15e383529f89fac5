"""``python -m turn_core`` end to end, as a user runs it (subprocess, real tiny demo)."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from turn_core.cli import build_parser, config_from_args
from turn_core.config import RunConfig

REPO = Path(__file__).resolve().parents[1]
CORRECTED_HEADER = "path,given_label,suggested_label,final_label,decision,suspicion,is_label_issue"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ)
    e["TURN_AUDIT_CACHE"] = str(tmp_path_factory.mktemp("cli_cache"))
    e["PYTHONPATH"] = str(REPO)
    return e


def cli(env, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "turn_core", *map(str, args)], check=False, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo_run(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_runs") / "demo"
    r = cli(env, "demo", "--out", out, "--demo-n", 150, "--image-size", 32, "--lp-epochs", 2,
            "--fft-epochs", 1, "--num-threads", 1, "--quiet")
    return out, r


@pytest.mark.slow
def test_demo_runs_and_prints_summary(demo_run):
    out, r = demo_run
    assert r.returncode == 0, r.stderr
    assert "flagged" in r.stdout
    m = re.search(r"(\d+) of (\d+) images flagged", r.stdout)
    assert m and int(m.group(2)) == 150
    metrics = json.loads((out / "metrics.json").read_text())
    assert int(m.group(1)) == metrics["n_flagged"]
    assert json.loads((out / "status.json").read_text())["state"] == "finished"
    assert "Traceback" not in r.stderr
    settings = json.loads((out / "config.json").read_text())["settings"]
    assert (settings["data"], settings["demo_n"], settings["image_size"]) == ("demo", 150, 32)
    assert (settings["lp_epochs"], settings["fft_epochs"], settings["num_threads"]) == (2, 1, 1)


@pytest.mark.slow
def test_export_corrected_labels_and_manifest(demo_run, env, tmp_path):
    out, r = demo_run
    assert r.returncode == 0, r.stderr
    root = Path(json.loads((out / "config.json").read_text())["dataset"]["root"])
    assert root.is_dir() and Path(env["TURN_AUDIT_CACHE"]) in root.parents
    labels = tmp_path / "labels.csv"
    manifest = root / "cleaned-cli-test.csv"
    e = cli(env, "export", out, "--out", labels, "--manifest", manifest)
    assert e.returncode == 0, e.stderr
    assert str(labels) in e.stdout and str(manifest) in e.stdout

    text = labels.read_text(encoding="utf-8")
    assert text.splitlines()[0] == CORRECTED_HEADER
    with open(labels, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(out / "samples.csv", newline="", encoding="utf-8") as f:
        samples = list(csv.DictReader(f))
    assert len(rows) == len(samples) == 150
    from turn_core.review import suspect_rule

    cutoff = suspect_rule(out).cutoff
    for row, s in zip(rows, samples):
        assert row["path"] == s["path"] and row["given_label"] == s["given_label"]
        assert row["suggested_label"] == s["suggested_label"]
        assert row["decision"] == "unreviewed" and row["final_label"] == s["given_label"]
        # unreviewed: a suspect (suspicion >= the saved cut-off, else the run's flag count)
        assert row["is_label_issue"] == str(int(float(s["suspicion"]) >= cutoff))
        assert float(row["suspicion"]) == pytest.approx(float(s["suspicion"]))

    # the cleaned manifest reads back as a dataset with the same images
    from turn_core.data import load_dataset

    ds = load_dataset(manifest)
    assert list(ds.paths) == [s["path"] for s in samples]
    assert [ds.classes[i] for i in ds.labels] == [s["given_label"] for s in samples]


@pytest.mark.slow
def test_export_formats_for_cleanlab_fiftyone_and_label_studio(demo_run, env, tmp_path):
    import numpy as np

    out, r = demo_run
    assert r.returncode == 0, r.stderr
    for fmt, target in (("cleanlab", tmp_path / "cl"), ("fiftyone", tmp_path / "fo"),
                        ("label-studio", tmp_path / "ls.json")):
        e = cli(env, "export", out, "--format", fmt, "--out", target)
        assert e.returncode == 0, (fmt, e.stderr)
        assert str(target) in e.stdout
    flagged = np.load(tmp_path / "cl" / "label_issues.npy")
    assert flagged.dtype == bool and flagged.shape == (150,)
    assert np.load(tmp_path / "cl" / "pred_probs.npy").shape[0] == 150
    assert json.loads((tmp_path / "fo" / "labels.json").read_text())["classes"] == [str(d) for d in range(10)]
    tasks = json.loads((tmp_path / "ls.json").read_text())
    from turn_core.review import suspect_rule
    from turn_core.rundir import Run

    assert len(tasks) == int((Run(out).samples()["suspicion"] >= suspect_rule(out).cutoff).sum())
    bad = cli(env, "export", out, "--format", "parquet", "--out", tmp_path / "x")
    assert bad.returncode == 2 and "cleanlab" in bad.stderr


@pytest.mark.slow
def test_run_on_missing_folder_is_one_error_line(env, tmp_path):
    out = tmp_path / "y"
    r = cli(env, "run", "--data", "/nonexistent", "--out", out)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error:") and "/nonexistent" in lines[0]
    assert "Traceback" not in r.stderr + r.stdout
    st = json.loads((out / "status.json").read_text())
    assert st["state"] == "failed" and st["error"] in lines[0]


def test_run_help_lists_every_setting(env):
    r = cli(env, "run", "--help")
    assert r.returncode == 0, r.stderr
    for f in dataclasses.fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        assert re.search(re.escape(flag) + r"\b", r.stdout), flag
    assert "--quiet" in r.stdout


def test_demo_help_has_no_data_flag(env):
    r = cli(env, "demo", "--help")
    assert r.returncode == 0
    assert "--demo-n" in r.stdout and "--data " not in r.stdout


def test_bogus_method_is_refused(env, tmp_path):
    r = cli(env, "run", "--data", "demo", "--method", "bogus", "--out", tmp_path / "z")
    assert r.returncode != 0
    assert "bogus" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "z").exists()


def test_run_without_data_is_an_error(env, tmp_path):
    r = cli(env, "run", "--out", tmp_path / "w")
    assert r.returncode == 2
    assert r.stderr.startswith("error:") and "--data" in r.stderr


def test_flag_values_reach_the_config():
    ns = build_parser().parse_args(
        ["run", "--data", "imgs", "--out", "o", "--mean", "0.1,0.2,0.3", "--fft-augment", "false",
         "--image-size", "48", "--tau", "0.3", "--gmm-per-class", "yes", "--method", "ce-fft",
         "--test-data", "t.csv", "--num-threads", "2"])
    cfg = config_from_args(ns)
    assert cfg.mean == (0.1, 0.2, 0.3)
    assert cfg.fft_augment is False and cfg.gmm_per_class is True
    assert cfg.image_size == 48 and cfg.tau == 0.3 and cfg.num_threads == 2
    assert cfg.method == "ce-fft" and cfg.test_data == "t.csv"
    # unset flags keep RunConfig's defaults
    assert cfg.lp_epochs == RunConfig().lp_epochs and cfg.fft_epochs == RunConfig().fft_epochs


@pytest.mark.parametrize("flag,value", [("--mean", "0.5,0.5"), ("--std", "0.2,0,0.2")])
def test_bad_normalisation_is_one_error_line(monkeypatch, capsys, tmp_path, flag, value):
    from turn_core import cli, pipeline

    def must_not_train(*a, **k):
        raise AssertionError(f"{flag} {value} was accepted and the run started")

    monkeypatch.setattr(pipeline, "run_phases", must_not_train)
    out = tmp_path / "r"
    try:
        rc = cli.main(["run", "--data", "demo", flag, value, "--out", str(out), "--quiet"])
    except SystemExit as e:          # rejected by argparse: fine as well
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "error" in err[-1]
    assert flag.lstrip("-") in " ".join(err)


# --------------------------------------------------------------------------- names checked first
@pytest.mark.parametrize("flag,value,names", [
    ("--flag-rule", "nope", ("paper", "ensemble", "confident-learning")),
    ("--score", "nope", ("paper", "ensemble")),
    ("--weights", "nope", ("offline", "hub", "none")),
    ("--device", "gpu", ("auto", "cpu", "cuda")),
    ("--device", "cuda:99", ("99",)),
    ("--method", "nope", ("turn", "ce-lp", "gce-lp", "ce-fft")),
    ("--bn-mode", "nope", ("fold", "frozen", "recalibrate")),
    ("--inject-noise", "nope", ("symmetric", "asymmetric", "instance")),
])
def test_wrong_name_fails_before_any_data_is_loaded(monkeypatch, capsys, tmp_path, flag, value, names):
    from turn_core import cli, pipeline

    def no_data(*a, **k):
        raise AssertionError(f"{flag} {value} was accepted and the data was loaded")

    monkeypatch.setattr(pipeline, "load_inputs", no_data)
    out = tmp_path / "r"
    rc = cli.main(["run", "--data", "demo", flag, value, "--out", str(out), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    assert flag in err[0] or flag.lstrip("-").replace("-", "_") in err[0]
    for name in names:
        assert name in err[0], (name, err[0])
    assert not (out / "events.jsonl").exists() and not out.exists()


def test_help_is_grouped_and_read_from_the_metadata(capsys):
    from turn_core import cli
    from turn_core.config import GROUPS, SETTINGS

    with pytest.raises(SystemExit) as e:
        cli.main(["run", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())   # argparse wraps lines
    for title in GROUPS.values():
        assert f"{title} settings:" in text
    for s in SETTINGS.values():
        assert " ".join(s.help.split()[:4]) in text, s.name
    from turn_core.scores import FLAG_RULES

    assert "{auto,cpu,cuda,cuda:N}" in text and "{" + ",".join(FLAG_RULES) + "}" in text


def test_optional_flags_read_none():
    ns = build_parser().parse_args(["run", "--data", "d", "--image-size", "none", "--inject-noise", "none",
                                    "--calibrate-head", "off"])
    cfg = config_from_args(ns)
    assert cfg.image_size is None and cfg.inject_noise is None and cfg.calibrate_head is False
