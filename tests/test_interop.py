"""``turn_core.interop``: cleanlab arrays and the FiftyOne classification layout of a real run.

One tiny real run (the offline demo, MobileNetV2 at 32 px) is shared by every test: the
suspicion check needs the arrays a real run writes.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from turn_core import interop
from turn_core.errors import InputError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import torch

    from turn_core import pipeline
    from turn_core.config import RunConfig

    base = tmp_path_factory.mktemp("interop")
    mp = pytest.MonkeyPatch()
    mp.setenv("TURN_AUDIT_CACHE", str(base / "cache"))
    threads = torch.get_num_threads()
    try:
        # flag_rule "ensemble": its flags are cleanlab's predicted_neq_given filter (checked below)
        out = pipeline.run(RunConfig(data="demo", demo_n=200, image_size=32, lp_epochs=3, fft_epochs=1,
                                     flag_rule="ensemble", batch_size=64, num_threads=1, out=str(base / "run")))
    finally:
        torch.set_num_threads(threads)
    assert (out / interop.ENSEMBLE_FILE).exists()          # the pipeline writes it
    yield out
    mp.undo()


@pytest.fixture
def older_run(run_dir, tmp_path):
    """The same run without ensemble_probs.npy (as runs written before it existed)."""
    copy = tmp_path / "older"
    shutil.copytree(run_dir, copy)
    (copy / interop.ENSEMBLE_FILE).unlink()
    return copy


def _samples(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "samples.csv", dtype={"given_label": str, "suggested_label": str},
                       keep_default_na=False)


# --------------------------------------------------------------------------- cleanlab
def test_cleanlab_files(run_dir, tmp_path):
    out = interop.write_cleanlab(run_dir, tmp_path / "cl")
    s = _samples(run_dir)
    classes = json.loads((out / "classes.json").read_text())
    assert classes == json.loads((run_dir / "config.json").read_text())["classes"]
    probs = np.load(out / "pred_probs.npy")
    labels = np.load(out / "labels.npy")
    issues = np.load(out / "label_issues.npy")
    quality = np.load(out / "label_quality_scores.npy")
    n, k = len(s), len(classes)
    assert probs.dtype == np.float32 and probs.shape == (n, k)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-6) and probs.min() >= 0
    assert labels.dtype.kind == "i" and [classes[y] for y in labels] == s["given_label"].tolist()
    assert issues.dtype == bool and np.array_equal(issues, s["flagged"].to_numpy() == 1)
    assert np.allclose(quality, 1 - s["suspicion"].to_numpy(), atol=1e-12)
    # The default score is 1 − the ensemble's probability of the given label, written to 6 decimals.
    rebuilt = 1.0 - probs[np.arange(n), labels].astype(np.float64)
    assert np.abs(rebuilt - s["suspicion"].to_numpy()).max() <= 1.5e-6
    note = json.loads((out / "turn_audit.json").read_text())
    assert note["score"] in interop.ENSEMBLE_SCORES and note["rows_not_matching_suspicion"] == 0
    assert note["label_quality_scores"].startswith("1 - suspicion = pred_probs")


def test_cleanlab_rebuilt_for_older_runs(run_dir, older_run, tmp_path):
    """Without ensemble_probs.npy the probabilities are rebuilt (k-NN on float16 features):
    nearly every row reproduces the suspicion, and the note counts the rows that do not."""
    out = interop.write_cleanlab(older_run, tmp_path / "cl_old")
    probs, labels = np.load(out / "pred_probs.npy"), np.load(out / "labels.npy")
    exact = np.load(run_dir / interop.ENSEMBLE_FILE)
    s = _samples(older_run)
    off = np.abs(1.0 - probs[np.arange(len(s)), labels] - s["suspicion"].to_numpy()) > 1.5e-6
    note = json.loads((out / "turn_audit.json").read_text())
    assert note["rows_not_matching_suspicion"] == int(off.sum()) <= len(s) // 20
    assert "rebuilt" in note["pred_probs"]
    assert np.allclose(probs[~off], exact[~off], atol=1.5e-6)


def test_cleanlab_agrees(run_dir, tmp_path):
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    out = interop.write_cleanlab(run_dir, tmp_path / "cl")
    probs, labels = np.load(out / "pred_probs.npy"), np.load(out / "labels.npy")
    issues, quality = np.load(out / "label_issues.npy"), np.load(out / "label_quality_scores.npy")
    theirs = get_label_quality_scores(labels, probs)   # self-confidence
    assert theirs.shape == quality.shape and np.abs(theirs - quality).max() <= 1.5e-6
    # The run's flag rule ("ensemble") is cleanlab's predicted_neq_given filter.
    neq = find_label_issues(labels, probs, filter_by="predicted_neq_given")
    assert neq.shape == issues.shape and np.array_equal(neq, issues)
    cl = find_label_issues(labels, probs)
    assert cl.shape == issues.shape and cl.dtype == bool
    assert not np.any(cl & ~issues)   # confident learning flags a subset of predicted ≠ given
    assert cl.sum() > 0


def test_cleanlab_paper_score_says_what_it_wrote(run_dir, tmp_path):
    paper = tmp_path / "paper_run"
    shutil.copytree(run_dir, paper)
    cfg = json.loads((paper / "config.json").read_text())
    cfg["settings"]["score"] = "paper"
    (paper / "config.json").write_text(json.dumps(cfg))
    s = _samples(paper)
    s["suspicion"] = (1 - s["clean_prob"]).round(6)   # what a --score paper run writes
    s.to_csv(paper / "samples.csv", index=False)
    out = interop.write_cleanlab(paper, tmp_path / "cl_paper")
    assert np.allclose(np.load(out / "label_quality_scores.npy"), s["clean_prob"], atol=1e-6)
    note = json.loads((out / "turn_audit.json").read_text())
    assert note["score"] == "paper" and "not from pred_probs" in note["label_quality_scores"]


def test_export_needs_a_finished_run(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text('{"settings": {}, "classes": ["a"]}')
    for fmt, writer in interop.EXPORT_FORMATS.items():
        with pytest.raises(InputError, match="no samples.csv"):
            writer(tmp_path / "half", tmp_path / fmt)


# --------------------------------------------------------------------------- FiftyOne
def _read_fiftyone_layout(folder: Path, labels_file: str) -> dict[str, dict]:
    """Read an export the way FiftyOne's documented ``FiftyOneImageClassificationDataset``
    importer does: media in ``data/`` keyed by file stem; ``labels`` maps a stem to a class
    index (into ``classes``) or a dict with "label" (index), "confidence", "attributes"."""
    doc = json.loads((folder / labels_file).read_text())
    assert set(doc) == {"classes", "labels"} and isinstance(doc["classes"], list)
    media = {p.stem: p for p in (folder / "data").iterdir()}
    out = {}
    for key, target in doc["labels"].items():
        entry = target if isinstance(target, dict) else {"label": target}
        assert isinstance(entry["label"], int)
        out[key] = {"file": media[key], "label": doc["classes"][entry["label"]],
                    "confidence": entry.get("confidence"), "attributes": entry.get("attributes", {})}
    return out


def _review(run_dir: Path, tmp_path: Path) -> Path:
    from turn_core.review import ReviewStore

    copy = tmp_path / "reviewed"
    shutil.copytree(run_dir, copy)
    s = _samples(copy)
    store = ReviewStore(copy)
    other = next(c for c in json.loads((copy / "config.json").read_text())["classes"] if c != s["given_label"][2])
    store.record(0, "accept", s["suggested_label"][0])
    store.record(1, "exclude", None)
    store.record(2, "relabel", other)
    store.close()
    return copy


def test_fiftyone_layout_links_originals(run_dir, tmp_path):
    reviewed = _review(run_dir, tmp_path)
    out = interop.write_fiftyone(reviewed, tmp_path / "fo")
    s = _samples(reviewed)
    root = Path(json.loads((reviewed / "config.json").read_text())["dataset"]["root"])
    given = _read_fiftyone_layout(out, "labels.json")
    sugg = _read_fiftyone_layout(out, "suggestions.json")
    assert len(given) == len(sugg) == len(s) == len(list((out / "data").iterdir()))
    for i, row in s.iterrows():
        key = f"{int(row['index']):08d}"
        g, u = given[key], sugg[key]
        assert g["label"] == row["given_label"] and u["label"] == row["suggested_label"]
        assert g["file"].is_symlink() and g["file"].resolve() == (root / row["path"]).resolve()
        assert u["confidence"] == pytest.approx(row["confidence"])
        a = u["attributes"]
        assert a["suspicion"] == pytest.approx(row["suspicion"]) and a["flagged"] == bool(row["flagged"])
        assert a["path"] == row["path"]
    decided = {k: (sugg[k]["attributes"]["decision"], sugg[k]["attributes"]["final_label"])
               for k in ("00000000", "00000001", "00000002", "00000003")}
    assert decided["00000000"] == ("accept", s["suggested_label"][0])
    assert decided["00000001"] == ("exclude", "")
    assert decided["00000002"][0] == "relabel" and decided["00000002"][1] != s["given_label"][2]
    assert decided["00000003"] == ("unreviewed", s["given_label"][3])
    readme = (out / "README.md").read_text()
    assert "FiftyOneImageClassificationDataset" in readme and "suggestions.json" in readme
    assert str(out.resolve()) in readme


def test_fiftyone_falls_back_to_thumbnails(run_dir, tmp_path):
    from PIL import Image

    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    cfg = json.loads((moved / "config.json").read_text())
    cfg["dataset"]["root"] = str(tmp_path / "gone")
    (moved / "config.json").write_text(json.dumps(cfg))
    out = interop.write_fiftyone(moved, tmp_path / "fo_thumbs")
    thumbs = np.load(moved / "thumbs.npy")
    files = sorted((out / "data").iterdir())
    assert len(files) == len(thumbs) and all(f.suffix == ".png" and not f.is_symlink() for f in files)
    assert np.array_equal(np.asarray(Image.open(files[5]).convert("RGB")), thumbs[5])


def test_fiftyone_loads_in_fiftyone(run_dir, tmp_path):
    """Runs only where ``fiftyone`` is installed (it is not in this project's venv)."""
    fo = pytest.importorskip("fiftyone")
    out = interop.write_fiftyone(run_dir, tmp_path / "fo_real")
    ds = fo.Dataset.from_dir(dataset_dir=str(out), dataset_type=fo.types.FiftyOneImageClassificationDataset,
                             label_field="given")
    ds.merge_dir(dataset_dir=str(out), labels_path="suggestions.json", label_field="suggested",
                 dataset_type=fo.types.FiftyOneImageClassificationDataset)
    s = _samples(run_dir)
    assert len(ds) == len(s)
    first = ds.first()
    assert first["given"].label in set(s["given_label"]) and first["suggested"].confidence is not None
