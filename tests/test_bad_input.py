"""Issue 5, bad input: one test each; a clear message naming the file or value; no traceback
in the terminal (CLI) or on the page (AppTest ``exception`` elements).

Unit-level checks of the same inputs live beside their modules (tests/test_images.py,
tests/test_data.py); this file drives them through the user's entry points:

* bad image files: one real ``python -m turn_core run`` subprocess (tiny settings) over a
  folder holding every kind of bad file, shared by the per-kind tests below;
* bad manifests / folders / models: ``turn_core.cli.main`` in-process (the CLI's own code
  path; one line on stderr, exit code 2), the hub case as a subprocess;
* old or half-written run directories: every page through AppTest, and ``Run.missing()``.
"""
from __future__ import annotations

import csv
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from fakerun import make_fake_run

from turn_core import cli
from turn_core.rundir import Run, atomic_write_json

TINY = ["--image-size", "32", "--lp-epochs", "2", "--fft-epochs", "1", "--batch-size", "64", "--quiet"]


def _png(path: Path, colour, size=(24, 24), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def _good_folder(root: Path, per_class: int = 6) -> Path:
    for c, base in (("a", 40), ("b", 200)):
        for i in range(per_class):
            _png(root / c / f"{i}.png", (base, (i * 30) % 255, 255 - base))
    return root


def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG declaring w × h pixels with no pixel data: a decompression bomb made cheaply."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def _jpeg_bytes(size=(64, 64), mode="RGB") -> bytes:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (size[1], size[0], 4 if mode == "CMYK" else 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="JPEG")
    return buf.getvalue()


# Bad files put into class "a" of a good folder: name -> (writer, expected skip reason or None
# when the image must be used).
def _bad_files(a: Path) -> dict[str, str | None]:
    noise = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    damaged = bytearray(buf.getvalue())
    for i in range(80, 160):  # inside the pixel data: a PNG whose IDAT is damaged
        damaged[i] ^= 0xFF
    (a / "corrupt.png").write_bytes(bytes(damaged))
    (a / "truncated.jpg").write_bytes(_jpeg_bytes()[:600])
    (a / "empty.jpg").write_bytes(b"")
    (a / "notes.png").write_text("this is not an image, just text\n")
    _png_header_only(a / "bomb.png", 9000, 9000)
    _png(a / "huge.png", (90, 120, 30), size=(2400, 1800))          # 4.3 M pixels: legal, used
    (a / "cmyk.jpg").write_bytes(_jpeg_bytes(mode="CMYK"))
    Image.fromarray((np.arange(24 * 24, dtype=np.uint16).reshape(24, 24) * 100), mode="I;16").save(a / "gray16.png")
    frames = [Image.new("P", (24, 24), i) for i in (10, 200)]
    frames[0].save(a / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return {"corrupt.png": "truncated or corrupt image", "truncated.jpg": "truncated or corrupt image",
            "empty.jpg": "zero-byte file", "notes.png": "not an image (cannot identify image file)",
            "bomb.png": "decompression bomb: 9000×9000 pixels exceeds limit 64000000",
            "huge.png": None, "cmyk.jpg": None, "gray16.png": None, "anim.gif": None}


@pytest.fixture(scope="module")
def bad_images_run(tmp_path_factory):
    """One CLI run over a folder with every kind of bad image: (run dir, expected, stderr)."""
    tmp = tmp_path_factory.mktemp("badimg")
    data = _good_folder(tmp / "data")
    expected = _bad_files(data / "a")
    out = tmp / "run"
    env = dict(os.environ, TURN_AUDIT_CACHE=str(tmp / "cache"), PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "turn_core", "run", "--data", str(data), "--out", str(out), *TINY],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    return out, expected, p.stderr


def _skipped(run_dir: Path) -> dict[str, str]:
    with open(run_dir / "skipped.csv", encoding="utf-8", newline="") as f:
        return {r["path"]: r["reason"] for r in csv.DictReader(f)}


def _check_image(bad_images_run, name: str) -> None:
    out, expected, stderr = bad_images_run
    assert "Traceback" not in stderr
    skipped = _skipped(out)
    rel = f"a/{name}"
    used = set(Run(out).samples()["path"])
    if expected[name] is None:
        assert rel not in skipped and rel in used, (rel, skipped.get(rel))
    else:
        assert skipped.get(rel) == expected[name]  # the file named, with a reason a person reads
        assert rel not in used


def test_image_corrupt(bad_images_run):
    _check_image(bad_images_run, "corrupt.png")


def test_image_truncated(bad_images_run):
    _check_image(bad_images_run, "truncated.jpg")


def test_image_zero_byte(bad_images_run):
    _check_image(bad_images_run, "empty.jpg")


def test_image_not_an_image(bad_images_run):
    _check_image(bad_images_run, "notes.png")


def test_image_decompression_bomb(bad_images_run):
    _check_image(bad_images_run, "bomb.png")


def test_image_huge_is_used(bad_images_run):
    _check_image(bad_images_run, "huge.png")


def test_image_cmyk_is_used(bad_images_run):
    _check_image(bad_images_run, "cmyk.jpg")


def test_image_16bit_is_used(bad_images_run):
    _check_image(bad_images_run, "gray16.png")


def test_image_animated_is_used(bad_images_run):
    _check_image(bad_images_run, "anim.gif")


# --------------------------------------------------------------------------- CLI, in-process
@pytest.fixture
def run_cli(tmp_path, monkeypatch, capsys):
    """cli.main(["run", ...]) with the image cache in tmp; returns (exit code, stderr)."""
    monkeypatch.setenv("TURN_AUDIT_CACHE", str(tmp_path / "cache"))

    def call(*args: str) -> tuple[int, str]:
        code = cli.main(["run", "--out", str(tmp_path / "out"), *TINY, *args])
        err = capsys.readouterr().err
        return code, err

    return call


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def _manifest(folder: Path, text: str | bytes, name: str = "m.csv") -> Path:
    _good_folder(folder, per_class=3)
    p = folder / name
    (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
    return p


GOOD_ROWS = "a/0.png,a\na/1.png,a\nb/0.png,b\nb/1.png,b\n"


@pytest.mark.parametrize("text, needles", [
    pytest.param("file,class\na/0.png,a\n", ["m.csv", "lacks columns path, label"], id="missing-columns"),
    pytest.param("path,label\na/0.png,caf\u00e9\n".encode("latin-1"), ["m.csv", "is not UTF-8"], id="wrong-encoding"),
    pytest.param("path,label\n" + GOOD_ROWS + "./a/1.png,a\n", ["m.csv", "rows 3 and 6", "a/1.png"], id="duplicate-path"),
    pytest.param("path,label\n" + GOOD_ROWS + "/etc/passwd,a\n", ["m.csv", "row 6", "/etc/passwd"], id="absolute-path"),
    pytest.param("path,label\na/0.png,a\na/1.png,a\n", ["m.csv", "at least 2 classes"], id="single-class"),
])
def test_cli_bad_manifest(tmp_path, run_cli, text, needles):
    _one_line_error(*run_cli("--data", str(_manifest(tmp_path / "ds", text))), *needles)


def test_cli_manifest_bom_and_odd_labels_accepted(tmp_path, run_cli):
    # A BOM, and labels with commas, quotes and unicode: read as written, not an error.
    labels = ["bird, small", 'say "hi"']
    rows = "".join(f'{p},"{lab.replace(chr(34), chr(34) * 2)}"\n' for lab, ps in
                   zip(labels, (["a/0.png", "a/1.png", "a/2.png"], ["b/0.png", "b/1.png", "b/2.png"])) for p in ps)
    m = _manifest(tmp_path / "ds", "\ufeffpath,label\n" + rows.replace("café", "café"))
    code, err = run_cli("--data", str(m), "--method", "ce-lp")
    assert code == 0 and "Traceback" not in err, err
    assert Run(tmp_path / "out").classes == sorted(labels)


def test_cli_empty_class_folder(tmp_path, run_cli):
    data = _good_folder(tmp_path / "ds", per_class=3)
    (data / "c").mkdir()
    _one_line_error(*run_cli("--data", str(data)), "class folder 'c'", "has no images")


def test_cli_class_emptied_by_unreadable_files(tmp_path, run_cli):
    data = _good_folder(tmp_path / "ds", per_class=3)
    for i in range(3):
        (data / "c" / f"{i}.png").parent.mkdir(exist_ok=True)
        (data / "c" / f"{i}.png").write_text("broken")
    _one_line_error(*run_cli("--data", str(data)), "class(es) c", "fewer than 2 images")
    assert {r for r in _skipped(tmp_path / "out")} == {"c/0.png", "c/1.png", "c/2.png"}


def test_cli_checkpoint_of_wrong_architecture(tmp_path, run_cli):
    import timm
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in timm.create_model("resnet10t", pretrained=False).state_dict().items()}
    ckpt = tmp_path / "resnet.safetensors"
    save_file(sd, str(ckpt))
    data = _good_folder(tmp_path / "ds", per_class=3)
    _one_line_error(*run_cli("--data", str(data), "--checkpoint", str(ckpt), "--weights", "none"),
                    str(ckpt), "wrong architecture")


def test_cli_unknown_timm_name(tmp_path, run_cli):
    data = _good_folder(tmp_path / "ds", per_class=3)
    _one_line_error(*run_cli("--data", str(data), "--model", "resnet_fifty", "--weights", "hub"),
                    "unknown timm model name 'resnet_fifty'")


def test_cli_hub_unreachable(tmp_path):
    # A real terminal; the hub cannot be reached (offline mode: no retries, no waiting) and
    # the weights cache is empty.
    data = _good_folder(tmp_path / "ds", per_class=3)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), TURN_AUDIT_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "turn_core", "run", "--data", str(data), "--out", str(tmp_path / "o"),
                        "--model", "resnet10t", "--weights", "hub", *TINY],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)
    _one_line_error(p.returncode, p.stderr, "cannot download pretrained weights for 'resnet10t'", "hub")
    assert json.loads((tmp_path / "o" / "status.json").read_text())["state"] == "failed"


# --------------------------------------------------------------------------- old / half-written runs
PAGES = ["pages/overview.py", "pages/data_run.py", "pages/training.py", "pages/losses.py",
         "pages/clusters.py", "pages/review.py", "pages/export.py"]


@pytest.fixture
def runs_root(app_runs_root):
    return app_runs_root


def _every_page_opens(run_name: str) -> None:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90)
    at.session_state["run"] = run_name
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_run_dir_from_an_older_version(runs_root):
    d = make_fake_run(runs_root / "old", n=30)
    cfg = json.loads((d / "config.json").read_text())
    atomic_write_json(d / "config.json", {"settings": cfg["settings"], "classes": cfg["classes"]})  # no format
    st_ = json.loads((d / "status.json").read_text())
    st_.pop("format", None)
    atomic_write_json(d / "status.json", st_)
    # samples.csv without the optional columns (truth, per-epoch FFT losses)
    with open(d / "samples.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [c for c in rows[0] if c not in ("clean_label", "is_noisy") and not c.startswith("loss_fft_")]
    buf = io.StringIO()
    w = csv.DictWriter(buf, keep, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    (d / "samples.csv").write_text(buf.getvalue(), encoding="utf-8")
    for f in ("thumbs.npy", "features_post.npy", "gmm.json", "skipped.csv"):
        (d / f).unlink()
    assert Run(d).missing() == ["thumbs.npy"]
    _every_page_opens("old")


def test_run_dir_half_written_only_status(runs_root):
    d = runs_root / "half"
    d.mkdir()
    atomic_write_json(d / "status.json", {"state": "running", "pid": _dead_pid(), "started": 1.0})
    assert Run(d).missing() == ["config.json", "samples.csv", "thumbs.npy", "features_pre.npy"]
    _every_page_opens("half")
    assert Run(d).status["state"] == "interrupted"


def test_run_dir_truncated_events_line(runs_root):
    d = make_fake_run(runs_root / "torn", n=30, state="running")
    st_ = json.loads((d / "status.json").read_text())
    st_["pid"] = _dead_pid()
    atomic_write_json(d / "status.json", st_)
    for f in ("samples.csv", "thumbs.npy", "features_post.npy", "metrics.json", "gmm.json"):
        (d / f).unlink()
    n_events = len(Run(d).events())
    with open(d / "events.jsonl", "a", encoding="utf-8") as f:
        f.write('{"t": 1700000000.0, "phase": "fft", "kind": "ep')   # killed mid-write
    assert len(Run(d).events()) == n_events
    assert Run(d).missing() == ["samples.csv", "thumbs.npy"]
    _every_page_opens("torn")
