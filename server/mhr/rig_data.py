"""RigData and per-person skeleton states from MHR's TorchScript module (server side, torch).

``rig_data_from_mhr(module)`` reads the model-level rig (names, parents, bind skeleton, mesh,
UVs, skin weights; docs/ARCHITECTURE.md "RigData"). ``person_rig_state`` runs the TorchScript
forward to get the self-consistent posed skeleton and vertices of each person plus the rest mesh
and the scale-only rest skeleton ("Result", added by us).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

N_MODEL_PARAMS = 204
N_POSE_PARAMS = 136  # 0..135 pose (root, body, hands, flexible lengths); 136..203 scales
N_IDENTITY = 45
N_EXPRESSION = 72
SKIN_SLOTS = 8


def _sub(module: Any, path: str) -> Any:
    obj = module
    for part in path.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"MHR module has no '{path}' (missing '{part}'): not an MHR TorchScript?")
        obj = getattr(obj, part)
    return obj


def _np(t: Any, dtype: Any) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        if t.dtype == torch.uint32:  # numpy() cannot take every unsigned torch dtype
            t = t.to(torch.int64)
        return t.numpy().astype(dtype)
    return np.asarray(t, dtype=dtype)


def _invert_skel_state(state: np.ndarray) -> np.ndarray:
    """(t, q xyzw, s)^-1 = (-(1/s)·R(q)^T·t, conj(q), 1/s), float64."""
    s = state.astype(np.float64)
    q = s[:, 3:7] / np.linalg.norm(s[:, 3:7], axis=1, keepdims=True)
    x, y, z, w = q.T
    rot = np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], axis=1)
    inv_s = 1.0 / s[:, 7]
    t = -inv_s[:, None] * np.einsum("jba,jb->ja", rot, s[:, :3])
    conj = q * np.array([-1.0, -1.0, -1.0, 1.0])
    return np.concatenate([t, conj, inv_s[:, None]], axis=1)


def _skin_table(module: Any, n_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """(V, 8) joint indices / weights: get_lbsw() when exported, else the flattened triples."""
    if hasattr(module, "get_lbsw"):
        idx_t, w_t = module.get_lbsw()
        idx = _np(idx_t, np.int64)
        w = _np(w_t, np.float64)
    else:
        lbs = _sub(module, "character_torch.linear_blend_skinning")
        vert = _np(lbs.vert_indices_flattened, np.int64)
        joint = _np(lbs.skin_indices_flattened, np.int64)
        weight = _np(lbs.skin_weights_flattened, np.float64)
        if not (vert.shape == joint.shape == weight.shape):
            raise ValueError("MHR skin triples have different lengths")
        order = np.lexsort((-weight, vert))  # per vertex, heaviest first
        vert, joint, weight = vert[order], joint[order], weight[order]
        counts = np.bincount(vert, minlength=n_vertices)
        if counts.max(initial=0) > SKIN_SLOTS:
            raise ValueError(f"a vertex has {counts.max()} skin influences (max {SKIN_SLOTS})")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot = np.arange(vert.size) - starts[vert]
        idx = np.zeros((n_vertices, SKIN_SLOTS), np.int64)
        w = np.zeros((n_vertices, SKIN_SLOTS), np.float64)
        idx[vert, slot] = joint
        w[vert, slot] = weight
    if idx.shape != (n_vertices, SKIN_SLOTS) or w.shape != idx.shape:
        raise ValueError(f"skin table must be ({n_vertices}, {SKIN_SLOTS}), got {idx.shape}, {w.shape}")
    idx[w == 0] = 0  # padding slots point at joint 0 with weight 0
    total = w.sum(axis=1)
    if np.any(total <= 0):
        raise ValueError(f"{int(np.sum(total <= 0))} vertices have no skin weight")
    return idx.astype(np.int32), (w / total[:, None]).astype(np.float32)


def rig_data_from_mhr(module: Any) -> dict:
    """RigData (docs/ARCHITECTURE.md) from a loaded MHR TorchScript module (real or stand-in)."""
    skel = _sub(module, "character_torch.skeleton")
    mesh = _sub(module, "character_torch.mesh")
    lbs = _sub(module, "character_torch.linear_blend_skinning")
    if hasattr(module, "get_joint_names"):
        names = [str(n) for n in module.get_joint_names()]
    else:
        names = [str(n) for n in skel.joint_names]
    parents = _np(skel.joint_parents, np.int64)
    n = len(names)
    if parents.shape != (n,):
        raise ValueError(f"{n} joint names but joint_parents has shape {parents.shape}")
    ibp = _np(lbs.inverse_bind_pose, np.float64)
    if ibp.shape != (n, 8):
        raise ValueError(f"inverse_bind_pose must be ({n}, 8), got {ibp.shape}")
    template = _np(mesh.rest_vertices, np.float32)
    faces = _np(mesh.faces, np.int32)
    n_vertices = template.shape[0]
    skin_indices, skin_weights = _skin_table(module, n_vertices)
    rig = {
        "joint_names": names,
        "joint_parents": parents.astype(np.int32),
        "bind_skel_state": _invert_skel_state(ibp).astype(np.float32),
        "faces": faces,
        "texcoords": _np(mesh.texcoords, np.float32),
        "texcoord_faces": _np(mesh.texcoord_faces, np.int32),
        "skin_indices": skin_indices,
        "skin_weights": skin_weights,
        "template_vertices": template,
    }
    if rig["texcoord_faces"].shape != faces.shape:
        raise ValueError(f"texcoord_faces {rig['texcoord_faces'].shape} differs from faces {faces.shape}")
    return rig


def _batch(x: Any, width: int, name: str, n: int | None) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, torch.Tensor) else x)
    t = t.detach().to(torch.float32).cpu()
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2 or t.shape[1] != width:
        raise ValueError(f"{name} must be (N, {width}), got {tuple(t.shape)}")
    if n is not None and t.shape[0] != n:
        if t.shape[0] == 1:
            t = t.expand(n, width)
        else:
            raise ValueError(f"{name} has {t.shape[0]} rows, expected {n}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains non-finite values")
    return t.contiguous()


def _device_of(module: Any) -> torch.device:
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def person_rig_state(module: Any, mhr_model_params: Any, shape_params: Any,
                     expr_params: Any | None = None) -> dict[str, np.ndarray]:
    """Posed and rest skeleton states / vertices (MHR cm) for N persons, from one forward batch.

    * ``mhr_skel_state`` (N,127,8), ``mhr_vertices`` (N,V,3): the forward of the person's
      parameters (correctives on).
    * ``mhr_rest_vertices`` (N,V,3): the forward at zero model parameters, where LBS is the
      identity and correctives vanish, i.e. base + identity + expression blend shapes.
    * ``mhr_rest_skel_state`` (N,127,8): pose parameters 0..135 zeroed, scales 136..203 kept.
    """
    params = _batch(mhr_model_params, N_MODEL_PARAMS, "mhr_model_params", None)
    n = params.shape[0]
    shape = _batch(shape_params, N_IDENTITY, "shape_params", n)
    expr = (torch.zeros(n, N_EXPRESSION) if expr_params is None
            else _batch(expr_params, N_EXPRESSION, "expr_params", n))
    rest_params = params.clone()
    rest_params[:, :N_POSE_PARAMS] = 0.0
    zero_params = torch.zeros_like(params)
    dev = _device_of(module)
    with torch.no_grad():
        verts, skel = module(torch.cat([shape, shape, shape]).to(dev),
                             torch.cat([params, rest_params, zero_params]).to(dev),
                             torch.cat([expr, expr, expr]).to(dev))
    verts = verts.float().cpu().numpy()
    skel = skel.float().cpu().numpy()
    out = {
        "mhr_skel_state": skel[:n],
        "mhr_vertices": verts[:n],
        "mhr_rest_skel_state": skel[n:2 * n],
        "mhr_rest_vertices": verts[2 * n:],
    }
    for key, value in out.items():
        if not np.all(np.isfinite(value)):
            raise ValueError(f"MHR forward produced non-finite {key}")
        out[key] = np.ascontiguousarray(value, dtype=np.float32)
    return out
