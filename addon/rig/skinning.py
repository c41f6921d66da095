"""Numpy linear blend skinning (MHR's formula) and rest-space pose correctives.

MHR: ``v = Σ_k w_k · (G[j_k] ∘ inverse_bind_pose[j_k])(v_rest + δ)`` where δ are the pose
correctives. Blender's Armature modifier computes the same sum without δ; a shape key holding δ
(added before the modifier, in rest space) restores the corrected surface exactly.
"""
from __future__ import annotations

import numpy as np

from .axes import invert_similarity, skel_state_to_matrices


def check_skin(skin_indices: np.ndarray, skin_weights: np.ndarray, n_vertices: int,
               n_joints: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate (V, K) skin tables and return them as int64 / float64."""
    idx = np.asarray(skin_indices)
    w = np.asarray(skin_weights, dtype=np.float64)
    if idx.ndim != 2 or idx.shape[0] != n_vertices:
        raise ValueError(f"skin_indices must be ({n_vertices}, K), got {idx.shape}")
    if w.shape != idx.shape:
        raise ValueError(f"skin_weights shape {w.shape} differs from skin_indices {idx.shape}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"skin_indices must be integers, got {idx.dtype}")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n_joints):
        raise ValueError(f"skin_indices must lie in [0, {n_joints}), got [{idx.min()}, {idx.max()}]")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("skin_weights must be finite and non-negative")
    return idx, w


def skinning_transforms(skel_state: np.ndarray, bind_skel_state: np.ndarray) -> np.ndarray:
    """Per-joint skinning matrices ``G ∘ bind⁻¹`` (J, 4, 4), in the states' units (cm for MHR)."""
    g = skel_state_to_matrices(skel_state)
    bind = skel_state_to_matrices(bind_skel_state)
    if g.shape != bind.shape:
        raise ValueError(f"pose states {g.shape[:-2]} and bind states {bind.shape[:-2]} differ")
    return g @ invert_similarity(bind)


def blend_matrices(skin_indices: np.ndarray, skin_weights: np.ndarray,
                   transforms: np.ndarray) -> np.ndarray:
    """Per-vertex blended affine matrices ``Σ_k w_k·T[j_k]`` as (V, 3, 4)."""
    t = np.asarray(transforms, dtype=np.float64)
    if t.ndim != 3 or t.shape[1:] not in ((4, 4), (3, 4)):
        raise ValueError(f"transforms must be (J, 4, 4), got {t.shape}")
    idx, w = check_skin(skin_indices, skin_weights, np.asarray(skin_indices).shape[0], t.shape[0])
    # Weights are zero padded: loop over the K slots so memory stays (V, 3, 4).
    out = np.zeros((idx.shape[0], 3, 4))
    for k in range(idx.shape[1]):
        wk = w[:, k]
        if not np.any(wk):
            continue
        out += wk[:, None, None] * t[idx[:, k], :3, :]
    return out


def linear_blend_skinning(rest_vertices: np.ndarray, skin_indices: np.ndarray,
                          skin_weights: np.ndarray, transforms: np.ndarray) -> np.ndarray:
    """Skin (V, 3) rest vertices with (J, 4, 4) transforms: ``Σ_k w_k·T[j_k]·v``."""
    v = np.asarray(rest_vertices, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"rest_vertices must be (V, 3), got {v.shape}")
    if np.asarray(skin_indices).shape[0] != v.shape[0]:
        raise ValueError(f"{v.shape[0]} vertices but {np.asarray(skin_indices).shape[0]} skin rows")
    m = blend_matrices(skin_indices, skin_weights, transforms)
    return np.einsum("vij,vj->vi", m[:, :, :3], v) + m[:, :, 3]


def corrective_offsets(target_vertices: np.ndarray, rest_vertices: np.ndarray,
                       skin_indices: np.ndarray, skin_weights: np.ndarray,
                       transforms: np.ndarray) -> np.ndarray:
    """Rest-space offsets δ with ``LBS(rest + δ) == target`` (the pose correctives).

    LBS is affine in the rest point, so ``δ = S_v⁻¹·(target − LBS(rest))`` with ``S_v`` the
    blended 3x3 part of vertex v. Vertices whose blend is (near) singular get δ = 0.
    """
    v = np.asarray(rest_vertices, dtype=np.float64)
    target = np.asarray(target_vertices, dtype=np.float64)
    if target.shape != v.shape:
        raise ValueError(f"target vertices {target.shape} and rest vertices {v.shape} differ")
    m = blend_matrices(skin_indices, skin_weights, transforms)
    lbs = np.einsum("vij,vj->vi", m[:, :, :3], v) + m[:, :, 3]
    lin = m[:, :, :3]
    det = np.linalg.det(lin)
    ok = np.abs(det) > 1e-9
    delta = np.zeros_like(v)
    if np.any(ok):
        delta[ok] = np.linalg.solve(lin[ok], (target - lbs)[ok][..., None])[..., 0]
    return delta
