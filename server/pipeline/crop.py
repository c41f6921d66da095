"""Person / hand crops and the batch dict the model consumes.

Reproduces the official `prepare_batch` + `Compose([GetBBoxCenterScale, TopdownAffine,
ToTensor])` bit for bit (reference/sam3d-body.md §5.2): the same float32/float64 mix, the
3-point `cv2.getAffineTransform` and `cv2.warpAffine` (bilinear, constant 0 border), so the
uint8 crops and the stored `affine_trans` / `bbox_center` / `bbox_scale` match the official
ones exactly. Keep the numpy dtypes as they are: changing a float32 to float64 here changes
the crops by one grey level in places, which moves the backbone features.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch

from server.errors import BAD_INPUT, ServerError

BODY_PADDING = 1.25
HAND_PADDING = 0.9
# TopdownAffine first widens every box to this w/h prior, then to the (square) input size.
PRIOR_ASPECT_RATIO = 0.75
CROP_SIZE = 512
# OpenCV 5's INTER_LINEAR warp is the kernel `warp_to_crop` reproduces (checked equal on 400
# random warps, rotations and 1-channel masks included, with opencv-python-headless 5.0.0):
# call it directly there (~0.7 ms instead of ~35 ms per 512x512 crop on one CPU core).
_CV2_IS_V5 = cv2.__version__.split(".")[0] == "5"


def bbox_center_scale(box_xyxy: np.ndarray, padding: float) -> tuple[np.ndarray, np.ndarray]:
    """`GetBBoxCenterScale`: centre = box midpoint, scale = (w, h) * padding (input dtype)."""
    box = np.asarray(box_xyxy)
    x1, y1, x2, y2 = box[0:1], box[1:2], box[2:3], box[3:4]
    center = np.hstack([x1 + x2, y1 + y2]) * 0.5
    scale = np.hstack([x2 - x1, y2 - y1]) * padding
    return center, scale


def fix_aspect_ratio(scale: np.ndarray, aspect_ratio: float) -> np.ndarray:
    """Grow (w, h) to the given w/h ratio, never shrink (official `fix_aspect_ratio`)."""
    w, h = scale[0:1], scale[1:2]
    return np.where(w > h * aspect_ratio, np.hstack([w, w / aspect_ratio]),
                    np.hstack([h * aspect_ratio, h]))


def square_crop_scale(scale: np.ndarray, crop_size: int = CROP_SIZE) -> np.ndarray:
    """`TopdownAffine`'s two-step widening: to 0.75 first, then to the square input."""
    prior = fix_aspect_ratio(scale, PRIOR_ASPECT_RATIO)
    return fix_aspect_ratio(prior, crop_size / crop_size)


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Rotate (a - b) by +90 degrees around b, as mmpose's helper does.
    d = a - b
    return b + np.r_[-d[1], d[0]]


def get_warp_matrix(center: np.ndarray, scale: np.ndarray,
                    output_size: tuple[int, int] = (CROP_SIZE, CROP_SIZE)) -> np.ndarray:
    """Full-image -> crop affine (2x3 float64) from three float32 point pairs (rotation 0).

    Solved by `cv2.getAffineTransform`, as the official code does; an analytic scale/offset
    matrix differs in the last bits and would move crop pixels across rounding boundaries.
    """
    dst_w, dst_h = output_size
    # The official code builds these in float64 and stores them into float32 arrays.
    src_dir = np.array([0.0, scale[0] * -0.5])
    src = np.zeros((3, 2), dtype=np.float32)
    src[0, :] = center + scale * np.zeros(2)
    src[1, :] = center + src_dir + scale * np.zeros(2)
    src[2, :] = _third_point(src[0, :], src[1, :])
    dst = np.zeros((3, 2), dtype=np.float32)
    dst[0, :] = [dst_w * 0.5, dst_h * 0.5]
    dst[1, :] = np.array([dst_w * 0.5, dst_h * 0.5]) + np.array([0.0, dst_w * -0.5])
    dst[2, :] = _third_point(dst[0, :], dst[1, :])
    return cv2.getAffineTransform(np.float32(src), np.float32(dst))


def _fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Exact float32 fused multiply-add (numpy has none).

    The float32 product is exact in float64; the float64 sum is turned into round-to-odd with
    an exact TwoSum error term, so the final cast to float32 rounds once, like an FMA unit.
    """
    p, c = np.broadcast_arrays(np.asarray(a, np.float64) * np.asarray(b, np.float64),
                               np.asarray(c, np.float64))
    s = p + c
    bb = s - p
    err = (p - (s - bb)) + (c - bb)
    inexact_even = (err != 0) & ((s.view(np.int64) & 1) == 0)
    if inexact_even.any():
        s = np.where(inexact_even, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s.astype(np.float32)


def _invert_affine(warp: np.ndarray) -> list[float]:
    # cv2.warpAffine's own inversion (double precision, this operation order).
    m = [float(v) for v in np.asarray(warp, dtype=np.float64).reshape(6)]
    det = m[0] * m[4] - m[1] * m[3]
    det = 1.0 / det if det != 0 else 0.0
    a11, a22 = m[4] * det, m[0] * det
    m[0], m[1], m[3], m[4] = a11, m[1] * -det, m[3] * -det, a22
    b1 = -m[0] * m[2] - m[1] * m[5]
    b2 = -m[3] * m[2] - m[4] * m[5]
    m[2], m[5] = b1, b2
    return m


def warp_to_crop(image: np.ndarray, warp: np.ndarray, crop_size: int = CROP_SIZE) -> np.ndarray:
    """Bilinear affine warp with a black border, bit-exact with OpenCV 5's `warpAffine`.

    The official fixtures were made with OpenCV 5.0, whose INTER_LINEAR kernel works in float32
    (coefficients cast to float, row offset `float(y*M1) + M2`, `fma(M0, x, row)`, two FMA
    lerps, round half to even). OpenCV 4.x uses 1/32-pixel fixed-point weights instead and
    differs by up to 3 grey levels on ~5% of the pixels, so the kernel is reproduced here
    rather than depending on the installed OpenCV version. A (H, W, 1) or (H, W) input comes
    back as (crop, crop), like cv2.
    """
    if _CV2_IS_V5:
        return cv2.warpAffine(image, np.asarray(warp, dtype=np.float64), (crop_size, crop_size),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    img = image if image.ndim == 3 else image[:, :, None]
    height, width, _ = img.shape
    m = np.array(_invert_affine(warp), dtype=np.float64).astype(np.float32)
    idx = np.arange(crop_size, dtype=np.float32)
    row_x = (idx * m[1]).astype(np.float32) + m[2]
    row_y = (idx * m[4]).astype(np.float32) + m[5]
    sx = _fma32(np.float32(m[0]), idx[None, :], row_x[:, None])
    sy = _fma32(np.float32(m[3]), idx[None, :], row_y[:, None])
    ix = np.floor(sx).astype(np.int64)
    iy = np.floor(sy).astype(np.int64)
    ax = (sx - ix.astype(np.float32))[..., None]
    ay = (sy - iy.astype(np.float32))[..., None]

    # Gather through flat pixel indices (one np.take per neighbour, zeroed outside the image in
    # the input dtype before the float cast): the same values as 2-D fancy indexing, ~30% faster.
    flat_img = img.reshape(height * width, img.shape[2])

    def fetch(dy: int, dx: int) -> np.ndarray:
        yy, xx = iy + dy, ix + dx
        inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
        px = np.take(flat_img, np.clip(yy, 0, height - 1) * width + np.clip(xx, 0, width - 1), axis=0)
        px[~inside] = 0
        return px.astype(np.float32)

    p00, p01, p10, p11 = fetch(0, 0), fetch(0, 1), fetch(1, 0), fetch(1, 1)
    top = _fma32(ax, p01 - p00, p00)
    bottom = _fma32(ax, p11 - p10, p10)
    value = _fma32(ay, bottom - top, top)
    out = np.clip(np.rint(value), 0, 255).astype(np.uint8)
    return out[:, :, 0] if out.shape[2] == 1 else out


def crop_one(image: np.ndarray, box_xyxy: np.ndarray, padding: float,
             mask: np.ndarray | None = None, crop_size: int = CROP_SIZE) -> dict[str, np.ndarray]:
    """One person (or hand): crop, warped mask and the geometry the model needs."""
    center, scale = bbox_center_scale(box_xyxy, padding)
    scale = square_crop_scale(scale, crop_size)
    warp = get_warp_matrix(center, scale, (crop_size, crop_size))
    height, width = image.shape[:2]
    # No mask: the warp of an all-zero image with a zero border is all zeros; skip the warp.
    mask_crop = np.zeros((crop_size, crop_size), dtype=np.uint8) if mask is None else warp_to_crop(mask, warp, crop_size)
    return {
        "img": warp_to_crop(image, warp, crop_size),
        "mask": mask_crop,
        "bbox": np.asarray(box_xyxy),
        "bbox_center": center,
        "bbox_scale": scale,
        "affine_trans": warp,
        "ori_img_size": np.array([width, height]),
        "img_size": np.array([crop_size, crop_size]),
    }


def default_cam_int(width: int, height: int) -> torch.Tensor:
    """Official default intrinsics (1, 3, 3): f = image diagonal, principal point = centre."""
    f = (height ** 2 + width ** 2) ** 0.5
    return torch.tensor([[[f, 0, width / 2.0], [0, f, height / 2.0], [0, 0, 1]]],
                        dtype=torch.float32)


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] != 3:
        raise ServerError(BAD_INPUT, "The image must be an RGB uint8 array of shape (H, W, 3).")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ServerError(BAD_INPUT, "The image is empty.")


def prepare_batch(image: np.ndarray, boxes_xyxy: np.ndarray, padding: float = BODY_PADDING,
                  masks: Sequence[np.ndarray] | np.ndarray | None = None,
                  mask_scores: np.ndarray | None = None,
                  cam_int: torch.Tensor | np.ndarray | None = None,
                  crop_size: int = CROP_SIZE) -> dict[str, torch.Tensor]:
    """The official batch dict for all persons of one image (CPU tensors).

    Keys and shapes (N persons): `img` (1,N,3,S,S) float in [0,1]; `mask` (1,N,1,S,S) float
    holding the raw mask values (0/1 or 0/255: the official code does not normalise them);
    `mask_score` (1,N); `bbox` (1,N,4); `bbox_center` (1,N,2); `bbox_scale` (1,N,2) (square
    crop side); `affine_trans` (1,N,2,3) full -> crop; `ori_img_size` (1,N,2) = (W,H);
    `img_size` (1,N,2) = (S,S); `person_valid` (1,N); `cam_int` (1,3,3).
    `masks` are (H, W) or (H, W, 1) uint8 per person; without masks the score is 0, with
    masks and no scores it is 1 (official `prepare_batch`).
    """
    _check_image(image)
    boxes = np.asarray(boxes_xyxy)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.shape[0] < 1:
        raise ServerError(BAD_INPUT, f"Boxes must have shape (N, 4) with N >= 1, got {boxes.shape}.")
    height, width = image.shape[:2]
    n = boxes.shape[0]
    if masks is not None and len(masks) != n:
        raise ServerError(BAD_INPUT, f"Got {len(masks)} masks for {n} boxes.")

    items = []
    scores = []
    for i in range(n):
        mask = None
        if masks is not None:
            mask = np.asarray(masks[i])
            if mask.ndim == 2:
                mask = mask[:, :, None]
            mask = mask.copy()
            scores.append(np.float32(1.0) if mask_scores is None else np.float32(mask_scores[i]))
        else:
            scores.append(np.float32(0.0))
        items.append(crop_one(image, boxes[i], padding, mask, crop_size))

    def stack(key: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([it[key] for it in items])).unsqueeze(0).float()

    # ToTensor: HWC uint8 -> CHW float32 / 255.
    crops = np.stack([it["img"] for it in items]).transpose(0, 3, 1, 2)
    img = torch.from_numpy(np.ascontiguousarray(crops)).float().div(255)
    batch = {
        "img": img.unsqueeze(0),
        "mask": stack("mask").unsqueeze(2),
        "mask_score": torch.from_numpy(np.array(scores, dtype=np.float32)).unsqueeze(0),
        "bbox": stack("bbox"),
        "bbox_center": stack("bbox_center"),
        "bbox_scale": stack("bbox_scale"),
        "affine_trans": stack("affine_trans"),
        "ori_img_size": stack("ori_img_size"),
        "img_size": stack("img_size"),
        "person_valid": torch.ones((1, n)),
    }
    if cam_int is None:
        batch["cam_int"] = default_cam_int(width, height)
    else:
        batch["cam_int"] = torch.as_tensor(np.asarray(cam_int, dtype=np.float32)
                                           if not isinstance(cam_int, torch.Tensor) else cam_int
                                           ).reshape(1, 3, 3).float().clone()
    return batch


def crops_u8(batch: dict[str, torch.Tensor]) -> np.ndarray:
    """(N, S, S, 3) uint8 view of the batch crops (exact: they were u8 / 255)."""
    img = batch["img"][0].permute(0, 2, 3, 1).cpu().numpy()
    return np.rint(img * 255).astype(np.uint8)
