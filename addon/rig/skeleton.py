"""Bone rest matrices and pose-bone transforms from MHR skeleton states (numpy only, no bpy).

Armature space is the armature object's local frame: Blender axes and metres (``A·p_mhr/100``).

Rest: bone j has head at joint j of the bind skeleton (``RigData.bind_skel_state``) and the
orientation ``A·R_bind[j]·C[j]``, where ``C[j]`` is a constant per-bone rotation that turns the
bone's +Y toward its main child, 0.1 degree off (AIM_TILT_RAD; Blender draws and rolls bones
around +Y). Any constant ``C[j]`` is
exact for skinning as long as rest and pose use the same one (reference/blender.md §4.2).

Pose: the armature-space target of bone j is ``M[j] = [A·s·R_pose[j]·C[j] | A·t_pose[j]/100]``
with ``s = s_pose/s_bind``; Blender then deforms with ``M[j]·M_rest[j]⁻¹``, which equals MHR's
``G_pose[j]∘inverse_bind_pose[j]`` in Blender axes. With default inheritance (rotation and FULL
scale, no connect) Blender composes ``M[j] = M[p]·(M_rest[p]⁻¹·M_rest[j])·B[j]``; we solve for the
local basis ``B[j]`` and hand Blender its location, quaternion and (uniform) scale.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .axes import (A, CM_PER_M, invert_similarity, matrix_to_quat_wxyz, quat_xyzw_to_matrix)

MIN_BONE_LENGTH_CM = 1.0
MAX_LEAF_LENGTH_CM = 5.0
# Bones aim 0.1 degree off their child. Blender's FBX importer rebuilds each bone's tail at the
# mean child distance along the bone's +Y and *connects* a child whose head lands on that tail;
# a connected bone ignores its pose location, which carries the scale parameters' bone-length
# changes, so bones aimed exactly at their child would come back from FBX deformed (~3 cm at the
# fingers in the sample). The tilt is invisible and skinning stays exact (any constant C is).
AIM_TILT_RAD = 2e-3


@dataclass(frozen=True)
class RestBones:
    """Rest layout of the armature (armature space, metres)."""

    matrices: np.ndarray     # (J, 4, 4) orthonormal bone matrices (head = translation, +Y = bone)
    corrections: np.ndarray  # (J, 3, 3) C[j]: joint-local frame -> bone-local frame
    lengths: np.ndarray      # (J,) bone lengths in metres, all >= MIN_BONE_LENGTH_CM / 100
    bind_scales: np.ndarray  # (J,) uniform scale of the bind skeleton (1 for MHR)

    @property
    def heads(self) -> np.ndarray:
        return self.matrices[:, :3, 3]

    @property
    def tails(self) -> np.ndarray:
        return self.heads + self.matrices[:, :3, 1] * self.lengths[:, None]


@dataclass(frozen=True)
class PoseBasis:
    """Pose-bone local transforms (Blender's ``matrix_basis``) and the armature-space targets."""

    location: np.ndarray       # (J, 3) metres, in the bone's rest frame
    quaternion_wxyz: np.ndarray  # (J, 4) Blender order
    scale: np.ndarray          # (J, 3) uniform per bone
    targets: np.ndarray        # (J, 4, 4) armature-space pose matrices (Blender's pose_bone.matrix)


def validate_skeleton(parents: np.ndarray, n_joints: int) -> np.ndarray:
    """Check a parent array: one entry per joint, -1 for roots, parents precede their children."""
    p = np.asarray(parents)
    if p.shape != (n_joints,):
        raise ValueError(f"joint_parents must have shape ({n_joints},), got {p.shape}")
    if not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"joint_parents must be integers, got {p.dtype}")
    p = p.astype(np.int64)
    idx = np.arange(n_joints)
    bad = (p >= idx) | (p < -1)
    if np.any(bad):
        j = int(np.flatnonzero(bad)[0])
        raise ValueError(f"joint {j} has parent {int(p[j])}: parents must be -1 or precede the joint")
    return p


def _check_states(states: np.ndarray, n_joints: int, name: str) -> np.ndarray:
    s = np.asarray(states, dtype=np.float64)
    if s.shape != (n_joints, 8):
        raise ValueError(f"{name} must have shape ({n_joints}, 8), got {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{name} contains non-finite values")
    if np.any(s[:, 7] <= 0):
        raise ValueError(f"{name} has non-positive joint scales")
    return s


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest rotation taking unit vector ``a`` to unit vector ``b`` (3x3)."""
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    if c < -1.0 + 1e-9:
        # Opposite vectors: any half-turn about an axis perpendicular to a works.
        axis = np.cross(a, [1.0, 0.0, 0.0])
        if np.linalg.norm(axis) < 1e-6:
            axis = np.cross(a, [0.0, 0.0, 1.0])
        axis /= np.linalg.norm(axis)
        return 2.0 * np.outer(axis, axis) - np.eye(3)
    vx = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def _is_helper(name: str | None) -> bool:
    # Twist helpers are siblings spread along the limb: never the bone's "main child".
    return name is not None and name.endswith("_proc")


def bone_directions(positions_cm: np.ndarray, parents: np.ndarray,
                    names: Sequence[str] | None = None,
                    min_length_cm: float = MIN_BONE_LENGTH_CM) -> tuple[np.ndarray, np.ndarray]:
    """Per-joint bone direction (unit, MHR axes) and length (cm).

    A bone points at its main child: among children that are not twist helpers and lie at least
    ``min_length_cm`` away, the one that best continues the parent bone's direction (so the
    spine picks the neck over the clavicles and the wrist the middle finger). Bones without such
    a child (end sites, helpers, coincident joints) continue their parent's direction with a
    short length, clamped to [min_length_cm, MAX_LEAF_LENGTH_CM].
    """
    n = positions_cm.shape[0]
    children: list[list[int]] = [[] for _ in range(n)]
    for j in range(n):
        if parents[j] >= 0:
            children[parents[j]].append(j)
    dirs = np.zeros((n, 3))
    lengths = np.zeros(n)
    for j in range(n):
        p = int(parents[j])
        parent_dir = dirs[p] if p >= 0 else None
        best, best_score = -1, -np.inf
        candidates = [c for c in children[j] if not _is_helper(names[c] if names else None)]
        for c in candidates:
            d = positions_cm[c] - positions_cm[j]
            dist = float(np.linalg.norm(d))
            if dist < min_length_cm:
                continue
            score = float(np.dot(d / dist, parent_dir)) if parent_dir is not None else dist
            if score > best_score:
                best, best_score = c, score
        if best >= 0:
            d = positions_cm[best] - positions_cm[j]
            dist = float(np.linalg.norm(d))
            dirs[j] = d / dist
            lengths[j] = max(dist, min_length_cm)
        else:
            if parent_dir is not None:
                dirs[j] = parent_dir
                leaf = 0.5 * lengths[p]
            else:
                dirs[j] = np.array([0.0, 1.0, 0.0])  # MHR up
                leaf = MAX_LEAF_LENGTH_CM
            lengths[j] = min(max(leaf, min_length_cm), MAX_LEAF_LENGTH_CM)
    return dirs, lengths


def rest_bones(bind_skel_state: np.ndarray, parents: np.ndarray,
               names: Sequence[str] | None = None,
               min_length_cm: float = MIN_BONE_LENGTH_CM) -> RestBones:
    """Rest bone matrices (armature space, metres) from the bind skeleton (cm, MHR axes)."""
    if min_length_cm <= 0:
        raise ValueError("min_length_cm must be positive (Blender deletes zero-length bones)")
    if np.ndim(parents) != 1:
        raise ValueError(f"joint_parents must be one-dimensional, got shape {np.shape(parents)}")
    n = int(np.shape(parents)[0])
    par = validate_skeleton(parents, n)
    state = _check_states(bind_skel_state, n, "bind_skel_state")
    if names is not None and len(names) != n:
        raise ValueError(f"expected {n} joint names, got {len(names)}")
    rot = quat_xyzw_to_matrix(state[:, 3:7])
    pos = state[:, :3]
    dirs, lengths = bone_directions(pos, par, names, min_length_cm)
    corrections = np.empty((n, 3, 3))
    matrices = np.zeros((n, 4, 4))
    y = np.array([0.0, 1.0, 0.0])
    c, s = np.cos(AIM_TILT_RAD), np.sin(AIM_TILT_RAD)
    tilt = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])  # about the bone's own X
    for j in range(n):
        corrections[j] = rotation_between(y, rot[j].T @ dirs[j]) @ tilt
    matrices[:, :3, :3] = A @ rot @ corrections
    matrices[:, :3, 3] = pos @ A.T / CM_PER_M
    matrices[:, 3, 3] = 1.0
    return RestBones(matrices=matrices, corrections=corrections, lengths=lengths / CM_PER_M,
                     bind_scales=state[:, 7].copy())


def pose_targets(rest: RestBones, pose_skel_state: np.ndarray) -> np.ndarray:
    """Armature-space pose matrices ``[A·(s/s_bind)·R·C | A·t/100]`` (J, 4, 4)."""
    n = rest.matrices.shape[0]
    state = _check_states(pose_skel_state, n, "pose skeleton state")
    rot = quat_xyzw_to_matrix(state[:, 3:7])
    scale = state[:, 7] / rest.bind_scales
    out = np.zeros((n, 4, 4))
    out[:, :3, :3] = (A @ rot @ rest.corrections) * scale[:, None, None]
    out[:, :3, 3] = state[:, :3] @ A.T / CM_PER_M
    out[:, 3, 3] = 1.0
    return out


def pose_basis(rest: RestBones, parents: np.ndarray, pose_skel_state: np.ndarray) -> PoseBasis:
    """Pose-bone location / quaternion / scale that make Blender reproduce ``pose_skel_state``."""
    n = rest.matrices.shape[0]
    par = validate_skeleton(parents, n)
    targets = pose_targets(rest, pose_skel_state)
    rest_inv = invert_similarity(rest.matrices)
    target_inv = invert_similarity(targets)
    basis = np.einsum("jab,jbc->jac", rest_inv, targets)
    has_parent = par >= 0
    if np.any(has_parent):
        pj = par[has_parent]
        # B = M_rest[j]^-1 · M_rest[p] · M[p]^-1 · M[j]
        basis[has_parent] = (rest_inv[has_parent] @ rest.matrices[pj] @ target_inv[pj]
                             @ targets[has_parent])
    lin = basis[:, :3, :3]
    scale = np.cbrt(np.linalg.det(lin))
    if np.any(scale <= 0):
        raise ValueError("pose produced a reflected or degenerate bone transform")
    quat = matrix_to_quat_wxyz(lin / scale[:, None, None])
    return PoseBasis(location=basis[:, :3, 3].copy(), quaternion_wxyz=quat,
                     scale=np.repeat(scale[:, None], 3, axis=1), targets=targets)


def compose_pose(rest_matrices: np.ndarray, parents: np.ndarray, location: np.ndarray,
                 quaternion_wxyz: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Blender's pose chain (inherit rotation, FULL scale, no connect) in numpy, for checks."""
    n = rest_matrices.shape[0]
    par = validate_skeleton(parents, n)
    q = np.asarray(quaternion_wxyz, dtype=np.float64)
    basis = np.zeros((n, 4, 4))
    basis[:, :3, :3] = quat_xyzw_to_matrix(q[:, [1, 2, 3, 0]]) * np.asarray(scale)[:, None, :]
    basis[:, :3, 3] = location
    basis[:, 3, 3] = 1.0
    rest_inv = invert_similarity(rest_matrices)
    out = np.zeros((n, 4, 4))
    for j in range(n):
        p = par[j]
        if p < 0:
            out[j] = rest_matrices[j] @ basis[j]
        else:
            out[j] = out[p] @ rest_inv[p] @ rest_matrices[j] @ basis[j]
    return out


def deform_matrices(rest: RestBones, targets: np.ndarray) -> np.ndarray:
    """Blender's per-bone deformation ``M[j]·M_rest[j]⁻¹`` (armature space, metres)."""
    return np.einsum("jab,jbc->jac", targets, invert_similarity(rest.matrices))


def rest_with_matrices(rest: RestBones, bind_skel_state: np.ndarray,
                       matrices: np.ndarray) -> RestBones:
    """The same rest, re-expressed on the bone matrices Blender actually stored.

    Blender keeps edit bones as head, tail and roll in float32, so ``bone.matrix_local`` comes
    back ~1e-5 off the requested matrix. Recomputing ``C[j] = (A·R_bind[j])ᵀ·R_stored[j]`` keeps
    rest and pose consistent, so the deformation stays exactly MHR's LBS.
    """
    m = np.asarray(matrices, dtype=np.float64)
    if m.shape != rest.matrices.shape:
        raise ValueError(f"expected {rest.matrices.shape} bone matrices, got {m.shape}")
    # Orthonormalise (polar decomposition) to drop float32 round-off.
    u, _, vt = np.linalg.svd(m[:, :3, :3])
    rot = u @ vt
    clean = np.array(m, copy=True)
    clean[:, :3, :3] = rot
    clean[:, 3, :] = (0.0, 0.0, 0.0, 1.0)
    state = np.asarray(bind_skel_state, dtype=np.float64)
    bind_rot = A @ quat_xyzw_to_matrix(state[:, 3:7])
    corrections = np.swapaxes(bind_rot, 1, 2) @ rot
    return RestBones(matrices=clean, corrections=corrections, lengths=rest.lengths.copy(),
                     bind_scales=rest.bind_scales.copy())
