"""Person masks read from files, with the values Meta's code would get (stdlib + numpy: the
server and the add-on both use it).

3DB's mask embedding sees the mask's values as they are: SAM2 gives 0/1, Meta's notebook passes
a 0/255 image. A mask file is therefore passed on with its grey values unchanged, and only a
clearly binary one is taken: an anti-aliased mask (grey edges) or an empty one is refused with
a message that says how to fix it, instead of being turned silently into something else.
"""
from __future__ import annotations

import numpy as np

BINARY_SCALES = ((0, 1), (0, 255))


class MaskError(ValueError):
    """A mask file that cannot be used as it is (the message says why and what to do)."""


def mask_values(gray: np.ndarray, source: str) -> np.ndarray:
    """An (H, W) grey mask as uint8 with its values unchanged; refuses what is not 0/1 or 0/255
    or holds no person pixel."""
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.size == 0:
        raise MaskError(f"Mask {source}: expected a single-channel image, got shape {gray.shape}.")
    if not np.issubdtype(gray.dtype, np.integer):
        rounded = np.rint(gray)
        if not np.array_equal(rounded, gray):
            raise MaskError(f"Mask {source}: values must be whole grey levels (0/1 or 0/255).")
        gray = rounded
    values = np.unique(gray)
    if not any(set(values.tolist()) <= set(scale) for scale in BINARY_SCALES):
        grey = [int(v) for v in values if v not in (0, 1, 255)][:3]
        shown = ", ".join(str(v) for v in grey) or ", ".join(str(int(v)) for v in values[:4])
        raise MaskError(
            f"Mask {source} is not binary: it holds grey levels such as {shown} (an anti-aliased or "
            "mixed 0/1/255 mask). Save it with only 0 and 1, or only 0 and 255, for example "
            "`cv2.imwrite(path, (mask > 0).astype(np.uint8) * 255)`.")
    if not values.any():
        raise MaskError(f"Mask {source} is empty (every pixel is 0): it marks no person. "
                        "Check that the file is the person's mask, or leave --mask out.")
    return gray.astype(np.uint8)


def gray_levels(pixels: np.ndarray) -> np.ndarray:
    """(H, W, C) 8-bit levels (RGB/RGBA or grey) -> (H, W) grey as uint8: the first channel when
    the colour channels agree (every grey or black/white mask), else ITU-R 601 luma like Pillow's
    "L" conversion, so both sides read a coloured mask alike."""
    px = np.asarray(pixels)
    if px.ndim == 2:
        return px.astype(np.uint8)
    rgb = px[..., :3] if px.shape[-1] >= 3 else px[..., :1]
    if rgb.shape[-1] == 1 or (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        return rgb[..., 0].astype(np.uint8)
    luma = (rgb[..., 0].astype(np.int64) * 19595 + rgb[..., 1].astype(np.int64) * 38470
            + rgb[..., 2].astype(np.int64) * 7471 + 0x8000) >> 16
    return luma.astype(np.uint8)
