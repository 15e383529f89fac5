"""AppTest of the Review page: full-size images, the learning queue, duplicate conflicts."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from fakerun import make_fake_run
from streamlit.testing.v1 import AppTest

from turn_core import rerank
from turn_core.review import ReviewStore
from turn_core.rundir import Run, atomic_save_npy
from turn_core.views import queue as vq

APP = str(Path(__file__).resolve().parents[1] / "app.py")
TIMEOUT = 90


@pytest.fixture(autouse=True)
def clean_env(app_runs_root):
    return app_runs_root


def review_page(run: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["run"] = run
    at.run()
    at.switch_page("pages/review.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def captions(at: AppTest) -> str:
    return "\n".join(str(c.value) for c in at.caption)


def add_probabilities(d: Path, seed: int = 0) -> None:
    """cv_probs.npy and probs.npy as a real run writes them (the fake run has neither)."""
    s = Run(d).samples()
    classes = Run(d).classes
    sugg = s["suggested_label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    p = np.full((len(s), len(classes)), 0.05, dtype=np.float32)
    p[np.arange(len(s)), sugg] = 0.8
    p /= p.sum(axis=1, keepdims=True)
    atomic_save_npy(d / "cv_probs.npy", p[None])
    atomic_save_npy(d / "probs.npy", p)


def wait(run_dir: Path, job: str) -> None:
    t0 = time.time()
    while vq.busy(run_dir, job) and time.time() - t0 < 60:
        time.sleep(0.1)


def test_focus_card_shows_the_original_file(clean_env, tmp_path):
    make_fake_run(clean_env / "fin", n=30, dataset_root=tmp_path / "data")
    at = review_page("fin")
    assert "original 16×16" in captions(at)


def test_focus_card_says_when_it_shows_the_thumbnail(clean_env):
    make_fake_run(clean_env / "fin", n=30)
    at = review_page("fin")
    text = captions(at)
    assert "thumbnail (no original file" in text and "original 16×16" not in text


def test_learning_queue_reranks_in_the_background_and_switches_back(clean_env):
    d = make_fake_run(clean_env / "fin", n=150)
    add_probabilities(d)
    s = Run(d).samples()
    store = ReviewStore(d)
    top = s.sort_values("suspicion", ascending=False)["index"].astype(int).tolist()[:rerank.WARMUP]
    store.record_many([(i, "keep", s.loc[i, "given_label"]) for i in top], reviewer="t")
    at = review_page("fin")
    assert "re-ranking" in captions(at) or not vq.busy(d, "learning")
    wait(d, "learning")
    learned = vq.read_learned(d)
    assert learned is not None and learned["n_decisions"] == rerank.WARMUP
    at.run()
    assert f"re-ranked after {rerank.WARMUP} decisions" in captions(at)
    assert any("Hit rate" in m.label for m in at.metric)
    assert not at.radio(key="rv_order::fin").disabled
    q_learned = vq.review_queue(s, cutoff=0.0, learned=learned["suspicion"], status="unreviewed")
    q_static = vq.review_queue(s, cutoff=0.0, status="unreviewed")
    at.radio(key="rv_order::fin").set_value("original").run()
    assert "showing the original order" in captions(at)
    assert set(q_learned["index"]) == set(q_static["index"])


def test_planted_duplicate_conflict_is_decided_as_a_pair(clean_env):
    d = make_fake_run(clean_env / "fin", n=40)
    s = Run(d).samples()
    lab = s["given_label"].to_numpy()
    b = int(np.flatnonzero(lab != lab[5])[0])
    f = np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32) * 5
    f[b] = f[5]
    atomic_save_npy(d / "features_pre.npy", f.astype(np.float16))
    at = review_page("fin")
    at.radio(key="rv_mode::fin").set_value("duplicate conflicts").run()
    wait(d, "duplicates")
    at.run()
    assert not at.exception
    assert any("0 of 1 duplicate conflicts decided" in m.value for m in at.markdown)
    at.button(key="rv_pair_b").click().run()
    dec = ReviewStore(d).latest()
    a_, b_ = sorted((5, b))
    assert {a_, b_} <= set(dec) and dec[a_].final_label == dec[b_].final_label == lab[b_]
    assert any("1 of 1 duplicate conflicts decided" in m.value for m in at.markdown)


def test_original_path_stays_inside_the_dataset_root_and_zoom_crops(tmp_path):
    from turn_core.views import images as vi

    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    ds = {"kind": "csv", "root": str(root)}
    assert vi.original_path(ds, "img/a.png") == (root / "img" / "a.png").resolve()
    assert vi.original_path(ds, "../secret.png") is None
    assert vi.original_path({"kind": "hf", "root": str(root)}, "img/a.png") is None
    img, note = vi.original_image(ds, "img/missing.png")
    assert img is None and "file not found" in note
    a = np.arange(100 * 80).reshape(100, 80)
    z = vi.zoom(a, 2.0, centre=(1.0, 0.0))
    assert z.shape == (50, 40) and z[0, -1] == a[0, -1]
    assert vi.zoom(a, 1.0).shape == a.shape


def test_original_image_is_exif_rotated_and_downscaled(tmp_path):
    from PIL import Image

    from turn_core.views import images as vi

    im = Image.new("RGB", (300, 100), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    im.save(tmp_path / "r.jpg", exif=exif)
    img, note = vi.original_image({"kind": "folder", "root": str(tmp_path)}, "r.jpg", max_side=150)
    assert img.shape[:2] == (150, 50) and "original 100×300" in note


def test_errors_left_uses_the_runs_suspicion_and_count(clean_env):
    """The estimate rests on the run's suspicion and count of wrong labels, never on the learned
    order's rank blend (which is not a probability): the caption gives the whole data set's."""
    d = make_fake_run(clean_env / "fin", n=150)
    add_probabilities(d)
    atomic_save_npy(d / "ensemble_probs.npy", np.load(d / "probs.npy"))
    s = Run(d).samples()
    classes = Run(d).classes
    top = s.sort_values("suspicion", ascending=False)["index"].astype(int).tolist()[:rerank.WARMUP]
    # a third of the reviewed images relabelled to their suggestion, the rest kept
    moves = [(i, "relabel" if k % 3 == 0 else "keep",
              s.loc[i, "suggested_label"] if k % 3 == 0 else s.loc[i, "given_label"]) for k, i in enumerate(top)]
    ReviewStore(d).record_many(moves, reviewer="t")
    at = review_page("fin")
    wait(d, "learning")
    at.run()
    assert vq.read_learned(d) is not None and not at.exception
    susp = s.set_index("index")["suspicion"].reindex(range(len(s))).to_numpy(float)
    changed = [m[1] == "relabel" and m[2] != s.loc[m[0], "given_label"] for m in moves]
    count = vq.error_count(d, s["given_label"].astype(str).to_numpy(), classes)
    assert count is not None
    rest = np.setdiff1d(np.arange(len(s)), top)
    want = rerank.errors_left(susp, rest, susp[top], changed, count=count)
    assert f"{want:.0f} left in the whole data set" in captions(at)
    shown = next(m for m in at.metric if m.label.startswith("Errors left"))
    assert float(shown.value) <= want + 0.5   # the queue is part of the data set
