"""Image bytes or path -> RGB uint8 (H, W, 3), with the EXIF facts the pipeline needs.

Decoding is Pillow only (no other image library): the EXIF orientation is applied, every mode
(1-bit, grey, palette, grey+alpha, RGBA, CMYK, YCbCr, 16-bit grey, 32-bit int/float) ends as
RGB uint8, and the pixel count is checked from the header before any pixel is decoded, so a
decompression bomb costs nothing. Alpha is dropped (the colour under it is kept), as the
official pipeline's `cv2.imread(IMREAD_COLOR)` does.
"""
from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from server.errors import BAD_IMAGE, ServerError

DEFAULT_MAX_PIXELS = 100_000_000  # ~100 MP: larger than any camera photo, ~300 MB as RGB
_EXIF_IFD = 0x8769
_TAG_ORIENTATION = 0x0112
_TAG_FOCAL_35MM = 0xA405
_TAG_FOCAL = 0x920A


def _read_source(source: str | os.PathLike | bytes | bytearray | memoryview) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "<bytes>"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ServerError(BAD_IMAGE, f"Image file not found: {path}")
        if path.is_dir():
            raise ServerError(BAD_IMAGE, f"Expected an image file but got a directory: {path}")
        try:
            return path.read_bytes(), str(path)
        except OSError as exc:
            raise ServerError(BAD_IMAGE, f"Cannot read image file {path}: {exc.strerror or exc}") from None
    raise ServerError(BAD_IMAGE, f"An image must be a file path or bytes, got {type(source).__name__}.")


def _exif_facts(img: Image.Image) -> dict[str, Any]:
    """Orientation and focal lengths; any broken EXIF block just means 'unknown'."""
    facts: dict[str, Any] = {"exif_orientation": None, "exif_focal_35mm": None, "exif_focal_mm": None}
    try:
        exif = img.getexif()
        orientation = exif.get(_TAG_ORIENTATION)
        if orientation is not None:
            facts["exif_orientation"] = int(orientation)
        sub = exif.get_ifd(_EXIF_IFD)
        for tag, key in ((_TAG_FOCAL_35MM, "exif_focal_35mm"), (_TAG_FOCAL, "exif_focal_mm")):
            value = sub.get(tag, exif.get(tag))
            if value is None:
                continue
            value = float(value)
            # Cameras write 0 for "unknown".
            if math.isfinite(value) and value > 0:
                facts[key] = value
    except Exception:  # noqa: BLE001 - malformed EXIF must not fail an otherwise good image
        pass
    return facts


def _to_rgb_u8(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        # 16-bit grey: keep the high byte, as Pillow does for 16-bit colour PNGs.
        grey = (np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "I":
        values = np.asarray(img).astype(np.int64)
        if values.size and values.max() > 255:
            values = np.clip(values, 0, 65535) >> 8
        grey = np.clip(values, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        values = np.asarray(img).astype(np.float64)
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.max() <= 1.0:
            values = values * 255.0
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def load_image(source: str | os.PathLike | bytes | bytearray | memoryview,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode an image to RGB uint8 (H, W, 3), upright (EXIF orientation applied).

    Returns `(rgb, info)`; info holds `width`, `height` (after rotation), `format`, `mode`
    (as stored), `exif_orientation`, `exif_focal_35mm` and `exif_focal_mm` (None if absent),
    and `source`. Raises `ServerError(BAD_IMAGE)` with a readable message for empty,
    unreadable, truncated or oversized input.
    """
    data, name = _read_source(source)
    if len(data) == 0:
        raise ServerError(BAD_IMAGE, f"The image {name} is empty (0 bytes).")
    if max_pixels < 1:
        raise ServerError(BAD_IMAGE, f"max_pixels must be positive, got {max_pixels}.")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below replaces Pillow's warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ServerError(BAD_IMAGE, f"The image {name} is too large to decode safely "
                          f"(limit {max_pixels:,} pixels).") from None
    except UnidentifiedImageError:
        raise ServerError(BAD_IMAGE, f"The data in {name} is not an image format that can be "
                          "read (use PNG, JPEG, TIFF, BMP or WebP).") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ServerError(BAD_IMAGE, f"Cannot read the image {name}: {exc}") from None

    width, height = img.size
    if width < 1 or height < 1:
        raise ServerError(BAD_IMAGE, f"The image {name} has no pixels ({width}x{height}).")
    if width * height > max_pixels:
        raise ServerError(BAD_IMAGE, f"The image {name} has {width}x{height} = {width * height:,} "
                          f"pixels, more than the limit of {max_pixels:,}; resize it first.")
    info: dict[str, Any] = {"format": img.format, "mode": img.mode, "source": name}
    info.update(_exif_facts(img))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
            # exif_transpose copies the whole image even when there is nothing to rotate
            # (tens of ms for a 12 MP photo): only call it for a real orientation tag.
            if img.getexif().get(0x0112, 1) not in (0, 1):
                img = ImageOps.exif_transpose(img) or img
            rgb = _to_rgb_u8(img)
    except Image.DecompressionBombError:
        raise ServerError(BAD_IMAGE, f"The image {name} is too large to decode safely.") from None
    except (OSError, ValueError, SyntaxError) as exc:
        # Pillow says "image file is truncated" / "broken data stream" for cut-off files.
        raise ServerError(BAD_IMAGE, f"The image {name} is damaged or truncated: {exc}") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ServerError(BAD_IMAGE, f"The image {name} could not be converted to RGB.")
    info["height"], info["width"] = int(rgb.shape[0]), int(rgb.shape[1])
    return rgb, info
