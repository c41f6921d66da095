"""Intrinsics: official default, user values with validation, EXIF 35 mm focal."""
from __future__ import annotations

import math

import numpy as np
import pytest

from server.errors import BAD_INPUT, ServerError
from server.pipeline import intrinsics as K
from server.pipeline.crop import default_cam_int
from tests.pipeline import parity_cases as pc


def test_default_matches_official_batch_default() -> None:
    k = K.default_intrinsics(768, 512)
    assert k.dtype == np.float32
    np.testing.assert_array_equal(k, default_cam_int(768, 512)[0].numpy())
    f = math.hypot(768, 512)
    np.testing.assert_allclose(k, [[f, 0, 384], [0, f, 256], [0, 0, 1]], rtol=1e-7)


def test_default_equals_fixture_cam_int(parity_dir) -> None:
    it = pc.intermediates("01_dinov3_body_1p")
    h, w = pc.image("01_dinov3_body_1p").shape[:2]
    np.testing.assert_array_equal(K.default_intrinsics(w, h)[None], it["body.cam_int"])


def test_user_intrinsics() -> None:
    k, src = K.resolve_intrinsics(640, 480, user=(700, 940, 300, 236))
    assert src == K.SOURCE_USER
    np.testing.assert_array_equal(k, np.array([[700, 0, 300], [0, 940, 236], [0, 0, 1]], np.float32))


@pytest.mark.parametrize("bad, msg", [
    ((float("nan"), 500, 320, 240), "finite"),
    ((500, float("inf"), 320, 240), "finite"),
    ((500, 500, float("-inf"), 240), "finite"),
    ((0, 500, 320, 240), "positive"),
    ((500, -3, 320, 240), "positive"),
    (("abc", 500, 320, 240), "number"),
])
def test_user_intrinsics_rejected(bad, msg) -> None:
    with pytest.raises(ServerError, match=msg) as e:
        K.resolve_intrinsics(640, 480, user=bad)
    assert e.value.code == BAD_INPUT


def test_user_intrinsics_wrong_length() -> None:
    with pytest.raises(ServerError, match="fx, fy, cx, cy"):
        K.resolve_intrinsics(640, 480, user=(500, 500, 320))


def test_exif_focal() -> None:
    k, src = K.resolve_intrinsics(4000, 3000, exif_focal_35mm=26)
    assert src == K.SOURCE_EXIF
    f = 26 * 5000 / math.hypot(36, 24)
    np.testing.assert_allclose(k, [[f, 0, 2000], [0, f, 1500], [0, 0, 1]], rtol=1e-6)
    # 43.27 mm equivalent = the official default field of view.
    k43, _ = K.resolve_intrinsics(4000, 3000, exif_focal_35mm=math.hypot(36, 24))
    np.testing.assert_allclose(k43, K.default_intrinsics(4000, 3000), rtol=1e-6)


def test_priority_and_fallbacks() -> None:
    assert K.resolve_intrinsics(100, 50, user=(80, 80, 50, 25), exif_focal_35mm=50)[1] == K.SOURCE_USER
    assert K.resolve_intrinsics(100, 50, exif_focal_35mm=0)[1] == K.SOURCE_DEFAULT
    assert K.resolve_intrinsics(100, 50, exif_focal_35mm=float("nan"))[1] == K.SOURCE_DEFAULT
    assert K.resolve_intrinsics(100, 50)[1] == K.SOURCE_DEFAULT
    with pytest.raises(ServerError, match="positive"):
        K.exif_intrinsics(-5, 100, 50)
    with pytest.raises(ServerError, match="Image size"):
        K.default_intrinsics(0, 50)
