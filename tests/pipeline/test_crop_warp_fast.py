"""The fast numpy `warp_to_crop` against a frozen copy of the straightforward kernel it replaced.

Both reproduce OpenCV 5's float32 INTER_LINEAR warpAffine; the fast one splits the work into a
separable path and a per-pixel path and avoids most of the exact-FMA emulation, so it is held
bit-exact to the reference on random images, boxes, rotations and degenerate warps.
"""
from __future__ import annotations

import numpy as np
import pytest

from server.pipeline import crop


# The FMA emulation and the matrix inversion are shared with the fast kernel (unchanged by it,
# and held to the official crops by test_crop.py); only the warp kernel itself is frozen here.
_reference_fma32 = crop._fma32
_reference_invert_affine = crop._invert_affine


def _reference_warp(image: np.ndarray, warp: np.ndarray, crop_size: int = crop.CROP_SIZE) -> np.ndarray:
    """The numpy kernel as it was before the fast version (kept verbatim, cv2 branch dropped)."""
    img = image if image.ndim == 3 else image[:, :, None]
    height, width, _ = img.shape
    m = np.array(_reference_invert_affine(warp), dtype=np.float64).astype(np.float32)
    idx = np.arange(crop_size, dtype=np.float32)
    row_x = (idx * m[1]).astype(np.float32) + m[2]
    row_y = (idx * m[4]).astype(np.float32) + m[5]
    sx = _reference_fma32(np.float32(m[0]), idx[None, :], row_x[:, None])
    sy = _reference_fma32(np.float32(m[3]), idx[None, :], row_y[:, None])
    ix = np.floor(sx).astype(np.int64)
    iy = np.floor(sy).astype(np.int64)
    ax = (sx - ix.astype(np.float32))[..., None]
    ay = (sy - iy.astype(np.float32))[..., None]
    flat_img = img.reshape(height * width, img.shape[2])

    def fetch(dy: int, dx: int) -> np.ndarray:
        yy, xx = iy + dy, ix + dx
        inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
        px = np.take(flat_img, np.clip(yy, 0, height - 1) * width + np.clip(xx, 0, width - 1), axis=0)
        px[~inside] = 0
        return px.astype(np.float32)

    p00, p01, p10, p11 = fetch(0, 0), fetch(0, 1), fetch(1, 0), fetch(1, 1)
    top = _reference_fma32(ax, p01 - p00, p00)
    bottom = _reference_fma32(ax, p11 - p10, p10)
    value = _reference_fma32(ay, bottom - top, top)
    out = np.clip(np.rint(value), 0, 255).astype(np.uint8)
    return out[:, :, 0] if out.shape[2] == 1 else out


@pytest.fixture(autouse=True)
def _numpy_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    # With OpenCV 5 installed warp_to_crop calls cv2; these tests are about the numpy kernel.
    monkeypatch.setattr(crop, "_CV2_IS_V5", False)


def _crop_warp(box: np.ndarray, padding: float, crop_size: int) -> np.ndarray:
    # crop_one's geometry.
    center, scale = crop.bbox_center_scale(np.asarray(box, np.float32), padding)
    scale = crop.square_crop_scale(scale, crop_size)
    return crop.get_warp_matrix(center, scale, (crop_size, crop_size))


def _random_image(rng: np.random.Generator, height: int, width: int, kind: str) -> np.ndarray:
    if kind == "rgb":
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = (rng.random((height, width)) < 0.5).astype(np.uint8) * rng.choice([1, 255])
    return mask if kind == "mask2d" else mask[:, :, None]


def _assert_same(image: np.ndarray, warp: np.ndarray, crop_size: int) -> None:
    want = _reference_warp(image, warp, crop_size)
    got = crop.warp_to_crop(image, warp, crop_size)
    assert got.dtype == np.uint8 and got.shape == want.shape
    if not np.array_equal(got, want):
        bad = np.argwhere(got != want)
        raise AssertionError(f"{len(bad)} pixels differ, first at {bad[0].tolist()}")


@pytest.mark.parametrize("seed", range(30))
def test_random_crops_match_reference(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    height, width = (int(v) for v in rng.integers(1, 400, 2))
    image = _random_image(rng, height, width, ["rgb", "rgb", "mask2d", "mask3d"][seed % 4])
    crop_size = [512, 512, 256, 97][seed % 4 if seed % 5 else 0]
    # Boxes anywhere from well inside to partly or fully outside the image, float or integer.
    x1 = rng.uniform(-0.6 * width, 1.1 * width)
    y1 = rng.uniform(-0.6 * height, 1.1 * height)
    bw, bh = rng.uniform(0.5, 1.5 * max(height, width), 2)
    box = np.array([x1, y1, x1 + bw, y1 + bh])
    if seed % 3 == 0:
        box = np.round(box)
    padding = [crop.BODY_PADDING, crop.HAND_PADDING, 1.0][seed % 3]
    _assert_same(image, _crop_warp(box, padding, crop_size), crop_size)


@pytest.mark.parametrize("seed", range(10))
def test_rotated_affine_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(2000 + seed)
    height, width = (int(v) for v in rng.integers(2, 300, 2))
    image = _random_image(rng, height, width, ["rgb", "mask2d", "mask3d"][seed % 3])
    crop_size = [512, 160, 64][seed % 3]
    angle = rng.uniform(-np.pi, np.pi)
    zoom = rng.uniform(0.1, 6.0)
    cos, sin = zoom * np.cos(angle), zoom * np.sin(angle)
    warp = np.array([[cos, -sin, 0.0], [sin, cos, 0.0]])
    # Centre a random source point (sometimes off the image) in the crop.
    src = rng.uniform(-0.3, 1.3, 2) * [width, height]
    warp[:, 2] = crop_size / 2 - warp[:, :2] @ src
    if seed % 2:
        warp[:, :2] += rng.normal(scale=0.2 * zoom, size=(2, 2))  # shear / anisotropic scale
    _assert_same(image, warp, crop_size)


@pytest.mark.parametrize("box", [
    # Integer boxes near the origin: getAffineTransform leaves a ~1e-17 shear term, and for
    # the crop row that maps exactly onto source row 0 it moves sy off 0 (per-pixel path).
    [-10.0, -2.0, 54.0, 62.0],
    [-7.0, 3.0, 57.0, 67.0],
    # Fully outside the image, on each side.
    [-500.0, 10.0, -300.0, 90.0],
    [10.0, 500.0, 60.0, 700.0],
    # Much larger than the image, and a sub-pixel box (a huge upscale).
    [-200.0, -300.0, 400.0, 500.0],
    [20.25, 30.5, 20.5, 30.75],
])
def test_edge_boxes_match_reference(box: list[float]) -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    _assert_same(image, _crop_warp(np.array(box), crop.BODY_PADDING, 512), 512)
    _assert_same(image[:, :, 1], _crop_warp(np.array(box), crop.BODY_PADDING, 128), 128)


def test_tiny_and_strided_images_match_reference() -> None:
    rng = np.random.default_rng(4)
    warp = _crop_warp(np.array([-1.0, -1.0, 2.0, 2.0]), crop.BODY_PADDING, 64)
    for shape in [(1, 1, 3), (1, 1), (2, 3, 1), (3, 1, 3)]:
        _assert_same(rng.integers(0, 256, shape, dtype=np.uint8), warp, 64)
    # A mirrored (negative-stride) view, as the left-hand crops see before their copy.
    image = rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)
    _assert_same(image[:, ::-1], _crop_warp(np.array([10.0, 20.0, 70.0, 100.0]), crop.HAND_PADDING, 256), 256)
    _assert_same(image, _crop_warp(np.array([10.0, 20.0, 70.0, 100.0]), crop.HAND_PADDING, 1), 1)


@pytest.mark.parametrize("warp", [
    np.zeros((2, 3)),                                   # singular: everything samples (0, 0)
    np.array([[1e-9, 0.0, 3.0], [0.0, 1e-9, 4.0]]),     # enormous source coordinates
    np.array([[1e9, 0.0, -5e9], [0.0, 1e9, 7e9]]),      # sub-1e-8 pixel steps
    np.array([[2.0, 0.0, 0.5], [0.0, 2.0, 0.5]]),       # exact half-pixel fractions
    np.array([[1.0, 0.0, 1e-7], [0.0, 1.0, -1e-7]]),    # fractions far below 2**-21
])
def test_degenerate_warps_match_reference(warp: np.ndarray) -> None:
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    with np.errstate(all="ignore"):
        want = _reference_warp(image, warp, 96)
        got = crop.warp_to_crop(image, warp, 96)
    assert np.array_equal(got, want)


def test_lerps_redo_the_float64_double_rounding_cases() -> None:
    # The fast lerps round a float64 result to float32; these inputs are built so that this
    # double rounding is wrong, and must be caught and redone exactly.
    # 1 + 65 * ax = 1 + 2**-24 + 2**-54 exactly: float64 drops the 2**-54 and lands on the
    # float32 half-way point 1 + 2**-24, which then rounds to even (1.0) instead of up.
    ax = np.float32(16519105 * 2.0 ** -54)
    assert float(ax) == 16519105 * 2.0 ** -54 and ax < 2.0 ** -21
    got = crop._lerp_u8(np.array([ax, np.float32(0.5)]), np.array([1, 7], np.uint8), np.array([66, 8], np.uint8))
    want = _reference_fma32(np.array([ax, 0.5], np.float32), np.float32([65, 1]), np.float32([1, 7]))
    assert np.array_equal(got, want) and got[0] == np.float32(1 + 2.0 ** -23)
    # lo + ay * (hi - lo) = 3.5 - 2**-23 - 2**-53 exactly: the exact float32 rounding is
    # 3.5 - 2**-22 (-> 3), the float64 sum lands on the half-way point and would give 3.5 (-> 4).
    ay = np.float32([0.001623376621864736, 0.0013440860202535987, 0.0012626262614503503])
    lo = np.full(3, np.float32(3.5) - np.float32(2.0 ** -22))
    hi = np.float32([3.500073194503784, 3.5000884532928467, 3.500094175338745])
    want = np.rint(_reference_fma32(ay, hi - lo, lo)).astype(np.uint8)
    assert np.float64(ay[0]) * np.float64(hi[0] - lo[0]) + np.float64(lo[0]) == 3.5 - 2.0 ** -23
    out = np.empty(3, np.uint8)
    crop._lerp_to_u8(ay, lo, hi.copy(), out)
    assert want.tolist() == [3, 3, 3] and np.array_equal(out, want)


def test_lerps_match_exact_fma_on_random_inputs() -> None:
    rng = np.random.default_rng(6)
    n = 200_000
    # Fractions of every magnitude, including the tiny ones near a 0 coordinate.
    frac = np.where(rng.random(n) < 0.5, rng.random(n), 2.0 ** rng.uniform(-40, 0, n)).astype(np.float32)
    frac[:50] = [0, 1, 2.0 ** -21, 2.0 ** -22, 0.5] * 10
    p0 = rng.integers(0, 256, n, dtype=np.uint8)
    p1 = rng.integers(0, 256, n, dtype=np.uint8)
    top = crop._lerp_u8(frac, p0, p1)
    assert np.array_equal(top, _reference_fma32(frac, p1.astype(np.float32) - p0, p0.astype(np.float32)))
    bottom = crop._lerp_u8(frac[::-1].copy(), p1, p0)
    out = np.empty(n, np.uint8)
    crop._lerp_to_u8(frac, top, bottom.copy(), out)
    want = np.clip(np.rint(_reference_fma32(frac, bottom - top, top)), 0, 255).astype(np.uint8)
    assert np.array_equal(out, want)


def test_non_uint8_images_are_refused() -> None:
    warp = _crop_warp(np.array([0.0, 0.0, 10.0, 10.0]), crop.BODY_PADDING, 16)
    with pytest.raises(TypeError):
        crop.warp_to_crop(np.zeros((10, 10), np.uint16), warp, 16)
    mask = np.random.default_rng(7).random((12, 9)) < 0.5  # bool masks stay supported
    assert np.array_equal(crop.warp_to_crop(mask, warp, 16), _reference_warp(mask, warp, 16))


def test_the_server_says_which_warp_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crop, "_CV2_IS_V5", True)
    assert crop.warp_kernel().startswith("OpenCV ")
    monkeypatch.setattr(crop, "_CV2_IS_V5", False)
    assert crop.warp_kernel().startswith("exact numpy warp") and "numpy 2" in crop.warp_kernel()
