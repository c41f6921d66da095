# SPDX-License-Identifier: GPL-3.0-or-later
"""MHR-70 keypoint names and the pixel <-> marker-position mapping of the photo camera.

Plain numpy (no bpy). Markers for Refine sit in the camera object's local frame (Blender camera:
x right, y up, looking along -z) on the plane z = -distance, so that the camera built by
`apply_result` (which reproduces the intrinsics `cam_int` on a W x H render) sees each marker at
its image pixel. Pixels are OpenCV-style: origin at the top-left corner, y down.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

# Index = MHR-70 keypoint label used by the server's keypoint prompts, named as the official
# `mhr_names` list (sam_3d_body/metadata/mhr70.py): per finger the tip, then the first, second
# and third joint counted from the tip (the third is the knuckle).
_FINGERS = ("thumb", "index", "middle", "ring", "pinky")


def _hand(side: str) -> list[str]:
    names = []
    for finger in _FINGERS:
        names += [f"{side}_{finger}_tip", f"{side}_{finger}_first_joint",
                  f"{side}_{finger}_second_joint", f"{side}_{finger}_third_joint"]
    return names + [f"{side}_wrist"]


MHR70_NAMES: tuple[str, ...] = tuple(
    ["nose", "left_eye", "right_eye", "left_ear", "right_ear",
     "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
     "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
     "left_big_toe_tip", "left_small_toe_tip", "left_heel",
     "right_big_toe_tip", "right_small_toe_tip", "right_heel"]
    + _hand("right") + _hand("left")
    + ["left_olecranon", "right_olecranon", "left_cubital_fossa", "right_cubital_fossa",
       "left_acromion", "right_acromion", "neck"]
)
assert len(MHR70_NAMES) == 70
KEYPOINT_INDEX = {name: i for i, name in enumerate(MHR70_NAMES)}

# The markers Refine creates: body joints, wrists and neck (the fingers would crowd the view).
MARKER_KEYPOINTS: tuple[int, ...] = tuple(range(0, 21)) + (
    KEYPOINT_INDEX["right_wrist"], KEYPOINT_INDEX["left_wrist"], KEYPOINT_INDEX["neck"])


def keypoint_label(name_or_index: str | int) -> int:
    """The prompt label of a keypoint given by MHR-70 name or index; ValueError otherwise."""
    if isinstance(name_or_index, str):
        if name_or_index not in KEYPOINT_INDEX:
            raise ValueError(f"unknown MHR-70 keypoint {name_or_index!r}")
        return KEYPOINT_INDEX[name_or_index]
    index = int(name_or_index)
    if not 0 <= index < len(MHR70_NAMES):
        raise ValueError(f"MHR-70 keypoint index must be 0..69, got {index}")
    return index


def _intrinsics(cam_int: Sequence[float] | np.ndarray) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) from a 3x3 matrix or 4 numbers."""
    k = np.asarray(cam_int, dtype=np.float64)
    if k.shape == (3, 3):
        fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    elif k.shape == (4,):
        fx, fy, cx, cy = k
    else:
        raise ValueError(f"intrinsics must be a 3x3 matrix or fx, fy, cx, cy; got shape {k.shape}")
    if not (np.isfinite([fx, fy, cx, cy]).all() and fx > 0 and fy > 0):
        raise ValueError(f"intrinsics need finite positive focal lengths, got {k.tolist()}")
    return float(fx), float(fy), float(cx), float(cy)


def pixels_to_camera_local(pixels: np.ndarray, cam_int: Sequence[float] | np.ndarray,
                           distance: float = 1.0) -> np.ndarray:
    """(K, 2) image pixels -> (K, 3) points in the Blender camera's local frame at depth
    `distance` (metres in front of the camera)."""
    px = np.asarray(pixels, dtype=np.float64)
    if px.ndim != 2 or px.shape[1] != 2:
        raise ValueError(f"pixels must be (K, 2), got shape {px.shape}")
    if not (np.isfinite(distance) and distance > 0):
        raise ValueError(f"marker distance must be positive, got {distance}")
    fx, fy, cx, cy = _intrinsics(cam_int)
    x = (px[:, 0] - cx) / fx * distance
    y = -(px[:, 1] - cy) / fy * distance  # image y down -> camera y up
    return np.stack([x, y, np.full_like(x, -distance)], axis=1)


def camera_local_to_pixels(points: np.ndarray,
                           cam_int: Sequence[float] | np.ndarray) -> np.ndarray:
    """(K, 3) points in the Blender camera's local frame -> (K, 2) image pixels (the inverse
    of `pixels_to_camera_local` at any depth: a marker dragged along the view ray keeps its
    pixel). Points behind the camera raise ValueError."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must be (K, 3), got shape {p.shape}")
    depth = -p[:, 2]
    if np.any(depth <= 1e-9):
        raise ValueError("a marker is behind the camera (or on its plane); move it in front")
    fx, fy, cx, cy = _intrinsics(cam_int)
    u = cx + fx * p[:, 0] / depth
    v = cy - fy * p[:, 1] / depth
    return np.stack([u, v], axis=1)


def moved_prompts(labels: Sequence[int], original: np.ndarray, current: np.ndarray,
                  send_all: bool = False, tolerance_px: float = 0.5) -> list[list[float]]:
    """Prompts [[x, y, label], ...] for the markers moved by more than `tolerance_px` (all of
    them with `send_all`), at their current pixel positions."""
    orig = np.asarray(original, dtype=np.float64).reshape(-1, 2)
    cur = np.asarray(current, dtype=np.float64).reshape(-1, 2)
    if len(labels) != orig.shape[0] or orig.shape != cur.shape:
        raise ValueError("labels, original and current positions must have one row per marker")
    moved = np.linalg.norm(cur - orig, axis=1) > tolerance_px
    return [[float(cur[i, 0]), float(cur[i, 1]), keypoint_label(int(labels[i]))]
            for i in range(len(labels)) if send_all or moved[i]]
