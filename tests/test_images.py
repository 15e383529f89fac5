"""turn_core.images: safe decoding of every mode, resizing, the memmap cache, thumbnails."""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from turn_core import images
from turn_core.errors import Cancelled
from turn_core.images import (
    ImageSkip,
    build_image_cache,
    load_rgb,
    make_thumbnails,
    resize_square,
)
from turn_core.progress import CancelToken


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


# --------------------------------------------------------------------------- modes
def test_rgb_jpeg_and_grayscale(tmp_path):
    out = load_rgb(_save(Image.new("RGB", (10, 6), (200, 10, 10)), tmp_path / "a.jpg"))
    assert out.mode == "RGB" and out.size == (10, 6)
    grey = load_rgb(_save(Image.new("L", (4, 4), 77), tmp_path / "g.png"))
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == (77, 77, 77)
    one = load_rgb(_save(Image.new("1", (4, 4), 1), tmp_path / "b.png"))
    assert one.getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_jpeg(tmp_path):
    path = _save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "c.jpg", quality=95)
    r, g, b = load_rgb(path).getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60  # cyan 0, magenta+yellow full → red


def test_16bit_png_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(values, mode="I;16"), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(load_rgb(path))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    assert np.all(out[..., 0] == out[..., 2])


def test_32bit_int_and_float(tmp_path):
    ints = Image.fromarray(np.array([[0, 1000, 65535]], dtype=np.int32), mode="I")
    out = np.asarray(load_rgb(_save(ints, tmp_path / "i.tiff")))
    assert out[0, :, 0].tolist() == [0, 4, 255]
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    out = np.asarray(load_rgb(_save(floats, tmp_path / "f.tiff")))
    assert out[0, :, 0].tolist() == [0, 128, 255]


def test_rgba_composited_on_white(tmp_path):
    arr = np.zeros((2, 2, 4), np.uint8)
    arr[0, 0] = (255, 0, 0, 255)   # opaque red
    arr[0, 1] = (255, 0, 0, 0)     # fully transparent → white
    arr[1, 0] = (0, 0, 0, 128)     # half-transparent black → mid grey
    out = np.asarray(load_rgb(_save(Image.fromarray(arr, "RGBA"), tmp_path / "t.png")))
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [255, 255, 255]
    assert 120 <= out[1, 0, 0] <= 135


def test_la_and_palette_with_transparency(tmp_path):
    la = Image.new("LA", (2, 2), (0, 0))
    assert np.asarray(load_rgb(_save(la, tmp_path / "la.png"))).min() == 255
    pal = Image.new("P", (2, 2), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    assert load_rgb(_save(pal, tmp_path / "p.png")).getpixel((0, 0)) == (0, 255, 0)
    _save(pal, tmp_path / "pt.png", transparency=1)
    assert load_rgb(tmp_path / "pt.png").getpixel((0, 0)) == (255, 255, 255)


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(path).n_frames == 2
    r, _, b = load_rgb(path).getpixel((3, 3))
    assert r > 200 and b < 50


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = _save(img, tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    out = load_rgb(path)
    assert out.size == (20, 40)
    arr = np.asarray(out).mean(axis=(1, 2))
    assert arr[:20].mean() > 200 and arr[20:].mean() < 50  # the white half is now on top


# --------------------------------------------------------------------------- skips
def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A valid-looking PNG that declares w × h pixels but holds none: a bomb made cheaply."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("make, reason", [
    (lambda p: p.write_bytes(b"") or p, "zero-byte file"),
    (lambda p: p.write_text("hello, I am text") or p, "not an image (cannot identify image file)"),
    (lambda p: p, "file not found"),
])
def test_skip_reasons(tmp_path, make, reason):
    path = tmp_path / "bad.jpg"
    make(path)
    with pytest.raises(ImageSkip) as e:
        load_rgb(path)
    assert e.value.reason == reason


def test_truncated_jpeg(tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageSkip) as e:
        load_rgb(path)
    assert e.value.reason == "truncated or corrupt image"


def test_decompression_bomb_header_refused_before_decode(tmp_path):
    # 9000 × 9000 = 81 M pixels: above our 64 M limit, below Pillow's own error threshold,
    # so only the explicit size check (before load()) stops it.
    path = _png_header_only(tmp_path / "bomb.png", 9000, 9000)
    with pytest.raises(ImageSkip) as e:
        load_rgb(path)
    assert e.value.reason == "decompression bomb: 9000×9000 pixels exceeds limit 64000000"
    # Far larger: Pillow's own guard fires inside Image.open; still a skip, same wording.
    huge = _png_header_only(tmp_path / "huge.png", 100_000, 100_000)
    with pytest.raises(ImageSkip) as e:
        load_rgb(huge, max_pixels=10**12)
    assert e.value.reason.startswith("decompression bomb: 10000000000 pixels exceeds limit")


def test_decompression_bomb_lowered_limit(tmp_path):
    path = _save(Image.new("1", (200, 100)), tmp_path / "big.png")
    with pytest.raises(ImageSkip, match="200×100 pixels exceeds limit 10000"):
        load_rgb(path, max_pixels=10_000)
    assert load_rgb(path, max_pixels=20_000).size == (200, 100)


def test_unreadable_permission(tmp_path):
    import os

    path = _save(Image.new("RGB", (4, 4)), tmp_path / "locked.png")
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(ImageSkip, match="^unreadable: "):
            load_rgb(path)
    finally:
        path.chmod(0o644)


# --------------------------------------------------------------------------- resize
def test_resize_square_shorter_side_and_centre_crop():
    arr = np.zeros((20, 60, 3), np.uint8)   # wide: 60 × 20
    arr[:, 20:40] = 255                       # white centre third
    out = resize_square(Image.fromarray(arr), 10)
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    assert out[:, 2:8].min() > 200            # the crop is the centre
    tall = resize_square(Image.fromarray(np.zeros((90, 30, 3), np.uint8)), 15)
    assert tall.shape == (15, 15, 3)
    up = resize_square(Image.new("L", (3, 5), 9), 12)   # upscale, non-RGB input
    assert up.shape == (12, 12, 3) and int(up.mean()) == 9


def test_jpeg_draft_keeps_result_close(tmp_path):
    grad = np.tile(np.linspace(0, 255, 800, dtype=np.uint8), (600, 1))
    path = _save(Image.fromarray(np.stack([grad] * 3, -1)), tmp_path / "big.jpg", quality=95)
    full = resize_square(load_rgb(path), 32).astype(int)
    fast = resize_square(load_rgb(path, draft_size=32), 32).astype(int)
    assert np.abs(full - fast).mean() < 3


# --------------------------------------------------------------------------- cache
@pytest.fixture
def image_files(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    files = []
    for i in range(9):
        files.append(_save(Image.new("RGB", (12 + i, 10), (i * 20, 5, 5)), folder / f"{i}.png"))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("no")
    files += [folder / "empty.jpg", folder / "text.jpg", folder / "gone.png"]
    return files


def test_cache_shape_values_and_skipped(tmp_path, image_files):
    events = []
    imgs, skipped = build_image_cache(image_files, 8, tmp_path / "cache", key="k1",
                                      progress=events.append, workers=3)
    assert imgs.shape == (12, 8, 8, 3) and imgs.dtype == np.uint8
    assert not imgs.flags.writeable
    assert skipped == {9: "zero-byte file", 10: "not an image (cannot identify image file)",
                       11: "file not found"}
    assert np.all(imgs[9:] == 0)
    assert imgs[3, 4, 4].tolist() == [60, 5, 5]
    assert events and events[-1]["step"] == events[-1]["steps"] == 12
    assert all(e["phase"] == "cache" and e["kind"] == "step" and e["images_per_s"] > 0
               for e in events)
    assert (tmp_path / "cache" / "images-k1-8.npy").exists()
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")]


def test_cache_reused_without_decoding(tmp_path, image_files, monkeypatch):
    first, skipped1 = build_image_cache(image_files, 8, tmp_path / "c", key="same")

    def boom(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(images, "load_rgb", boom)
    second, skipped2 = build_image_cache(image_files, 8, tmp_path / "c", key="same")
    assert np.array_equal(first, second) and skipped1 == skipped2
    # A different size is a different cache: it must decode (and here every decode fails).
    _, skipped3 = build_image_cache(image_files, 6, tmp_path / "c", key="same")
    assert set(skipped3) == set(range(12))
    assert all(r.startswith("could not decode: AssertionError") for r in skipped3.values())


def test_half_written_cache_is_not_trusted(tmp_path, image_files):
    cache = tmp_path / "c"
    imgs, _ = build_image_cache(image_files, 8, cache, key="k")
    del imgs
    (cache / "images-k-8.json").unlink()   # as if killed between writing array and sidecar
    (cache / "images-k-8.npy").write_bytes(b"garbage")
    imgs, skipped = build_image_cache(image_files, 8, cache, key="k")
    assert imgs.shape == (12, 8, 8, 3) and len(skipped) == 3


def test_cache_cancel_leaves_no_files(tmp_path, image_files):
    token = CancelToken()
    calls = []

    def progress(ev):
        calls.append(ev)
        token.cancel()

    with pytest.raises(Cancelled):
        build_image_cache(image_files * 10, 8, tmp_path / "c", key="x", progress=progress,
                          cancel=token)
    assert len(calls) == 1
    assert list((tmp_path / "c").iterdir()) == []


def test_cache_default_key_and_empty(tmp_path, image_files):
    a, _ = build_image_cache(image_files[:3], 4, tmp_path / "c")
    b, _ = build_image_cache(image_files[:4], 4, tmp_path / "c")
    assert a.shape[0] == 3 and b.shape[0] == 4
    empty, skipped = build_image_cache([], 4, tmp_path / "c", key="none")
    assert empty.shape == (0, 4, 4, 3) and skipped == {}


# --------------------------------------------------------------------------- thumbnails
def test_make_thumbnails():
    imgs = np.zeros((3, 16, 16, 3), np.uint8)
    imgs[1] = 200
    th = make_thumbnails(imgs, 4)
    assert th.shape == (3, 4, 4, 3) and th.dtype == np.uint8
    assert np.all(th[1] == 200) and np.all(th[0] == 0)
    same = make_thumbnails(imgs, 64)
    assert same.shape == (3, 16, 16, 3) and np.array_equal(same, imgs)
    assert same is not imgs


def test_make_thumbnails_of_some_rows_in_their_order():
    imgs = np.zeros((4, 8, 8, 3), np.uint8)
    for i in range(4):
        imgs[i] = 10 * (i + 1)
    th = make_thumbnails(imgs, 4, rows=np.array([3, 0]))
    assert th.shape == (2, 4, 4, 3)
    assert np.all(th[0] == 40) and np.all(th[1] == 10)
    assert np.array_equal(make_thumbnails(imgs, 8, rows=[2]), imgs[[2]])


# --------------------------------------------------------------------------- cache key
def _manifest(path: Path, labels: list[str]) -> Path:
    path.write_text("path,label\n" + "".join(f"imgs/{i}.png,{lab}\n" for i, lab in enumerate(labels)),
                    encoding="utf-8")
    return path


def test_cache_key_ignores_labels_and_reuses_the_cache(tmp_path, image_files, monkeypatch):
    """A rerun on a cleaned (relabelled) manifest lists the same files: same cache entry."""
    from turn_core.data import load_dataset

    labels = ["a", "b"] * 4 + ["a"]
    first = load_dataset(_manifest(tmp_path / "m1.csv", labels))
    cleaned = load_dataset(_manifest(tmp_path / "m2.csv", ["b" if x == "a" else "a" for x in labels]))
    assert first.fingerprint() != cleaned.fingerprint()      # "this dataset with these labels"
    assert images.cache_key(first.files) == images.cache_key(cleaned.files)
    a, _ = build_image_cache(first.files, 8, tmp_path / "c")

    def boom(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(images, "load_rgb", boom)
    b, skipped = build_image_cache(cleaned.files, 8, tmp_path / "c")
    assert skipped == {} and np.array_equal(a, b)
    assert len(list((tmp_path / "c").glob("images-*-8.npy"))) == 1


def test_cache_key_changes_with_the_file(tmp_path, image_files):
    files = image_files[:4]
    key = images.cache_key(files)
    assert key == images.cache_key(list(files)) and len(key) == 24
    st = files[2].stat()
    os.utime(files[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))       # touched: new mtime
    touched = images.cache_key(files)
    assert touched != key
    files[1].write_bytes(files[1].read_bytes() + b"\0")                      # new size
    assert images.cache_key(files) not in (key, touched)
    assert images.cache_key(files[::-1]) != images.cache_key(files)          # row order matters


# --------------------------------------------------------------------------- no room for a cache
def test_cache_fits_against_the_free_disk(tmp_path, monkeypatch):
    """A cache fits when its bytes plus the reserve are free; the figure comes from the disk."""
    need = images.cache_bytes(1000, 32)
    assert need == 1000 * 32 * 32 * 3 + 4096
    monkeypatch.setattr(images, "free_disk_bytes", lambda path: need + images.DISK_RESERVE_BYTES)
    assert images.cache_fits(1000, 32, tmp_path) == (True, need, need + images.DISK_RESERVE_BYTES)
    monkeypatch.setattr(images, "free_disk_bytes", lambda path: need + images.DISK_RESERVE_BYTES - 1)
    assert images.cache_fits(1000, 32, tmp_path)[0] is False


def test_free_disk_bytes_of_a_folder_not_made_yet(tmp_path):
    assert images.free_disk_bytes(tmp_path / "not" / "yet") == images.free_disk_bytes(tmp_path) > 0


def test_cache_ready_only_for_a_finished_cache(tmp_path, image_files):
    assert not images.cache_ready(image_files, 8, tmp_path / "cache")
    build_image_cache(image_files, 8, tmp_path / "cache")
    assert images.cache_ready(image_files, 8, tmp_path / "cache")
    assert not images.cache_ready(image_files, 16, tmp_path / "cache")


def test_decoded_images_match_the_cache(tmp_path, image_files):
    """Without a cache the files decode to exactly the cache's rows (zeros where unreadable)."""
    cached, _ = build_image_cache(image_files, 8, tmp_path / "cache")
    decoded = images.DecodedImages(image_files, 8)
    assert decoded.shape == cached.shape and len(decoded) == len(cached) and decoded.dtype == np.uint8
    rows = np.array([8, 0, 9, 3])
    assert np.array_equal(decoded[rows], cached[rows])
    assert np.array_equal(decoded[2], cached[2])


def test_scan_images_finds_the_skips_and_makes_thumbnails(tmp_path, image_files):
    """The thumbnails are the readable files' (the run's rows), the same in memory and streamed
    to a file chunk by chunk; without a thumbnail size the scan only finds the skips."""
    cached, skipped = build_image_cache(image_files, 8, tmp_path / "cache")
    events = []
    thumbs, bad = images.scan_images(image_files, 8, 4, progress=events.append, workers=2)
    assert bad == skipped and set(bad) == {9, 10, 11}
    kept = [i for i in range(len(image_files)) if i not in bad]
    assert np.array_equal(thumbs, make_thumbnails(cached, 4, rows=kept))
    assert events[-1]["step"] == events[-1]["steps"] == len(image_files)
    mapped, bad2 = images.scan_images(image_files, 8, 4, out=tmp_path / "thumbs.npy", workers=2)
    assert bad2 == bad and isinstance(mapped, np.memmap)
    assert (tmp_path / "thumbs.npy").read_bytes() == _npy_bytes(thumbs)
    assert images.scan_images(image_files, 8, workers=2) == (None, bad)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def test_scan_images_of_only_unreadable_files(tmp_path):
    bad = [tmp_path / "a.png", tmp_path / "b.png"]
    for f in bad:
        f.write_bytes(b"not an image")
    thumbs, skipped = images.scan_images(bad, 8, 4, out=tmp_path / "thumbs.npy", workers=1)
    assert thumbs.shape == (0, 4, 4, 3) and set(skipped) == {0, 1}
    assert np.load(tmp_path / "thumbs.npy").shape == (0, 4, 4, 3)


@pytest.mark.parametrize("chunk", [1, 2, 3, None])
def test_thumbnails_in_chunks_are_the_one_array_byte_for_byte(tmp_path, chunk):
    """write_thumbnails streams chunk by chunk: the file is np.save of make_thumbnails' array
    (the path before streaming), for any chunk size, any rows and either shrink or none."""
    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
    for size, rows in ((4, None), (16, np.array([6, 0, 2, 2, 5])), (64, [1])):
        out = images.write_thumbnails(tmp_path / "thumbs.npy", imgs, size, rows, chunk=chunk)
        assert out.read_bytes() == _npy_bytes(make_thumbnails(imgs, size, rows))
        pieces = list(images.thumbnail_chunks(imgs, size, rows, chunk=chunk))
        assert all(len(p) <= (chunk or len(imgs)) for p in pieces)
    assert not list(tmp_path.glob(".*.tmp"))


def test_write_thumbnails_reads_the_memmap_one_chunk_at_a_time(tmp_path, monkeypatch):
    """Peak memory is one chunk: make_thumbnails is asked for at most ``chunk`` rows per call."""
    imgs = np.lib.format.open_memmap(tmp_path / "cache.npy", mode="w+", dtype=np.uint8, shape=(10, 8, 8, 3))
    imgs[:] = np.arange(10, dtype=np.uint8)[:, None, None, None]
    imgs.flush()
    cache = np.load(tmp_path / "cache.npy", mmap_mode="r")
    sizes = []
    real = images.make_thumbnails
    monkeypatch.setattr(images, "make_thumbnails", lambda a, s, rows=None: sizes.append(len(rows)) or real(a, s, rows))
    images.write_thumbnails(tmp_path / "thumbs.npy", cache, 4, np.arange(10), chunk=3)
    assert sizes == [3, 3, 3, 1]
    assert np.array_equal(np.load(tmp_path / "thumbs.npy")[:, 0, 0, 0], np.arange(10))


def test_release_pages_leaves_values_and_private_maps_alone(tmp_path):
    """Released pages read back the same; a copy-on-write map keeps its own changes."""
    np.save(tmp_path / "a.npy", np.arange(4096 * 3, dtype=np.uint8).reshape(3, 4096))
    ro = np.load(tmp_path / "a.npy", mmap_mode="r")
    before = np.array(ro)
    images.release_pages(ro)
    assert np.array_equal(ro, before)
    cow = np.load(tmp_path / "a.npy", mmap_mode="c")
    cow[0, 0] = 77
    images.release_pages(cow)
    assert cow[0, 0] == 77
    images.release_pages(before)                 # a plain array: nothing to do


def _mapped_kb(path: Path) -> int:
    """Resident kB of this process's mappings of ``path`` (Linux /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if line[:1].isdigit() or line[:1] in "abcdef" and "-" in line.split()[0]:
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc")
def test_release_pages_takes_read_pages_out_of_the_resident_set(tmp_path):
    path = (tmp_path / "cache.npy").resolve()
    np.save(path, np.ones((64, 64 * 1024), np.uint8))          # 4 MiB
    cache = np.load(path, mmap_mode="r")
    assert int(cache.sum()) == 64 * 64 * 1024                    # every page read
    assert _mapped_kb(path) >= 4000
    images.release_pages(cache)
    assert _mapped_kb(path) < 100
