"""Decode any image a dataset may hold into upright 8-bit RGB, resize it, and re-encode it as JPEG.

Used by ``prepare`` (once per image, so trials never decode multi-megapixel originals) and by ``predict``.
Handles EXIF rotation, grayscale, palette, alpha, CMYK and 16-bit images. A file that cannot be decoded raises
:class:`BadImage` with a short reason; ``prepare`` lists those instead of dropping them silently.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIDE = 16  # smaller images carry no usable lesion detail (a 1x1 image is a broken export, not a photo)


class BadImage(Exception):
    """An image file that cannot be used; the message is the reason (e.g. 'truncated JPEG')."""


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        span = max(float(arr.max() - arr.min()), 1e-12)
        img = Image.fromarray(((arr - arr.min()) / span * 255.0).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def load_rgb(source: str | Path | bytes, draft_size: int | None = None) -> Image.Image:
    """Open ``source`` (a path or encoded bytes) as upright RGB; ``draft_size`` lets JPEG decode at reduced scale."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            if draft_size and img.format == "JPEG":
                # DCT scaling: decode a 6000x4000 JPEG at 1/2..1/8 size, far faster, never below 2x the target
                img.draft("RGB", (draft_size * 2, draft_size * 2))
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadImage(f"cannot decode image ({reason})") from exc
    if min(img.size) < MIN_SIDE:
        raise BadImage(f"image is {img.size[0]}x{img.size[1]} pixels; at least {MIN_SIDE} px per side needed")
    return _to_rgb(ImageOps.exif_transpose(img))


def resize_shorter_side(img: Image.Image, size: int) -> Image.Image:
    """Scale so the shorter side is ``size``, keeping the aspect ratio (and so the lesion's geometry)."""
    w, h = img.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    if new == (w, h):
        return img
    return img.resize(new, Image.Resampling.BICUBIC, reducing_gap=3.0)


def encode_jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    return buf.getvalue()


def prepare_image(path: str | Path, size: int, quality: int = 90) -> bytes:
    """The whole per-image step of ``prepare``: decode, make upright RGB, resize, re-encode."""
    return encode_jpeg(resize_shorter_side(load_rgb(path, draft_size=size), size), quality)
