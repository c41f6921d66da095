"""Frames, units and rotation helpers shared by the rig math (numpy only, no bpy).

Frames (docs/ARCHITECTURE.md, "Units and frames"):

* MHR model space: centimetres, +X character's left, +Y up, +Z character's front.
* 3DB camera space: metres, OpenCV (x right, y down, z forward); a person's camera point is
  ``FLIP_YZ @ v_mhr / 100 + pred_cam_t``.
* Blender world: metres, Z up; ``p_b = A @ p_mhr / 100``.

Quaternions in skeleton states are (x, y, z, w); Blender's ``rotation_quaternion`` is (w, x, y, z).
"""
from __future__ import annotations

import numpy as np

# MHR (Y up) -> Blender (Z up): a +90 degree rotation about X (det +1).
A: np.ndarray = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
# MHR <-> OpenCV camera axes (the "camera system difference" of 3DB); its own inverse.
FLIP_YZ: np.ndarray = np.diag([1.0, -1.0, -1.0])
CM_PER_M = 100.0
# Camera (OpenCV) -> Blender world: Blender world = MHR frame of person 0, so this is A @ FLIP_YZ.
CAMERA_TO_BLENDER: np.ndarray = A @ FLIP_YZ


def _as_points(points: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim < 1 or arr.shape[-1] != 3:
        raise ValueError(f"{name} must have a trailing axis of 3 (x, y, z), got shape {arr.shape}")
    return arr


def mhr_to_blender_points(points_cm: np.ndarray) -> np.ndarray:
    """MHR model-space points (cm, Y up) -> Blender points (m, Z up), any leading shape."""
    p = _as_points(points_cm, "points_cm")
    return p @ A.T / CM_PER_M


def blender_to_mhr_points(points_m: np.ndarray) -> np.ndarray:
    """Inverse of :func:`mhr_to_blender_points`."""
    p = _as_points(points_m, "points_m")
    return p @ A * CM_PER_M


def mhr_to_camera_points(points_cm: np.ndarray, cam_t: np.ndarray) -> np.ndarray:
    """MHR points (cm) of one person -> 3DB camera space (m, OpenCV): flip y/z, add pred_cam_t."""
    p = _as_points(points_cm, "points_cm")
    return p @ FLIP_YZ.T / CM_PER_M + np.asarray(cam_t, dtype=np.float64)


def camera_to_blender_points(points_cam: np.ndarray, cam_t0: np.ndarray) -> np.ndarray:
    """3DB camera-space points (m, OpenCV) -> Blender world, whose origin is person 0's MHR origin."""
    p = _as_points(points_cam, "points_cam")
    return (p - np.asarray(cam_t0, dtype=np.float64)) @ CAMERA_TO_BLENDER.T


def person_offset_blender(cam_t: np.ndarray, cam_t0: np.ndarray) -> np.ndarray:
    """Blender location of person i's armature object: ``A·FLIP·(t_i - t_0)`` (metres)."""
    d = np.asarray(cam_t, dtype=np.float64) - np.asarray(cam_t0, dtype=np.float64)
    if d.shape[-1:] != (3,):
        raise ValueError(f"pred_cam_t must have a trailing axis of 3, got shape {d.shape}")
    return d @ CAMERA_TO_BLENDER.T


def camera_location_blender(cam_t0: np.ndarray) -> np.ndarray:
    """Blender location of the camera: ``A·FLIP·(-t_0)`` (metres)."""
    return person_offset_blender(np.zeros(3), cam_t0)


# Camera object rotation: Blender cameras look along local -Z with local +Y up; with rotation A
# they look along world +Y with +Z up, which is the OpenCV camera re-expressed by A·FLIP.
CAMERA_ROTATION: np.ndarray = A.copy()
CAMERA_EULER_XYZ: tuple[float, float, float] = (float(np.pi / 2), 0.0, 0.0)


# --- quaternions (x, y, z, w) and similarity matrices -------------------------------------------

def quat_xyzw_to_matrix(q: np.ndarray) -> np.ndarray:
    """Unit quaternions (..., 4) in x, y, z, w order -> rotation matrices (..., 3, 3).

    The quaternion is normalised first so float32 round-off does not leak into scale.
    """
    q = np.asarray(q, dtype=np.float64)
    if q.shape[-1] != 4:
        raise ValueError(f"quaternions must have a trailing axis of 4, got shape {q.shape}")
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(norm < 1e-8):
        raise ValueError("zero-length quaternion in skeleton state")
    x, y, z, w = np.moveaxis(q / norm, -1, 0)
    out = np.empty(q.shape[:-1] + (3, 3))
    out[..., 0, 0] = 1 - 2 * (y * y + z * z)
    out[..., 0, 1] = 2 * (x * y - z * w)
    out[..., 0, 2] = 2 * (x * z + y * w)
    out[..., 1, 0] = 2 * (x * y + z * w)
    out[..., 1, 1] = 1 - 2 * (x * x + z * z)
    out[..., 1, 2] = 2 * (y * z - x * w)
    out[..., 2, 0] = 2 * (x * z - y * w)
    out[..., 2, 1] = 2 * (y * z + x * w)
    out[..., 2, 2] = 1 - 2 * (x * x + y * y)
    return out


def matrix_to_quat_wxyz(m: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4) in w, x, y, z order, w >= 0.

    Uses the largest-diagonal branch per matrix so it stays accurate near 180 degrees.
    """
    m = np.asarray(m, dtype=np.float64)
    if m.shape[-2:] != (3, 3):
        raise ValueError(f"rotation matrices must be (..., 3, 3), got shape {m.shape}")
    flat = m.reshape(-1, 3, 3)
    out = np.empty((flat.shape[0], 4))
    m00, m11, m22 = flat[:, 0, 0], flat[:, 1, 1], flat[:, 2, 2]
    trace = m00 + m11 + m22
    cand = np.stack([trace, m00, m11, m22], axis=1)
    branch = np.argmax(cand, axis=1)
    for b in range(4):
        sel = branch == b
        if not np.any(sel):
            continue
        r = flat[sel]
        if b == 0:
            s = np.sqrt(np.maximum(1.0 + r[:, 0, 0] + r[:, 1, 1] + r[:, 2, 2], 1e-300)) * 2
            q = np.stack([0.25 * s, (r[:, 2, 1] - r[:, 1, 2]) / s, (r[:, 0, 2] - r[:, 2, 0]) / s,
                          (r[:, 1, 0] - r[:, 0, 1]) / s], axis=1)
        elif b == 1:
            s = np.sqrt(np.maximum(1.0 + r[:, 0, 0] - r[:, 1, 1] - r[:, 2, 2], 1e-300)) * 2
            q = np.stack([(r[:, 2, 1] - r[:, 1, 2]) / s, 0.25 * s, (r[:, 0, 1] + r[:, 1, 0]) / s,
                          (r[:, 0, 2] + r[:, 2, 0]) / s], axis=1)
        elif b == 2:
            s = np.sqrt(np.maximum(1.0 + r[:, 1, 1] - r[:, 0, 0] - r[:, 2, 2], 1e-300)) * 2
            q = np.stack([(r[:, 0, 2] - r[:, 2, 0]) / s, (r[:, 0, 1] + r[:, 1, 0]) / s, 0.25 * s,
                          (r[:, 1, 2] + r[:, 2, 1]) / s], axis=1)
        else:
            s = np.sqrt(np.maximum(1.0 + r[:, 2, 2] - r[:, 0, 0] - r[:, 1, 1], 1e-300)) * 2
            q = np.stack([(r[:, 1, 0] - r[:, 0, 1]) / s, (r[:, 0, 2] + r[:, 2, 0]) / s,
                          (r[:, 1, 2] + r[:, 2, 1]) / s, 0.25 * s], axis=1)
        out[sel] = q
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    out[out[:, 0] < 0] *= -1.0
    return out.reshape(m.shape[:-2] + (4,))


def skel_state_to_matrices(state: np.ndarray) -> np.ndarray:
    """Skeleton states (..., 8) = (t cm, q xyzw, s) -> similarity matrices (..., 4, 4).

    The matrix maps joint-local points to model space: ``p = t + s·R(q)·p_local``.
    """
    s = np.asarray(state, dtype=np.float64)
    if s.shape[-1] != 8:
        raise ValueError(f"skeleton state must have a trailing axis of 8 (t, q, s), got {s.shape}")
    out = np.zeros(s.shape[:-1] + (4, 4))
    out[..., :3, :3] = quat_xyzw_to_matrix(s[..., 3:7]) * s[..., 7, None, None]
    out[..., :3, 3] = s[..., :3]
    out[..., 3, 3] = 1.0
    return out


def invert_similarity(m: np.ndarray) -> np.ndarray:
    """Inverse of similarity matrices (..., 4, 4) (rotation times uniform scale plus translation)."""
    m = np.asarray(m, dtype=np.float64)
    lin = m[..., :3, :3]
    scale2 = np.einsum("...ij,...ij->...", lin, lin) / 3.0
    inv_lin = np.swapaxes(lin, -1, -2) / scale2[..., None, None]
    out = np.zeros_like(m)
    out[..., :3, :3] = inv_lin
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", inv_lin, m[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def invert_skel_state(state: np.ndarray) -> np.ndarray:
    """Inverse of skeleton states (..., 8): (t, q, s)^-1 = (-(1/s)·R^T·t, q*, 1/s)."""
    s = np.asarray(state, dtype=np.float64)
    if s.shape[-1] != 8:
        raise ValueError(f"skeleton state must have a trailing axis of 8, got {s.shape}")
    q = s[..., 3:7] / np.linalg.norm(s[..., 3:7], axis=-1, keepdims=True)
    conj = q * np.array([-1.0, -1.0, -1.0, 1.0])
    r_t = np.swapaxes(quat_xyzw_to_matrix(q), -1, -2)
    inv_s = 1.0 / s[..., 7]
    t = -inv_s[..., None] * np.einsum("...ij,...j->...i", r_t, s[..., :3])
    return np.concatenate([t, conj, inv_s[..., None]], axis=-1)


def mhr_matrix_to_blender(m_cm: np.ndarray) -> np.ndarray:
    """Re-express MHR similarity matrices (..., 4, 4) as Blender-space ones: ``Â·M`` with cm -> m.

    The joint-local axes are kept (only the target space changes), so the linear part becomes
    ``A·L`` and the translation ``A·t/100``.
    """
    m = np.asarray(m_cm, dtype=np.float64)
    out = np.array(m, copy=True)
    out[..., :3, :3] = A @ m[..., :3, :3]
    out[..., :3, 3] = m[..., :3, 3] @ A.T / CM_PER_M
    return out
