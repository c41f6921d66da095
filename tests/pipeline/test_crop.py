"""Crops and batch geometry against the official fixtures (bit-exact crops, exact affine)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from server.errors import ServerError
from server.pipeline import crop
from server.pipeline.inference import mirror_boxes_x
from tests.pipeline import parity_cases as pc

GEOMETRY_KEYS = ("bbox", "bbox_center", "bbox_scale", "affine_trans", "cam_int", "ori_img_size", "img_size",
                 "mask_score")


def _body_batch(case: str) -> dict[str, torch.Tensor]:
    inp = pc.inputs(case)
    return crop.prepare_batch(pc.image(case), inp["boxes"], masks=inp.get("masks"), cam_int=inp.get("cam_int"))


@pytest.mark.parametrize("case", pc.CASES)
def test_body_batch_geometry_exact(case: str) -> None:
    pc.require_parity()
    batch = _body_batch(case)
    it = pc.intermediates(case)
    for key in GEOMETRY_KEYS:
        np.testing.assert_array_equal(batch[key].numpy(), it[f"body.{key}"], err_msg=key)


CROP_CASES = [c for c in pc.CASES if any((pc.CASES_DIR / c).glob("body_*crop_u8_p*.png"))]


@pytest.mark.parametrize("case", CROP_CASES)
def test_body_crops_bit_exact(case: str) -> None:
    pc.require_parity()
    batch = _body_batch(case)
    crops = crop.crops_u8(batch)
    checked = 0
    for i in range(crops.shape[0]):
        ref = pc.stored_png(case, f"body_crop_u8_p{i}.png")
        if ref is not None:
            np.testing.assert_array_equal(crops[i], ref)
            checked += 1
        ref_mask = pc.stored_png(case, f"body_mask_crop_u8_p{i}.png")
        if ref_mask is not None:
            np.testing.assert_array_equal(batch["mask"][0, i, 0].numpy().astype(np.uint8), ref_mask)
            checked += 1
    assert checked > 0


@pytest.mark.parametrize("case", pc.FULL_CASES)
def test_hand_batches_geometry_and_crops(case: str) -> None:
    pc.require_parity()
    it = pc.intermediates(case)
    img = pc.image(case)
    width = img.shape[1]
    cam = torch.from_numpy(it["body.cam_int"])
    left = mirror_boxes_x(it["body.left_hand_xyxy"], width)
    batches = {
        "lhand": crop.prepare_batch(np.ascontiguousarray(img[:, ::-1]), left, padding=crop.HAND_PADDING, cam_int=cam),
        "rhand": crop.prepare_batch(img, it["body.right_hand_xyxy"], padding=crop.HAND_PADDING, cam_int=cam),
    }
    for name, batch in batches.items():
        for key in GEOMETRY_KEYS:
            ref = it[f"{name}.{key}"].copy()
            if name == "lhand" and key == "bbox_center":
                # The harness recorded the batch after run_inference un-mirrored its centre in place.
                ref[..., 0] = width - ref[..., 0] - 1
            np.testing.assert_array_equal(batch[key].numpy(), ref, err_msg=f"{name}.{key}")
        # The hand crop side is 1.2 x the square hand box side (padding 0.9, then 0.75 prior).
        side = batch["bbox"][0, :, 2] - batch["bbox"][0, :, 0]
        np.testing.assert_allclose(batch["bbox_scale"][0, :, 0], side * 1.2, rtol=1e-5)
        ref = pc.stored_png(case, f"{name}_crop_u8_p0.png")
        if ref is not None:
            np.testing.assert_array_equal(crop.crops_u8(batch)[0], ref)


def test_batch_layout_and_dtypes() -> None:
    img = np.zeros((40, 60, 3), np.uint8)
    boxes = np.array([[5, 5, 30, 35], [20, 0, 60, 40]], np.float32)
    masks = np.zeros((2, 40, 60), np.uint8)
    b = crop.prepare_batch(img, boxes, masks=masks)
    shapes = {k: tuple(v.shape) for k, v in b.items()}
    assert shapes == {
        "img": (1, 2, 3, 512, 512), "mask": (1, 2, 1, 512, 512), "mask_score": (1, 2), "bbox": (1, 2, 4),
        "bbox_center": (1, 2, 2), "bbox_scale": (1, 2, 2), "affine_trans": (1, 2, 2, 3),
        "ori_img_size": (1, 2, 2), "img_size": (1, 2, 2), "person_valid": (1, 2), "cam_int": (1, 3, 3),
    }
    assert all(v.dtype == torch.float32 for v in b.values())
    assert b["mask_score"].tolist() == [[1.0, 1.0]]
    assert crop.prepare_batch(img, boxes)["mask_score"].tolist() == [[0.0, 0.0]]
    f = (40 ** 2 + 60 ** 2) ** 0.5
    np.testing.assert_allclose(b["cam_int"][0].numpy(), [[f, 0, 30], [0, f, 20], [0, 0, 1]], rtol=1e-7)
    # Square crop side = 1.25 * max(h, w / 0.75).
    np.testing.assert_allclose(b["bbox_scale"][0, 0].numpy(), [1.25 * max(30, 25 / 0.75)] * 2, rtol=1e-6)


def test_crop_maps_box_centre_to_crop_centre() -> None:
    img = np.zeros((100, 100, 3), np.uint8)
    img[48:53, 58:63] = 255  # a bright 5x5 square, pixel centres 48..52 and 58..62: centre (60, 50)
    b = crop.prepare_batch(img, np.array([[40, 30, 80, 70]], np.float32))
    a = b["affine_trans"][0, 0].double().numpy()
    np.testing.assert_allclose(a @ [60, 50, 1], [256, 256], atol=1e-9)
    c = crop.crops_u8(b)[0]
    ys, xs = np.nonzero(c[..., 0] > 128)
    assert abs(ys.mean() - 256) < 2 and abs(xs.mean() - 256) < 2


def test_warp_matches_plain_bilinear_and_black_border() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    warp = crop.get_warp_matrix(np.array([26.0, 18.0], np.float32), np.array([90.0, 90.0], np.float32))
    out = crop.warp_to_crop(img, warp).astype(np.float64)
    # Float64 bilinear reference; the float32 kernel may differ by one level at .5 boundaries.
    inv = cv2.invertAffineTransform(warp)
    yy, xx = np.mgrid[0:512, 0:512].astype(np.float64)
    sx = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
    sy = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    padded = np.zeros((img.shape[0] + 2, img.shape[1] + 2, 3))
    padded[1:-1, 1:-1] = img

    def px(y, x):
        y, x = np.clip(y + 1, 0, padded.shape[0] - 1), np.clip(x + 1, 0, padded.shape[1] - 1)
        return padded[y, x]

    ref = (px(y0, x0) * (1 - fx) * (1 - fy) + px(y0, x0 + 1) * fx * (1 - fy)
           + px(y0 + 1, x0) * (1 - fx) * fy + px(y0 + 1, x0 + 1) * fx * fy)
    assert np.abs(out - np.rint(ref)).max() <= 1
    assert (out != np.rint(ref)).mean() < 1e-3
    assert out[0, 0].sum() == 0 and out[-1, -1].sum() == 0  # outside the image: black


def test_fma32_is_correctly_rounded() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=1000).astype(np.float32)
    b = (rng.normal(size=1000) * 300).astype(np.float32)
    c = (rng.normal(size=1000) * 1e3).astype(np.float32)
    from fractions import Fraction
    got = crop._fma32(a, b, c)
    for i in range(0, 1000, 37):
        exact = Fraction(float(a[i])) * Fraction(float(b[i])) + Fraction(float(c[i]))
        # Nearest float32 to the exact value.
        f = np.float32(float(exact))
        cands = [np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))]
        best = min(cands, key=lambda v: abs(Fraction(float(v)) - exact))
        assert got[i] == best


@pytest.mark.parametrize("boxes", [np.zeros((0, 4)), np.zeros((2, 3)), np.zeros(4)])
def test_prepare_batch_rejects_bad_boxes(boxes: np.ndarray) -> None:
    with pytest.raises(ServerError, match="Boxes"):
        crop.prepare_batch(np.zeros((10, 10, 3), np.uint8), boxes)


def test_prepare_batch_rejects_bad_image_and_mask_count() -> None:
    with pytest.raises(ServerError, match="RGB uint8"):
        crop.prepare_batch(np.zeros((10, 10), np.uint8), np.array([[0, 0, 5, 5]]))
    with pytest.raises(ServerError, match="masks"):
        crop.prepare_batch(np.zeros((10, 10, 3), np.uint8), np.array([[0, 0, 5, 5]]),
                           masks=np.zeros((2, 10, 10), np.uint8))
