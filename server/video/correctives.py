"""A clip's pose correctives as a few shape keys per track.

MHR adds pose-dependent corrective offsets to the rest mesh before skinning (elbows, knees,
shoulders at strong bends; reference/mhr.md §4.4). For a photo the add-on bakes them into one
shape key; a clip needs a new offset field every frame, and a shape key per frame would weigh
V·3 floats per frame. But the offsets are linear in the correctives' hidden layer (offsets =
activations · denseᵀ) and a clip moves through a few related poses, so each track's offsets
over its frames are close to a low-rank matrix: K basis shapes (K shape keys) and K weights per
frame (keyed shape-key values) reproduce them. The basis is the best rank-K one in vertex space
(principal components of the offsets, through their R×R Gram matrix, which is computed in
vertex chunks so memory stays R² + R·chunk whatever the mesh); when a track has no more frames
than K the reconstruction is exact. The largest per-coordinate error is measured and returned.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

MAX_COMPONENTS = 16  # shape keys per track
CHUNK = 16384  # offset coordinates per Gram / basis pass
RELATIVE_FLOOR = 1e-10  # eigenvalues below this fraction of the largest carry rounding, not pose


@dataclass
class CompressedCorrectives:
    weights: np.ndarray  # (R, K) per frame
    basis: np.ndarray  # (K, V, 3) cm, rest frame
    max_error_cm: float  # largest |offset - weights @ basis| over frames and coordinates


def compress(activations: torch.Tensor, dense: torch.Tensor, n_vertices: int,
             max_components: int = MAX_COMPONENTS, chunk: int = CHUNK) -> CompressedCorrectives:
    """Best rank-``max_components`` approximation of ``activations @ dense.T`` (R, V·3)."""
    rows = activations.shape[0]
    coords = dense.shape[0]
    if coords != n_vertices * 3:
        raise ValueError(f"corrective dense weight has {coords} rows, expected {n_vertices * 3}")
    # The big products stay in the model's float32 (no float64 copy of the 664 MB dense layer);
    # the small Gram matrix and the eigenproblem are float64.
    h = activations.to(dense.device, torch.float32)
    w = dense.to(torch.float32)
    # MPS has no float64: the small float64 work happens on the CPU there.
    acc = torch.device("cpu") if h.device.type == "mps" else h.device
    gram = torch.zeros(rows, rows, dtype=torch.float64, device=acc)
    for start in range(0, coords, chunk):
        part = (h @ w[start:start + chunk].t()).to(acc, torch.float64)
        gram += part @ part.t()
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    evals, evecs = evals.flip(0), evecs.flip(1)
    top = float(evals[0]) if rows else 0.0
    keep = int(((evals > RELATIVE_FLOOR * top) & (evals > 0)).sum()) if top > 0 else 0
    keep = min(keep, max_components)
    if keep == 0:
        return CompressedCorrectives(np.zeros((rows, 0), np.float32), np.zeros((0, n_vertices, 3), np.float32), 0.0)
    sigma = evals[:keep].sqrt()
    u = evecs[:, :keep]
    weights = u * sigma  # offsets ≈ weights @ basis, basis rows orthonormal
    project = (u / sigma).t()  # (K, R)
    basis = torch.empty(keep, coords, dtype=torch.float64, device=acc)
    max_error = 0.0
    for start in range(0, coords, chunk):
        part = (h @ w[start:start + chunk].t()).to(acc, torch.float64)
        basis[:, start:start + chunk] = project @ part
        max_error = max(max_error, float((part - weights @ basis[:, start:start + chunk]).abs().max()))
    return CompressedCorrectives(weights.float().cpu().numpy(),
                                 basis.reshape(keep, n_vertices, 3).float().cpu().numpy(), max_error)


def native_body(mhr: Any) -> Any:
    """Our MHR forward over the engine's MHR (shares its storage), for the correctives' layers."""
    from ..mhr.forward import MHRBody

    return mhr if isinstance(mhr, MHRBody) else MHRBody.from_torchscript(mhr)


def track_correctives(mhr: Any, model_params: np.ndarray, track: np.ndarray, track_ids: np.ndarray,
                      max_components: int = MAX_COMPONENTS) -> dict[str, np.ndarray]:
    """Per-track corrective shape keys for the clip rows (arrays of addon/protocol/clip_result.py):
    ``corrective_weights`` (R, K), ``track_corrective_basis`` (T, K, V, 3) zero-padded,
    ``track_corrective_count`` (T,) and ``track_corrective_error_cm`` (T,). Empty (K = 0) when
    the model has no correctives."""
    body = native_body(mhr)
    n_vertices = int(body.num_vertices)
    rows = len(track)
    if not body.has_correctives:
        return {"corrective_weights": np.zeros((rows, 0), np.float32),
                "track_corrective_basis": np.zeros((len(track_ids), 0, n_vertices, 3), np.float32),
                "track_corrective_count": np.zeros(len(track_ids), np.int32),
                "track_corrective_error_cm": np.zeros(len(track_ids), np.float32)}
    params = torch.as_tensor(np.asarray(model_params, np.float32), device=body.device)
    with torch.no_grad():
        activations = body.corrective_activations(body.joint_parameters(params))
        parts = [compress(activations[torch.as_tensor(np.flatnonzero(track == tid), device=body.device)],
                          body.corrective_dense, n_vertices, max_components) for tid in track_ids]
    width = max((p.basis.shape[0] for p in parts), default=0)
    weights = np.zeros((rows, width), np.float32)
    basis = np.zeros((len(track_ids), width, n_vertices, 3), np.float32)
    for k, (tid, part) in enumerate(zip(track_ids, parts)):
        n = part.basis.shape[0]
        weights[np.flatnonzero(track == tid), :n] = part.weights
        basis[k, :n] = part.basis
    return {"corrective_weights": weights, "track_corrective_basis": basis,
            "track_corrective_count": np.array([p.basis.shape[0] for p in parts], np.int32),
            "track_corrective_error_cm": np.array([p.max_error_cm for p in parts], np.float32)}
