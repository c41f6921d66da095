"""Blender camera parameters from pinhole intrinsics and the scene placement (numpy only).

Blender's view plane (``BKE_camera_params_compute_viewplane``): with sensor fit HORIZONTAL the
focal length in pixels is ``lens·W/sensor``, with VERTICAL it is ``lens·ycor·H/sensor`` where
``ycor = pixel_aspect_y/pixel_aspect_x``; shifts are fractions of ``W`` (horizontal fit) or
``ycor·H`` (vertical fit); a non-square pixel aspect makes the vertical focal ``fx/ycor``.
Solving those for OpenCV intrinsics ``(fx, fy, cx, cy)`` gives the values below.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .axes import CAMERA_EULER_XYZ, camera_location_blender

SENSOR_SIZE_MM = 36.0


@dataclass(frozen=True)
class CameraParams:
    lens_mm: float
    sensor_fit: Literal['HORIZONTAL', 'VERTICAL']
    sensor_width_mm: float
    sensor_height_mm: float
    shift_x: float
    shift_y: float
    resolution_x: int
    resolution_y: int
    pixel_aspect_x: float
    pixel_aspect_y: float
    location: tuple[float, float, float]
    rotation_euler: tuple[float, float, float]
    clip_start: float
    clip_end: float


def check_intrinsics(cam_int: np.ndarray, image_size: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Validate a (3, 3) intrinsics matrix and (W, H); returns K as float64 and W, H."""
    k = np.asarray(cam_int, dtype=np.float64)
    if k.shape != (3, 3):
        raise ValueError(f"cam_int must be a 3x3 matrix, got shape {k.shape}")
    if not np.all(np.isfinite(k)):
        raise ValueError("cam_int contains non-finite values")
    if k[0, 0] <= 0 or k[1, 1] <= 0:
        raise ValueError(f"focal lengths must be positive, got fx={k[0, 0]}, fy={k[1, 1]}")
    if abs(k[0, 1]) > 1e-6 * k[0, 0]:
        raise ValueError("cam_int has a skew term, which Blender cameras cannot represent")
    size = np.asarray(image_size)
    if size.shape != (2,) or not np.all(np.isfinite(size)) or np.any(size < 1):
        raise ValueError(f"image_size must be (W, H) with positive entries, got {size!r}")
    return k, int(round(float(size[0]))), int(round(float(size[1])))


def camera_params(cam_int: np.ndarray, image_size: np.ndarray, cam_t0: np.ndarray,
                  sensor_mm: float = SENSOR_SIZE_MM, clip_start: float = 0.01,
                  clip_end: float | None = None) -> CameraParams:
    """Blender camera settings that reproduce ``cam_int`` on a (W, H) render.

    The camera sits at ``A·FLIP·(-t_0)`` looking along +Y (ARCHITECTURE.md placement).
    """
    k, w, h = check_intrinsics(cam_int, image_size)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    t0 = np.asarray(cam_t0, dtype=np.float64)
    if t0.shape != (3,) or not np.all(np.isfinite(t0)):
        raise ValueError(f"pred_cam_t of person 0 must be 3 finite values, got {t0!r}")
    # Blender keeps pixel aspects >= 1, so the larger of the two is stretched.
    ycor = fx / fy
    if ycor >= 1.0:
        asp_x, asp_y = 1.0, ycor
    else:
        asp_x, asp_y = 1.0 / ycor, 1.0
    horizontal = asp_x * w >= asp_y * h  # what Blender's AUTO fit would pick
    fit: Literal["HORIZONTAL", "VERTICAL"]
    if horizontal:
        lens = fx * sensor_mm / w
        viewfac = float(w)
        fit = "HORIZONTAL"
    else:
        lens = fy * sensor_mm / h
        viewfac = ycor * h
        fit = "VERTICAL"
    shift_x = (w / 2.0 - cx) / viewfac
    shift_y = ycor * (cy - h / 2.0) / viewfac
    depth = float(np.linalg.norm(t0))
    loc = camera_location_blender(t0)
    end = clip_end if clip_end is not None else max(100.0, 4.0 * depth)
    return CameraParams(
        lens_mm=float(lens), sensor_fit=fit, sensor_width_mm=float(sensor_mm),
        sensor_height_mm=float(sensor_mm), shift_x=float(shift_x), shift_y=float(shift_y),
        resolution_x=w, resolution_y=h, pixel_aspect_x=float(asp_x), pixel_aspect_y=float(asp_y),
        location=(float(loc[0]), float(loc[1]), float(loc[2])),
        rotation_euler=CAMERA_EULER_XYZ, clip_start=float(clip_start), clip_end=float(end))


def project_camera_points(points_cam: np.ndarray, cam_int: np.ndarray) -> np.ndarray:
    """Pinhole projection of OpenCV camera points (..., 3) to pixels (..., 2) (x right, y down)."""
    p = np.asarray(points_cam, dtype=np.float64)
    k = np.asarray(cam_int, dtype=np.float64)
    if np.any(p[..., 2] <= 0):
        raise ValueError("points behind the camera cannot be projected")
    uv = p[..., :2] / p[..., 2:3]
    return np.stack([k[0, 0] * uv[..., 0] + k[0, 1] * uv[..., 1] + k[0, 2],
                     k[1, 1] * uv[..., 1] + k[1, 2]], axis=-1)
