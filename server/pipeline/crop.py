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
# call it directly there (~0.7 ms instead of ~3-5 ms for the numpy kernel per 512x512 crop).
_CV2_IS_V5 = cv2.__version__.split(".")[0] == "5"


def warp_kernel() -> str:
    """Which crop warp runs here, for the server info and the bench (a studio tuning a GPU box
    needs to know: the numpy kernel costs ~17 ms per person crop, OpenCV 5's ~2 ms)."""
    if _CV2_IS_V5:
        return f"OpenCV {cv2.__version__} warpAffine"
    return (f"exact numpy warp (OpenCV {cv2.__version__} is installed, whose kernel differs from the "
            "official one; OpenCV 5 is ~5x faster and needs numpy 2, i.e. an environment without "
            "the bpy module)")


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
    back as (crop, crop), like cv2. Images are uint8 (bool masks work too).
    """
    if _CV2_IS_V5:
        return cv2.warpAffine(image, np.asarray(warp, dtype=np.float64), (crop_size, crop_size),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if image.dtype not in (np.uint8, np.bool_):
        # The fast lerps below rely on pixel values in 0..255 for their exactness.
        raise TypeError(f"warp_to_crop takes uint8 images, got {image.dtype}.")
    img = image if image.ndim == 3 else image[:, :, None]
    m = np.array(_invert_affine(warp), dtype=np.float64).astype(np.float32)
    idx = np.arange(crop_size, dtype=np.float32)
    row_x = (idx * m[1]).astype(np.float32) + m[2]
    row_y = (idx * m[4]).astype(np.float32) + m[5]
    out = np.empty((idx.size, idx.size, img.shape[2]), dtype=np.uint8)

    # The source x of a crop pixel is fma(M0, x, row_x[y]) and its y is fma(M3, x, row_y[y]).
    # For the rotation-free crops used here, row_x is one value and sy == row_y[y] on a whole
    # row (M3 is 0 or ~1e-17 from getAffineTransform's solve), so sx depends on x only and sy
    # on y only: those rows are warped separably. The remaining rows (rotations, or rows whose
    # row_y is so close to 0 that M3 * x moves it) take the per-pixel path.
    values, counts = np.unique(row_x, return_counts=True)
    common_row_x = values[np.argmax(counts)] if values.size else np.float32(0)
    separable = row_x == common_row_x
    if m[3] != 0:
        # fma(M3, x, r) is monotonic in x, so equal to r at both ends means equal on the row.
        separable &= _fma32(m[3], np.float32(crop_size - 1), row_y) == row_y
    rows = np.flatnonzero(separable)
    if rows.size:
        sx = _fma32(np.float32(m[0]), idx, common_row_x)
        flat_out = out.reshape(idx.size, -1)
        if rows.size == idx.size:
            _warp_separable(img, sx, row_y, flat_out)
        else:
            part = np.empty((rows.size, flat_out.shape[1]), dtype=np.uint8)
            _warp_separable(img, sx, row_y[rows], part)
            flat_out[rows] = part
    rows = np.flatnonzero(~separable)
    for r in range(0, rows.size, _CHUNK_ROWS):
        block = rows[r:r + _CHUNK_ROWS]
        sx = _fma32(np.float32(m[0]), idx[None, :], row_x[block, None])
        sy = _fma32(np.float32(m[3]), idx[None, :], row_y[block, None])
        out[block] = _warp_pixels(img, sx, sy)
    return out[:, :, 0] if out.shape[2] == 1 else out


# Above 2**-21 a fraction in [0, 1] is a multiple of 2**-44, so fraction * (integer in
# [-255, 255]) + (integer in [0, 255]) is a multiple of 2**-44 below 2**9: exact in float64.
_EXACT_FRACTION_MIN = np.float32(2.0 ** -21)
# Crop rows per block: the float64 temporaries of a block stay in cache and get reused, where
# whole-crop ones cost as much in page faults as in arithmetic.
_CHUNK_ROWS = 32


def _floor_split(coord: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer part (int64) and float32 fraction, computed as the reference kernel does."""
    i = np.floor(coord).astype(np.int64)
    return i, coord - i.astype(np.float32)


def _lerp_u8(frac: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """fma(frac, p1 - p0, p0) rounded once to float32 for uint8 p0/p1 (the values _fma32 gives).

    `frac` (float32) broadcasts against p0/p1, but not along a short last axis (channels):
    that makes numpy's inner loops a few elements long, several times slower. In float64 the
    expression is exact for the fractions that occur in practice (see
    _EXACT_FRACTION_MIN), so one cast rounds like an FMA; the rare others (a tiny fraction near
    a 0 coordinate, non-finite warps) are redone with _fma32.
    """
    acc = np.subtract(p1, p0, dtype=np.int16).astype(np.float64)
    acc *= frac.astype(np.float64)
    acc += p0
    res = acc.astype(np.float32)
    odd = ~((frac == 0) | ((frac >= _EXACT_FRACTION_MIN) & (frac <= 1)))
    if odd.any():
        sel = np.broadcast_to(odd, res.shape)
        res[sel] = _fma32(np.broadcast_to(frac, res.shape)[sel],
                          np.subtract(p1[sel], p0[sel], dtype=np.float32), p0[sel].astype(np.float32))
    return res


def _lerp_to_u8(frac: np.ndarray, lo: np.ndarray, hi: np.ndarray, out: np.ndarray) -> None:
    """out = uint8 of the rounded fma(frac, hi - lo, lo), float32 inputs (frac as in _lerp_u8).

    The float64 product of two float32 values is exact and the float64 sum rounds once;
    rounding that to float32 gives the FMA result except when the sum lands exactly half-way
    between two float32 values (double rounding): those are found by their bits and redone
    with _fma32. Sums in the float32 subnormal range are not checked: they end up as 0 anyway.
    `hi` is used as scratch space.
    """
    diff = np.subtract(hi, lo, out=hi)
    acc = diff.astype(np.float64)
    acc *= frac.astype(np.float64)
    acc += lo
    value = acc.astype(np.float32)
    bits = acc.view(np.int64)
    np.bitwise_and(bits, 0x1FFFFFFF, out=bits)
    halfway = bits == 0x10000000
    if halfway.any():
        value[halfway] = _fma32(np.broadcast_to(frac, value.shape)[halfway], diff[halfway], lo[halfway])
    np.rint(value, out=value)
    # The lerp of values in [0, 255] stays in range; the clip is only for non-finite warps.
    if not (value.min() >= 0 and value.max() <= 255):
        np.clip(value, 0, 255, out=value)
    np.copyto(out, value, casting="unsafe")


def _warp_separable(img: np.ndarray, sx: np.ndarray, sy: np.ndarray, out: np.ndarray) -> None:
    """Crop rows whose source x depends on the column only (sx) and source y on the row only (sy).

    Per block of crop rows, each source row they need is interpolated along x once (with an
    upscale, many crop rows share a source row), then the crop rows between those. `out` is
    (rows, crop * channels) uint8.
    """
    height, width, channels = img.shape
    ix, ax = _floor_split(sx)
    iy, ay = _floor_split(sy)
    # Clamped so that out-of-image neighbours stay out of the image (both of them when the
    # coordinate is 2+ pixels out) and huge coordinates cannot overflow the index maths.
    ix = np.clip(ix, -2, width)
    iy = np.clip(iy, -2, height)
    src_cols = np.concatenate([ix, ix + 1])
    # Source rows are read as byte runs over the columns' span, then the (column, channel)
    # bytes are picked: numpy gathers single bytes much faster than 3-byte pixels.
    lo = int(np.clip(src_cols.min(), 0, width - 1))
    hi = int(np.clip(src_cols.max(), 0, width - 1)) + 1
    span = img.reshape(height, width * channels)[:, lo * channels:hi * channels]
    byte_cols = ((np.clip(src_cols, lo, hi - 1) - lo)[:, None] * channels + np.arange(channels)).ravel()
    outside_cols = np.repeat((src_cols < 0) | (src_cols >= width), channels)
    any_outside_col = bool(outside_cols.any())
    n = ix.size * channels
    frac = np.repeat(ax, channels)
    for r in range(0, iy.size, _CHUNK_ROWS):
        block = slice(r, r + _CHUNK_ROWS)
        top = iy[block]
        src_rows = np.unique(np.concatenate([top, top + 1]))
        grid = span[np.clip(src_rows, 0, height - 1)].take(byte_cols, axis=1)
        # Neighbours outside the image are blacked out in uint8, before any float work.
        grid[(src_rows < 0) | (src_rows >= height)] = 0
        if any_outside_col:
            grid[:, outside_cols] = 0
        along_x = _lerp_u8(frac, grid[:, :n], grid[:, n:])
        _lerp_to_u8(ay[block, None], along_x.take(np.searchsorted(src_rows, top), axis=0),
                    along_x.take(np.searchsorted(src_rows, top + 1), axis=0), out[block])


def _warp_pixels(img: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
    """General per-pixel bilinear sampling for a few crop rows given by sx, sy (rows, crop)."""
    height, width, channels = img.shape
    ix, ax = _floor_split(sx.ravel())
    iy, ay = _floor_split(sy.ravel())
    x0, y0 = np.clip(ix, -2, width), np.clip(iy, -2, height)
    # One gather for the four neighbours (flat pixel indices, 00 01 10 11), with the ones
    # outside the image zeroed afterwards in uint8, before any float work.
    cx0, cx1 = np.clip(x0, 0, width - 1), np.clip(x0 + 1, 0, width - 1)
    ry0, ry1 = np.clip(y0, 0, height - 1) * width, np.clip(y0 + 1, 0, height - 1) * width
    flat = np.empty((4, ix.size), dtype=np.intp)
    flat[0], flat[1], flat[2], flat[3] = ry0 + cx0, ry0 + cx1, ry1 + cx0, ry1 + cx1
    px = np.take(img.reshape(height * width, channels), flat, axis=0)
    in_x0, in_x1 = (x0 >= 0) & (x0 < width), (x0 >= -1) & (x0 < width - 1)
    in_y0, in_y1 = (y0 >= 0) & (y0 < height), (y0 >= -1) & (y0 < height - 1)
    inside = np.empty((4, ix.size), dtype=bool)
    inside[0], inside[1] = in_y0 & in_x0, in_y0 & in_x1
    inside[2], inside[3] = in_y1 & in_x0, in_y1 & in_x1
    if not inside.all():
        px *= inside[:, :, None]
    # Fractions repeated per channel: see _lerp_u8 on broadcasting along a short last axis.
    ax = np.repeat(ax, channels)
    ay = np.repeat(ay, channels)
    p00, p01, p10, p11 = px.reshape(4, ix.size * channels)
    top = _lerp_u8(ax, p00, p01)
    bottom = _lerp_u8(ax, p10, p11)
    out = np.empty(top.shape, dtype=np.uint8)
    _lerp_to_u8(ay, top, bottom, out)
    return out.reshape(*sx.shape, channels)


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


def concat_batches(batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The people of several images of one camera as one batch (along the person axis): the
    model treats every crop on its own, so a clip's frames share one forward pass."""
    first = batches[0]
    if any(not torch.equal(b["cam_int"], first["cam_int"]) for b in batches[1:]):
        raise ServerError(BAD_INPUT, "frames batched together must share their intrinsics")
    out = {k: torch.cat([b[k] for b in batches], dim=1) for k in first if k != "cam_int"}
    out["cam_int"] = first["cam_int"].clone()
    return out


def crops_u8(batch: dict[str, torch.Tensor]) -> np.ndarray:
    """(N, S, S, 3) uint8 view of the batch crops (exact: they were u8 / 255)."""
    img = batch["img"][0].permute(0, 2, 3, 1).cpu().numpy()
    return np.rint(img * 255).astype(np.uint8)
