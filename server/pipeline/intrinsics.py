"""Camera intrinsics for a reconstruction: user values, EXIF focal length, or the default.

Priority: explicit user intrinsics > EXIF 35 mm-equivalent focal length > the official default
(f = image diagonal in pixels for both axes, principal point at the image centre,
reference/sam3d-body.md §5.3). K is float32 (3, 3), the dtype the official batch carries.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from server.errors import BAD_INPUT, ServerError

SOURCE_USER = "user"
SOURCE_EXIF = "exif"
SOURCE_DEFAULT = "default"

# 35 mm-equivalent focal lengths are defined on the diagonal of the 36 x 24 mm frame (CIPA DC-008).
FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)


def _check_size(width: int, height: int) -> None:
    if int(width) < 1 or int(height) < 1:
        raise ServerError(BAD_INPUT, f"Image size must be positive, got {width}x{height}.")


def default_intrinsics(width: int, height: int) -> np.ndarray:
    """Official default: f = sqrt(W^2 + H^2) (computed in double), centre principal point."""
    _check_size(width, height)
    f = (height ** 2 + width ** 2) ** 0.5
    return np.array([[f, 0, width / 2.0], [0, f, height / 2.0], [0, 0, 1]], dtype=np.float32)


def user_intrinsics(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """K from user values in pixels; rejects NaN/inf and non-positive focal lengths."""
    values = {"fx": fx, "fy": fy, "cx": cx, "cy": cy}
    for name, v in values.items():
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise ServerError(BAD_INPUT, f"Intrinsics {name} must be a number, got {v!r}.") from None
        if not math.isfinite(v):
            raise ServerError(BAD_INPUT, f"Intrinsics {name} must be finite, got {v}.")
        values[name] = v
    for name in ("fx", "fy"):
        if values[name] <= 0:
            raise ServerError(BAD_INPUT,
                              f"Focal length {name} must be positive (pixels), got {values[name]}.")
    return np.array([[values["fx"], 0, values["cx"]], [0, values["fy"], values["cy"]], [0, 0, 1]],
                    dtype=np.float32)


def exif_intrinsics(focal_35mm: float, width: int, height: int) -> np.ndarray:
    """K from a 35 mm-equivalent focal length: f_px = f35 * image diagonal / 43.27 mm."""
    _check_size(width, height)
    f35 = float(focal_35mm)
    if not math.isfinite(f35) or f35 <= 0:
        raise ServerError(BAD_INPUT, f"EXIF 35 mm focal length must be positive, got {focal_35mm}.")
    f = f35 * math.hypot(width, height) / FULL_FRAME_DIAGONAL_MM
    return np.array([[f, 0, width / 2.0], [0, f, height / 2.0], [0, 0, 1]], dtype=np.float32)


def resolve_intrinsics(width: int, height: int,
                       user: Sequence[float] | None = None,
                       exif_focal_35mm: float | None = None) -> tuple[np.ndarray, str]:
    """(K float32 (3,3), source name) for one image.

    `user` is (fx, fy, cx, cy) in pixels. An unusable EXIF value (0 or negative: cameras write
    0 for "unknown") falls back to the default instead of failing the request.
    """
    _check_size(width, height)
    if user is not None:
        if len(user) != 4:
            raise ServerError(BAD_INPUT, f"Intrinsics must be (fx, fy, cx, cy), got {len(user)} values.")
        return user_intrinsics(*user), SOURCE_USER
    if exif_focal_35mm is not None:
        try:
            f35 = float(exif_focal_35mm)
        except (TypeError, ValueError):
            f35 = float("nan")
        if math.isfinite(f35) and f35 > 0:
            return exif_intrinsics(f35, width, height), SOURCE_EXIF
    return default_intrinsics(width, height), SOURCE_DEFAULT
