"""A clip's pose correctives as K shape keys per track (server/video/correctives.py): the best
rank-K basis in vertex space, exact when a track has at most K frames, chunking changes nothing,
and the clip result carries them in a validated layout."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from addon.protocol.clip_result import check_clip, track_correctives as read_track
from server.video.correctives import compress, track_correctives


def _layers(rows: int, hidden: int = 24, vertices: int = 50, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    activations = torch.relu(torch.randn(rows, hidden, generator=g))
    dense = torch.randn(vertices * 3, hidden, generator=g) * 0.1
    return activations, dense, vertices


def test_exact_when_a_track_has_no_more_frames_than_shape_keys() -> None:
    h, w, v = _layers(rows=6)
    out = compress(h, w, v, max_components=16)
    assert out.basis.shape == (6, v, 3) and out.weights.shape == (6, 6)
    want = (h.double() @ w.double().t()).numpy()
    got = out.weights.astype(np.float64) @ out.basis.reshape(6, -1).astype(np.float64)
    assert np.abs(got - want).max() < 1e-5 and out.max_error_cm < 1e-9


def test_truncation_is_the_best_rank_k_one_and_its_error_is_measured() -> None:
    h, w, v = _layers(rows=40, seed=1)
    d = (h.double() @ w.double().t()).numpy()
    out = compress(h, w, v, max_components=4, chunk=37)  # a chunk that does not divide V*3
    got = out.weights.astype(np.float64) @ out.basis.reshape(4, -1).astype(np.float64)
    u, s, vt = np.linalg.svd(d, full_matrices=False)
    best = (u[:, :4] * s[:4]) @ vt[:4]
    assert np.abs(got - best).max() < 1e-5
    assert out.max_error_cm == pytest.approx(np.abs(d - best).max(), rel=1e-4)
    unchunked = compress(h, w, v, max_components=4, chunk=10**6)
    assert np.allclose(unchunked.weights @ unchunked.basis.reshape(4, -1), got, atol=1e-5)


def test_no_correctives_no_shape_keys_and_a_bad_layer_is_refused() -> None:
    h, w, v = _layers(rows=5)
    out = compress(torch.zeros_like(h), w, v)
    assert out.basis.shape == (0, v, 3) and out.weights.shape == (5, 0) and out.max_error_cm == 0.0
    with pytest.raises(ValueError, match="expected 153"):
        compress(h, w, v + 1)


def test_tracks_of_a_clip_on_the_fixture_mhr(parity_dir: Path) -> None:
    from server.mhr.forward import MHRBody

    module = torch.jit.load(str(parity_dir / "checkpoints" / "dinov3_tiny" / "assets" / "mhr_model.pt"))
    body = MHRBody.from_torchscript(module)
    g = np.random.default_rng(3)
    params = np.zeros((9, 204), np.float32)
    params[:, 6:136] = g.normal(0.0, 0.4, (9, 130))
    track = np.array([0, 1, 0, 1, 0, 1, 0, 0, 0], np.int32)
    out = track_correctives(module, params, track, np.array([0, 1], np.int32), max_components=4)
    assert out["track_corrective_count"].tolist() == [4, 3]  # six frames truncated; three exact
    assert out["corrective_weights"].shape == (9, 4)
    assert np.all(out["corrective_weights"][track == 1, 3] == 0)  # padding of the shorter track
    with torch.no_grad():
        want = body.pose_correctives(body.joint_parameters(torch.as_tensor(params))).numpy()
    for tid in (0, 1):
        rows = np.flatnonzero(track == tid)
        n = out["track_corrective_count"][tid]
        got = np.einsum("rk,kvd->rvd", out["corrective_weights"][rows, :n], out["track_corrective_basis"][tid, :n])
        err = np.abs(got - want[rows]).max()
        assert err <= out["track_corrective_error_cm"][tid] * 1.01 + 1e-6
    assert out["track_corrective_error_cm"][1] < 1e-5 < out["track_corrective_error_cm"][0]
    assert np.abs(want).max() > 100 * out["track_corrective_error_cm"][1]  # not trivially zero


def _clip(**extra):
    rows, vertices = 3, 4
    arrays = {
        "kind": np.array("clip"), "fps": np.array(24.0), "frames": np.arange(3, dtype=np.int32),
        "cam_int": np.eye(3), "image_size": np.array([64, 48]),
        "frame": np.arange(rows, dtype=np.int32), "track": np.zeros(rows, np.int32),
        "pred_cam_t": np.zeros((rows, 3)), "mhr_skel_state": np.zeros((rows, 127, 8)),
        "track_ids": np.array([0], np.int32), "track_shape_params": np.zeros((1, 45)),
        "track_scales": np.zeros((1, 68)), "track_rest_vertices": np.zeros((1, vertices, 3)),
        "track_rest_skel_state": np.zeros((1, 127, 8)),
        "corrective_weights": np.ones((rows, 2), np.float32),
        "track_corrective_basis": np.ones((1, 2, vertices, 3), np.float32),
        "track_corrective_count": np.array([2], np.int32),
        "track_corrective_error_cm": np.zeros(1, np.float32),
    }
    arrays.update(extra)
    return {k: v for k, v in arrays.items() if v is not None}


def test_the_clip_result_layout_is_checked() -> None:
    clip = check_clip(_clip())
    weights, basis = read_track(clip, 0, np.array([2, 0]))
    assert weights.shape == (2, 2) and basis.shape == (2, 4, 3)
    assert read_track(check_clip(_clip(track_corrective_count=np.array([0], np.int32))), 0, np.arange(3)) is None
    with pytest.raises(ValueError, match="but not"):
        check_clip(_clip(track_corrective_error_cm=None))
    with pytest.raises(ValueError, match="track_corrective_basis"):
        check_clip(_clip(track_corrective_basis=np.ones((1, 2, 5, 3), np.float32)))
    with pytest.raises(ValueError, match="0..2"):
        check_clip(_clip(track_corrective_count=np.array([3], np.int32)))


def test_a_clip_without_readable_correctives_still_completes(parity_dir: Path, tmp_path: Path) -> None:
    """An MHR module whose layers cannot be read (an unknown TorchScript layout) still poses:
    the clip comes back without corrective arrays instead of failing at the end."""
    from server.engine import load_engine
    from server.video.bench_clip import MemoryClip
    from server.video.clip import ClipJob, ClipRequest
    from tests.video.clip_data import panned_clip

    engine = load_engine(checkpoint=str(parity_dir / "checkpoints" / "dinov3_tiny"), device="cpu",
                         detector=None, cache_dir=str(tmp_path / "cache"))

    class Opaque(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return self.inner(*args)

    class Wrapped:
        def __init__(self, inner):
            self.inner, self.mhr, self.device = inner, Opaque(inner.mhr), inner.device

        def reconstruct(self, request, **kwargs):
            return self.inner.reconstruct(request, **kwargs)

        def _detector(self):
            return None

    frames, boxes = panned_clip(parity_dir / "images", n_frames=3)
    result = ClipJob(Wrapped(engine), MemoryClip(frames), ClipRequest(frame_boxes=dict(enumerate(boxes)))).run()
    clip = check_clip(result)
    assert "track_corrective_basis" not in clip and len(clip["frame"]) == 3
