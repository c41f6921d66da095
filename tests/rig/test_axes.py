"""Axis / unit conversions and rotation helpers (numpy only)."""
from __future__ import annotations

import numpy as np
import pytest

from addon.rig import axes


def _random_quats(rng, n):
    q = rng.normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_basis_is_a_proper_rotation_up_and_front():
    assert np.allclose(axes.A @ axes.A.T, np.eye(3))
    assert np.isclose(np.linalg.det(axes.A), 1.0)
    # MHR +Y (up) -> Blender +Z; +Z (character's front) -> Blender -Y; cm -> m.
    assert np.allclose(axes.mhr_to_blender_points([0, 100, 0]), [0, 0, 1])
    assert np.allclose(axes.mhr_to_blender_points([0, 0, 100]), [0, -1, 0])
    assert np.allclose(axes.mhr_to_blender_points([100, 0, 0]), [1, 0, 0])


def test_point_round_trips():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(5, 7, 3)) * 50
    assert np.allclose(axes.blender_to_mhr_points(axes.mhr_to_blender_points(p)), p)
    with pytest.raises(ValueError, match="trailing axis of 3"):
        axes.mhr_to_blender_points(np.zeros((4, 2)))


def test_camera_and_person_placement_agree():
    """A person's camera-space point maps to (its MHR point in Blender) + its armature offset."""
    rng = np.random.default_rng(1)
    v = rng.normal(size=(20, 3)) * 40
    t0, t1 = np.array([-2.5, 1.2, 8.3]), np.array([0.7, 0.9, 6.0])
    for t in (t0, t1):
        via_camera = axes.camera_to_blender_points(axes.mhr_to_camera_points(v, t), t0)
        via_object = axes.mhr_to_blender_points(v) + axes.person_offset_blender(t, t0)
        assert np.allclose(via_camera, via_object, atol=1e-12)
    # The camera sits where the camera-space origin lands.
    assert np.allclose(axes.camera_location_blender(t0), axes.camera_to_blender_points(np.zeros(3), t0))


def test_camera_rotation_is_euler_x_90_and_looks_along_plus_y():
    ax = axes.CAMERA_EULER_XYZ[0]
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    assert np.allclose(rx, axes.CAMERA_ROTATION)
    # Blender camera local: looks along -Z, up +Y; OpenCV: looks along +Z, up -Y.
    assert np.allclose(axes.CAMERA_ROTATION @ [0, 0, -1], [0, 1, 0])
    assert np.allclose(axes.CAMERA_ROTATION @ [0, 1, 0], [0, 0, 1])
    assert np.allclose(axes.CAMERA_TO_BLENDER @ [0, 0, 1], [0, 1, 0])
    assert np.allclose(axes.CAMERA_TO_BLENDER @ [0, -1, 0], [0, 0, 1])


def test_quaternion_matrix_round_trip_including_half_turns():
    rng = np.random.default_rng(2)
    q = _random_quats(rng, 200)
    half_turns = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0.6, 0.8, 0, 0]], float)
    q = np.concatenate([q, half_turns, [[0, 0, 0, 1.0]]])
    m = axes.quat_xyzw_to_matrix(q)
    assert np.allclose(m @ np.swapaxes(m, 1, 2), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(m), 1.0)
    wxyz = axes.matrix_to_quat_wxyz(m)
    xyzw = wxyz[:, [1, 2, 3, 0]]
    same = np.abs(np.sum(xyzw * q, axis=1))  # q and -q are the same rotation
    assert np.allclose(same, 1.0, atol=1e-10)
    assert np.all(wxyz[:, 0] >= 0)


def test_quaternion_convention_is_xyzw_right_handed():
    # 90 degrees about +Z: x -> y.
    s = np.sqrt(0.5)
    m = axes.quat_xyzw_to_matrix([0, 0, s, s])
    assert np.allclose(m @ [1, 0, 0], [0, 1, 0])
    with pytest.raises(ValueError, match="zero-length"):
        axes.quat_xyzw_to_matrix([0, 0, 0, 0])


def test_skel_state_matrix_and_inverse():
    rng = np.random.default_rng(3)
    state = np.concatenate([rng.normal(size=(6, 3)) * 30, _random_quats(rng, 6),
                            rng.uniform(0.5, 2.0, size=(6, 1))], axis=1)
    m = axes.skel_state_to_matrices(state)
    p_local = rng.normal(size=3)
    expect = state[0, :3] + state[0, 7] * axes.quat_xyzw_to_matrix(state[0, 3:7]) @ p_local
    assert np.allclose((m[0] @ np.append(p_local, 1))[:3], expect)
    inv = axes.skel_state_to_matrices(axes.invert_skel_state(state))
    assert np.allclose(inv @ m, np.eye(4), atol=1e-10)
    assert np.allclose(axes.invert_similarity(m) @ m, np.eye(4), atol=1e-10)


def test_mhr_matrix_to_blender_is_conjugation_with_units():
    rng = np.random.default_rng(4)
    state = np.concatenate([rng.normal(size=(1, 3)) * 30, _random_quats(rng, 1), [[1.3]]], axis=1)
    g = axes.skel_state_to_matrices(state)[0]
    gb = axes.mhr_matrix_to_blender(g)
    p_local_m = rng.normal(size=3)  # bone-local point in metres = 100x that in cm
    world_cm = (g @ np.append(p_local_m * 100, 1))[:3]
    assert np.allclose((gb @ np.append(p_local_m, 1))[:3], axes.mhr_to_blender_points(world_cm))
