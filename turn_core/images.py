"""Decode every image once, safely, into a uint8 memmap cache.

* ``load_rgb``: open any image Pillow reads and return it as 8-bit RGB (EXIF orientation
  applied, transparency composited on white, 16-bit and float scaled, first frame of an
  animation), or raise ``ImageSkip`` with a short reason a person can read.
* ``resize_square``: shorter side → ``size``, centre crop (timm's eval transform, crop_pct 1).
* ``build_image_cache``: decode a list of files with a thread pool into
  ``cache_dir/images-<key>-<size>.npy`` (N, size, size, 3) uint8, reused on the next run;
  images that cannot be used are zero rows, reported as ``{index: reason}``. The key
  (``cache_key``) is the files' identity only, never their labels: a relabelled manifest
  reuses the decoded images.
* ``cache_bytes`` / ``free_disk_bytes`` / ``cache_fits``: the size check made before a cache is
  built; when it would not fit, ``DecodedImages`` stands in for the cache (each batch decoded
  when asked for, in the loader's workers) and ``scan_images`` finds the unreadable files and
  makes the thumbnails in one decoding pass (written chunk by chunk as well).
* ``make_thumbnails``: small copies of the cached images for the review pages;
  ``write_thumbnails`` writes them to thumbs.npy chunk by chunk (``thumbnail_chunks``), never
  as one array (64 px thumbnails of 1M images are 12 GB).

One bad file never stops a run: it becomes a skipped row.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from struct import error as struct_error

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .progress import CancelToken, check

MAX_IMAGE_PIXELS = 64_000_000  # decompression-bomb guard: width × height above this is skipped

# Every format Pillow opens, except EPS/PS: Pillow renders those by running Ghostscript on the
# file, which is not a thing to do with an untrusted upload.
_UNSAFE_FORMATS = {"EPS"}


class ImageSkip(Exception):
    """This image cannot be used; ``reason`` is a short explanation for a person."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@lru_cache(maxsize=1)
def _open_formats() -> tuple[str, ...]:
    Image.init()  # registers every plugin, so Image.OPEN is complete
    return tuple(sorted(set(Image.OPEN) - _UNSAFE_FORMATS))


# --------------------------------------------------------------------------- decoding
def load_rgb(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS, *,
             draft_size: int | None = None) -> Image.Image:
    """Open ``path`` as an 8-bit RGB image (fully loaded, file closed).

    max_pixels: images with width × height above this are refused before any pixel is decoded.
    draft_size: optional hint that the image will be shrunk so its shorter side is
    ``draft_size``; JPEGs are then decoded at the smallest DCT scale that keeps it (much faster
    on large photos, same result after resizing).
    Raises ``ImageSkip(reason)``.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageSkip("zero-byte file")
    except FileNotFoundError:
        raise ImageSkip("file not found") from None
    except OSError as e:
        raise ImageSkip(f"unreadable: {e.strerror or e}") from None

    try:
        with Image.open(path, formats=list(_open_formats())) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageSkip(f"decompression bomb: {w}×{h} pixels exceeds limit {max_pixels}")
            if draft_size and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))  # keeps both sides >= draft_size
            img.load()
            return _to_rgb(_exif_transpose(img))
    except ImageSkip:
        raise
    except FileNotFoundError:
        raise ImageSkip("file not found") from None
    except UnidentifiedImageError:
        raise ImageSkip("not an image (cannot identify image file)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's own guard (2 × Image.MAX_IMAGE_PIXELS, global) fired inside Image.open,
        # before our check could see the size; report it in the same words.
        numbers = re.findall(r"\d+", str(e))
        detail = (f"{numbers[0]} pixels exceeds limit {numbers[1]}" if len(numbers) >= 2
                  else str(e))
        raise ImageSkip(f"decompression bomb: {detail}") from None
    except PermissionError as e:
        raise ImageSkip(f"unreadable: {e.strerror or e}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct_error) as e:
        # Pillow signals damaged data with any of these (truncated JPEG: OSError; broken PNG
        # chunk: SyntaxError; bad GIF: EOFError/IndexError).
        errno_text = getattr(e, "strerror", None)
        if isinstance(e, OSError) and errno_text:
            raise ImageSkip(f"unreadable: {errno_text}") from None
        raise ImageSkip("truncated or corrupt image") from None


def _exif_transpose(img: Image.Image) -> Image.Image:
    try:
        out = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 (a malformed EXIF block should not cost the image itself)
        return img
    return img if out is None else out


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit RGB, as a new image (never a view of the open file)."""
    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if mode == "P":
        # Palette images may carry transparency; composite those like RGBA.
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "L" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_scale_to_uint8(np.asarray(img), mode)).convert("RGB")
    return img.convert("RGB")  # 1, L, CMYK, YCbCr, LAB, HSV, ...


def _scale_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """High-bit-depth grey → uint8 by scaling its value range (not clipping it).

    16-bit (and 32-bit int data within 0..65535, how older Pillow opens 16-bit PNGs):
    v / 257, so 0 → 0 and 65535 → 255. Float in [0, 1]: v × 255. Anything else: min–max.
    """
    a = a.astype(np.float64)
    if a.size == 0:
        return a.astype(np.uint8)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535 and hi > 255):
        out = a / 257.0
    elif mode == "I" and lo >= 0 and hi <= 255:
        out = a
    elif mode == "F" and lo >= 0 and hi <= 1:
        out = a * 255.0
    else:
        out = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(np.nan_to_num(out)), 0, 255).astype(np.uint8)


def resize_square(img: Image.Image, size: int) -> np.ndarray:
    """Resize so the shorter side is ``size`` (bicubic), then centre-crop to a square.

    Returns (size, size, 3) uint8. Matches timm's eval transform with crop_pct = 1.
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left = round((nw - size) / 2.0)
    top = round((nh - size) / 2.0)
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8).reshape(size, size, 3)


# --------------------------------------------------------------------------- cache
def cache_key(files: Sequence[str | Path]) -> str:
    """24 hex digits identifying these files as they are on disk: absolute path, byte size and
    modification time of each, in order. Labels play no part, so two manifests listing the same
    files share one cache; an edited or replaced file (new size or mtime) gets a new one."""
    import hashlib

    h = hashlib.sha256()
    for f in files:
        try:
            st = os.stat(f)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{os.fspath(f)}\0{stamp}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:24]


def cache_paths(cache_dir: str | Path, key: str, size: int) -> tuple[Path, Path]:
    """(array file, sidecar json) of the cache with this key and size."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
    base = Path(cache_dir) / f"images-{safe}-{size}"
    return base.with_suffix(".npy"), base.with_suffix(".json")


def _load_cached(npy: Path, side: Path, n: int, size: int) -> tuple[np.ndarray, dict[int, str]] | None:
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        arr = np.load(npy, mmap_mode="r", allow_pickle=False) if n else np.zeros((0, size, size, 3), np.uint8)
    except (OSError, ValueError):
        return None
    if arr.shape != (n, size, size, 3) or arr.dtype != np.uint8 or meta.get("n") != n:
        return None
    return arr, {int(k): str(v) for k, v in meta.get("skipped", {}).items()}


def _decode(path: Path, size: int) -> tuple[np.ndarray | None, str | None]:
    try:
        return resize_square(load_rgb(path, draft_size=size), size), None
    except ImageSkip as e:
        return None, e.reason
    except Exception as e:  # noqa: BLE001 (one file never stops the run; the reason lands in skipped.csv)
        return None, f"could not decode: {type(e).__name__}: {e}"


def build_image_cache(files: Sequence[str | Path], size: int, cache_dir: str | Path, *,
                      key: str | None = None,
                      progress: Callable[[dict], None] | None = None,
                      cancel: CancelToken | None = None,
                      workers: int | None = None) -> tuple[np.ndarray, dict[int, str]]:
    """Decode ``files`` once into a (N, size, size, 3) uint8 array cached on disk.

    key: identity of the cache; default ``cache_key(files)`` (paths, sizes, modification
    times). The cache ``cache_dir/images-<key>-<size>.npy`` plus a JSON
    sidecar (skipped rows) is reused when both exist and match N and size. Both are written
    under temporary names and renamed, array first and sidecar last, so an interrupted build
    is never mistaken for a finished one.
    progress: called with ``{"phase": "cache", "kind": "step", "step", "steps",
    "images_per_s", "t"}`` about every 2% of the files.
    cancel: checked between chunks; raises ``turn_core.errors.Cancelled`` (the partial file is
    removed).
    workers: decoding threads (Pillow releases the GIL while decoding); default
    min(8, cpu count).

    Returns ``(images, skipped)``: a read-only memmap with row i = files[i] (zeros for a skipped
    file) and ``{row index: reason}``.
    """
    files = [Path(f) for f in files]
    n = len(files)
    size = int(size)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = key or cache_key(files)
    npy, side = cache_paths(cache_dir, key, size)
    if npy.exists() and side.exists() or (n == 0 and side.exists()):
        cached = _load_cached(npy, side, n, size)
        if cached is not None:
            return cached

    tmp_npy = npy.with_name(f".{npy.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    skipped: dict[int, str] = {}
    workers = workers or min(8, os.cpu_count() or 1)
    chunk = max(1, min(256, -(-n // 50)))  # ~2% of the files per progress event
    started = time.perf_counter()
    out = None
    try:
        if n:
            out = np.lib.format.open_memmap(tmp_npy, mode="w+", dtype=np.uint8,
                                            shape=(n, size, size, 3))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for lo in range(0, n, chunk):
                check(cancel)
                hi = min(n, lo + chunk)
                for i, (arr, reason) in enumerate(pool.map(lambda f: _decode(f, size), files[lo:hi]), lo):
                    if reason is None:
                        out[i] = arr
                    else:
                        out[i] = 0
                        skipped[i] = reason
                if progress is not None:
                    elapsed = max(time.perf_counter() - started, 1e-9)
                    progress({"phase": "cache", "kind": "step", "step": hi, "steps": n,
                              "images_per_s": hi / elapsed, "t": time.time()})
        if out is not None:
            out.flush()
            del out
            out = None
            with open(tmp_npy, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp_npy, npy)
        meta = {"n": n, "size": size, "key": key,
                "skipped": {str(i): r for i, r in sorted(skipped.items())}}
        from .rundir import atomic_write_json

        atomic_write_json(side, meta)
    finally:
        if out is not None:
            del out
        if tmp_npy.exists():
            tmp_npy.unlink()
    images = (np.load(npy, mmap_mode="r", allow_pickle=False) if n
              else np.zeros((0, size, size, 3), np.uint8))
    return images, skipped


# --------------------------------------------------------------------------- no room for a cache
# Left free on the cache's disk beyond the cache itself: the run directory, logs and the other
# programs on the machine need room too.
DISK_RESERVE_BYTES = 1 << 30


def cache_bytes(n: int, size: int) -> int:
    """Bytes on disk of a cache of ``n`` images of ``size`` px (uint8 RGB plus the .npy header)."""
    return int(n) * int(size) * int(size) * 3 + 4096


def free_disk_bytes(path: str | Path) -> int:
    """Free bytes on the disk holding ``path`` (its nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def cache_ready(files: Sequence[str | Path], size: int, cache_dir: str | Path, key: str | None = None) -> bool:
    """True when a finished cache of these files at this size is already on disk."""
    npy, side = cache_paths(cache_dir, key or cache_key(files), int(size))
    return npy.exists() and side.exists() and _load_cached(npy, side, len(files), int(size)) is not None


def cache_fits(n: int, size: int, cache_dir: str | Path) -> tuple[bool, int, int]:
    """(fits, bytes needed, bytes free): whether a new cache of ``n`` images at ``size`` px fits
    on the cache's disk with ``DISK_RESERVE_BYTES`` to spare."""
    need, free = cache_bytes(n, size), free_disk_bytes(cache_dir)
    return need + DISK_RESERVE_BYTES <= free, need, free


class DecodedImages:
    """The files as an (N, size, size, 3) uint8 array that decodes on indexing, for runs whose
    cache would not fit on the disk. ``images[rows]`` decodes those files (rows (B,) int or one
    int) exactly as the cache would hold them; an unreadable file gives a zero image, as its
    cache row would (``scan_images`` reports which files those are)."""

    dtype = np.dtype(np.uint8)
    decodes = True   # tells the loader that batches cost a decode (it then uses workers)

    def __init__(self, files: Sequence[str | Path], size: int):
        self.files = [Path(f) for f in files]
        self.size = int(size)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), self.size, self.size, 3)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, rows) -> np.ndarray:
        if np.ndim(rows) == 0:
            return self[np.array([int(rows)])][0]
        out = np.zeros((len(rows), self.size, self.size, 3), dtype=np.uint8)
        for i, r in enumerate(np.asarray(rows, dtype=np.int64)):
            arr, _ = _decode(self.files[r], self.size)
            if arr is not None:
                out[i] = arr
        return out


def scan_images(files: Sequence[str | Path], size: int, thumb_size: int | None = None, *,
                out: str | Path | None = None, progress: Callable[[dict], None] | None = None,
                cancel: CancelToken | None = None, workers: int | None = None) -> tuple[np.ndarray | None, dict[int, str]]:
    """Decode every file once at ``size`` px without keeping it: returns (thumbnails, {row: reason}).

    thumbnails: (M, T, T, 3) uint8, T = min(thumb_size, size), of the M readable files in
    order (row j = the j-th file not in the skipped dict), so they line up with the run's rows;
    None when ``thumb_size`` is None (the scan only finds the unreadable files). With ``out``
    they are written to that .npy chunk by chunk as they are made (``rundir.write_npy_chunks``:
    one chunk in memory, never all M) and returned as its read-only memmap.
    Progress events as ``build_image_cache``'s.
    """
    from .rundir import write_npy_chunks

    files = [Path(f) for f in files]
    skipped: dict[int, str] = {}
    chunks = _scan_chunks(files, int(size), thumb_size, skipped, progress, cancel,
                          workers or min(8, os.cpu_count() or 1))
    if thumb_size is None:
        for _ in chunks:
            pass
        return None, skipped
    t = min(int(thumb_size), int(size))
    if out is None:
        return np.concatenate([np.empty((0, t, t, 3), np.uint8), *chunks]), skipped
    write_npy_chunks(out, (None, t, t, 3), np.uint8, chunks)
    if len(skipped) == len(files):   # no rows: numpy cannot map an empty array
        return np.zeros((0, t, t, 3), np.uint8), skipped
    return np.load(out, mmap_mode="r", allow_pickle=False), skipped


def _scan_chunks(files: list[Path], size: int, thumb_size: int | None, skipped: dict[int, str],
                 progress, cancel, workers: int):
    """``scan_images``' pass: yields, per chunk of about 2% of the files, the (m, T, T, 3)
    thumbnails of its readable files ((0, ...) when ``thumb_size`` is None), and records the
    others in ``skipped``."""
    n = len(files)
    t = min(int(thumb_size or size), size)
    chunk = max(1, min(256, -(-n // 50)))
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for lo in range(0, n, chunk):
            check(cancel)
            hi = min(n, lo + chunk)
            thumbs = []
            for i, (arr, reason) in enumerate(pool.map(lambda f: _decode(f, size), files[lo:hi]), lo):
                if reason is not None:
                    skipped[i] = reason
                elif thumb_size is not None:
                    thumbs.append(make_thumbnails(arr[None], t)[0])
            if progress is not None:
                progress({"phase": "cache", "kind": "step", "step": hi, "steps": n,
                          "images_per_s": hi / max(time.perf_counter() - started, 1e-9), "t": time.time()})
            yield np.stack(thumbs) if thumbs else np.empty((0, t, t, 3), np.uint8)


# --------------------------------------------------------------------------- thumbnails
def make_thumbnails(images: np.ndarray, size: int, rows: np.ndarray | None = None) -> np.ndarray:
    """(M, S, S, 3) uint8 → (N, T, T, 3) uint8 with T = min(size, S) (area-averaged shrink).

    rows: (N,) indices of the images to shrink, in output order (default: all M). Rows are read
    one at a time, so ``images`` may be the on-disk memmap of any size.
    """
    rows = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)
    s = images.shape[1]
    t = min(int(size), s)
    out = np.empty((len(rows), t, t, 3), dtype=np.uint8)
    for i, r in enumerate(rows):
        img = np.asarray(images[r])
        out[i] = img if t == s else np.asarray(Image.fromarray(img).resize((t, t), Image.Resampling.BOX))
    return out


def thumbnail_chunks(images: np.ndarray, size: int, rows: np.ndarray | None = None,
                     chunk: int | None = None):
    """``make_thumbnails(images, size, rows)`` in consecutive pieces of ``chunk`` rows (default:
    as many as make about ``rundir.CHUNK_BYTES`` of source images): yields (m, T, T, 3) uint8
    arrays whose concatenation is the one array, so a writer holds one piece at a time. The
    source's pages read for a piece are released after it (``release_pages``)."""
    from .rundir import chunk_rows

    rows = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)
    # the source rows read per piece are the larger ones, so they set its size
    step = chunk or chunk_rows(int(np.prod(images.shape[1:])) * np.dtype(images.dtype).itemsize)
    for lo in range(0, len(rows), step):
        piece = make_thumbnails(images, size, rows[lo:lo + step])
        release_pages(images)
        yield piece


def release_pages(images) -> None:
    """Take the pages of a read-only memmap (``np.load(..., mmap_mode="r")``) that this process
    has read out of its resident set; they stay in the page cache, and a later read maps them
    again without disk I/O. Mapped pages count in RSS, so reading a whole 1M-image cache once
    would otherwise show as its full size. Anything else (an array, a writable or
    copy-on-write map, whose private pages this would throw away) is left alone."""
    import mmap

    base = getattr(images, "base", None)
    if getattr(images, "mode", None) == "r" and isinstance(base, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        base.madvise(mmap.MADV_DONTNEED)


def write_thumbnails(path: str | Path, images: np.ndarray, size: int, rows: np.ndarray | None = None,
                     chunk: int | None = None) -> Path:
    """thumbs.npy of ``images[rows]`` (see ``make_thumbnails``), written chunk by chunk
    (``thumbnail_chunks``, ``rundir.write_npy_chunks``): the same bytes as saving the one
    array, with one chunk in memory."""
    from .rundir import write_npy_chunks

    n = len(images) if rows is None else len(rows)
    t = min(int(size), images.shape[1])
    return write_npy_chunks(path, (n, t, t, 3), np.uint8, thumbnail_chunks(images, size, rows, chunk))


__all__ = ["DISK_RESERVE_BYTES", "MAX_IMAGE_PIXELS", "DecodedImages", "ImageSkip", "build_image_cache",
           "cache_bytes", "cache_fits", "cache_key", "cache_paths", "cache_ready", "free_disk_bytes", "load_rgb",
           "make_thumbnails", "release_pages", "resize_square", "scan_images", "thumbnail_chunks",
           "write_thumbnails"]
