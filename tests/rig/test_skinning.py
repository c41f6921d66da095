"""Numpy LBS and the rest-space correctives (numpy only)."""
from __future__ import annotations

import numpy as np
import pytest

from addon.rig import axes, skinning


def _random_similarity(rng, n):
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    state = np.concatenate([rng.normal(size=(n, 3)) * 10, q, rng.uniform(0.7, 1.4, (n, 1))], 1)
    return axes.skel_state_to_matrices(state)


def _random_skin(rng, v, j, k=8, used=3):
    idx = np.zeros((v, k), np.int32)
    w = np.zeros((v, k), np.float32)
    idx[:, :used] = rng.integers(0, j, size=(v, used))
    w[:, :used] = rng.uniform(0.1, 1.0, size=(v, used))
    w /= w.sum(1, keepdims=True)
    return idx, w


def test_identity_transforms_keep_vertices():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(50, 3))
    idx, w = _random_skin(rng, 50, 5)
    out = skinning.linear_blend_skinning(v, idx, w, np.broadcast_to(np.eye(4), (5, 4, 4)))
    assert np.allclose(out, v, atol=1e-6)


def test_lbs_matches_explicit_sum():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(30, 3))
    idx, w = _random_skin(rng, 30, 6)
    t = _random_similarity(rng, 6)
    expect = np.zeros((30, 3))
    for i in range(30):
        for k in range(8):
            expect[i] += w[i, k] * (t[idx[i, k]] @ np.append(v[i], 1))[:3]
    assert np.allclose(skinning.linear_blend_skinning(v, idx, w, t), expect, atol=1e-6)


def test_skinning_transforms_are_identity_at_bind():
    rng = np.random.default_rng(2)
    q = rng.normal(size=(4, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    bind = np.concatenate([rng.normal(size=(4, 3)), q, np.ones((4, 1))], 1)
    assert np.allclose(skinning.skinning_transforms(bind, bind), np.eye(4), atol=1e-12)


def test_corrective_offsets_restore_target():
    rng = np.random.default_rng(3)
    rest = rng.normal(size=(40, 3)) * 20
    idx, w = _random_skin(rng, 40, 7)
    t = _random_similarity(rng, 7)
    target = skinning.linear_blend_skinning(rest, idx, w, t) + rng.normal(size=(40, 3)) * 0.3
    delta = skinning.corrective_offsets(target, rest, idx, w, t)
    assert np.allclose(skinning.linear_blend_skinning(rest + delta, idx, w, t), target, atol=1e-8)


def test_bad_skin_tables_are_rejected():
    v = np.zeros((3, 3))
    with pytest.raises(ValueError, match="lie in"):
        skinning.linear_blend_skinning(v, np.full((3, 2), 9), np.ones((3, 2)) / 2,
                                       np.broadcast_to(np.eye(4), (2, 4, 4)))
    with pytest.raises(ValueError, match="differs"):
        skinning.linear_blend_skinning(v, np.zeros((3, 2), int), np.ones((3, 3)),
                                       np.broadcast_to(np.eye(4), (2, 4, 4)))
    with pytest.raises(ValueError, match="non-negative"):
        skinning.linear_blend_skinning(v, np.zeros((3, 1), int), -np.ones((3, 1)),
                                       np.broadcast_to(np.eye(4), (2, 4, 4)))
