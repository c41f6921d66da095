"""Blender camera parameters from intrinsics (numpy; the bpy projection test is in tests/blender)."""
from __future__ import annotations

import numpy as np
import pytest

from addon.rig import axes, camera


def _k(fx, fy, cx, cy):
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])


def test_centred_landscape_camera():
    p = camera.camera_params(_k(2000, 2000, 960, 540), (1920, 1080), [0.1, 0.2, 5.0])
    assert p.sensor_fit == "HORIZONTAL"
    assert np.isclose(p.lens_mm, 2000 * 36 / 1920)
    assert p.shift_x == pytest.approx(0) and p.shift_y == pytest.approx(0)
    assert (p.resolution_x, p.resolution_y) == (1920, 1080)
    assert p.pixel_aspect_x == p.pixel_aspect_y == 1.0
    assert np.allclose(p.location, axes.camera_location_blender([0.1, 0.2, 5.0]))
    assert p.rotation_euler == pytest.approx((np.pi / 2, 0, 0))
    assert p.clip_end > 5.0


def test_portrait_uses_vertical_fit_and_shifts():
    p = camera.camera_params(_k(1500, 1500, 400, 700), (720, 1280), [0, 0, 3.0])
    assert p.sensor_fit == "VERTICAL"
    assert np.isclose(p.lens_mm, 1500 * 36 / 1280)
    # principal point left of centre: the view window moves right (positive shift_x)
    assert p.shift_x == pytest.approx((360 - 400) / 1280)
    assert p.shift_y == pytest.approx((700 - 640) / 1280)


def test_non_square_pixels_set_pixel_aspect():
    p = camera.camera_params(_k(1100, 1000, 320, 240), (640, 480), [0, 0, 2.0])
    assert p.pixel_aspect_x == 1.0 and p.pixel_aspect_y == pytest.approx(1.1)


def test_bad_intrinsics_are_rejected():
    with pytest.raises(ValueError, match="3x3"):
        camera.camera_params(np.eye(2), (10, 10), [0, 0, 1])
    with pytest.raises(ValueError, match="positive"):
        camera.camera_params(_k(-1, 1, 0, 0), (10, 10), [0, 0, 1])
    with pytest.raises(ValueError, match="image_size"):
        camera.camera_params(_k(1, 1, 0, 0), (0, 10), [0, 0, 1])
    with pytest.raises(ValueError, match="skew"):
        k = _k(100, 100, 5, 5)
        k[0, 1] = 3
        camera.camera_params(k, (10, 10), [0, 0, 1])
    with pytest.raises(ValueError, match="finite"):
        camera.camera_params(_k(1, 1, 0, 0), (10, 10), [0, np.nan, 1])


def test_projection_matches_3db_keypoints(mhr_samples):
    """The samples' own 2D keypoints are K·(kp3d + cam_t) with the solved sample intrinsics."""
    from tests.rig.standin_data import SAMPLE_FOCAL, SAMPLE_IMAGE_SIZE
    with np.load(mhr_samples / "img_subj00.npz") as d:
        kp3d, t, kp2d = d["pred_keypoints_3d"], d["pred_cam_t"], d["pred_keypoints_2d"]
    w, h = SAMPLE_IMAGE_SIZE
    uv = camera.project_camera_points(kp3d + t, _k(SAMPLE_FOCAL, SAMPLE_FOCAL, w / 2, h / 2))
    assert np.abs(uv - kp2d).max() < 1e-2
