"""Images for the pages: thumbnails as PNG bytes (pixels repeated so small thumbnails stay crisp),
and the original file behind a sample for the Review page's focus card, safely decoded."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np


def upscale_nearest(img: np.ndarray, min_side: int = 96) -> np.ndarray:
    """(H, W[, C]) → (f·H, f·W[, C]): repeat pixels so the shorter side is at least ``min_side``."""
    a = np.asarray(img)
    if a.ndim < 2 or min(a.shape[:2]) == 0:
        return a
    f = max(1, math.ceil(min_side / min(a.shape[:2])))
    if f == 1:
        return a
    return np.repeat(np.repeat(a, f, axis=0), f, axis=1)


def png_bytes(img: np.ndarray, min_side: int = 96) -> bytes:
    """A uint8 (H, W, 3) image, upscaled by ``upscale_nearest``, encoded as PNG."""
    from PIL import Image

    buf = io.BytesIO()
    pixels = np.ascontiguousarray(upscale_nearest(img, min_side)).astype(np.uint8)
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------ the original file
FULL_SIDE = 1200          # the focus card's image is downscaled so its longer side fits this
FILE_KINDS = ("folder", "csv")  # datasets whose rows are files under dataset.root (not hf, demo)


def original_path(dataset: dict | None, path: str) -> Path | None:
    """The file behind a samples.csv ``path``: ``dataset`` is config.json's "dataset" record
    ({"root", "kind"}); None when the rows have no files (Hugging Face, demo) or the path
    leaves the dataset root (``..`` or a link out), so the page never reads outside it."""
    if not dataset or dataset.get("kind") not in FILE_KINDS or not dataset.get("root") or not path:
        return None
    root = Path(dataset["root"]).resolve()
    p = Path(path)
    full = (p if p.is_absolute() else root / p).resolve()
    return full if full == root or root in full.parents else None


def original_image(dataset: dict | None, path: str, max_side: int = FULL_SIDE) -> tuple[np.ndarray | None, str]:
    """(uint8 (H, W, 3) image or None, a note for the caption).

    The original file, decoded safely by ``turn_core.images.load_rgb`` (EXIF orientation
    applied, decompression bombs refused) and downscaled so its longer side is at most
    ``max_side``; None with the reason when there is no readable file, so the page shows the
    thumbnail and says why."""
    from ..images import ImageSkip, load_rgb

    p = original_path(dataset, path)
    if p is None:
        kind = (dataset or {}).get("kind")
        if kind not in FILE_KINDS or not (dataset or {}).get("root"):
            return None, f"no original file: a {kind or 'unknown'} dataset has none on disk"
        return None, "the file lies outside the dataset folder"
    try:
        img = load_rgb(p, draft_size=max_side)
    except ImageSkip as e:
        return None, f"original not readable: {e.reason}"
    w, h = img.size
    if max(w, h) > max_side:
        img.thumbnail((max_side, max_side))
    return np.asarray(img, dtype=np.uint8), f"original {w}×{h}" + (f", shown at {img.size[0]}×{img.size[1]}"
                                                                  if img.size != (w, h) else "")


def zoom(img: np.ndarray, factor: float, centre: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """The part of ``img`` (H, W[, C]) a zoom of ``factor`` (≥ 1) around ``centre`` (x, y as
    shares of width and height) shows: a crop 1/factor of each side, kept inside the image."""
    a = np.asarray(img)
    f = max(float(factor), 1.0)
    h, w = a.shape[:2]
    ch, cw = max(1, round(h / f)), max(1, round(w / f))
    y0 = int(min(max(round(centre[1] * h - ch / 2), 0), h - ch))
    x0 = int(min(max(round(centre[0] * w - cw / 2), 0), w - cw))
    return a[y0:y0 + ch, x0:x0 + cw]
