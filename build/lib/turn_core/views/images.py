"""Thumbnails as PNG bytes for the pages (pixels repeated so small thumbnails stay crisp)."""
from __future__ import annotations

import io
import math

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
