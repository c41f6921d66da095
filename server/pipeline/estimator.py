"""`process_one_image`: one RGB image (+ optional boxes, masks, intrinsics, prompts) -> outputs.

Mirrors the official `SAM3DBodyEstimator.process_one_image` (reference/sam3d-body.md §5.1,
§5.12): boxes from the caller (used in the given order), else from the detector (sorted by
`np.lexsort` on x1, y1, x2, y2), else the whole image; masks only together with boxes (score 1,
values not normalised); intrinsics from the caller, else the official default. The per-person
dicts of the official code are returned stacked: one array per official key with a leading
person axis (docs/ARCHITECTURE.md "Result"), plus `cam_int` (3, 3), the intrinsics used.

Every bad input raises `ServerError(BAD_INPUT | NO_PERSON, message)`.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch

from server.errors import BAD_INPUT, NO_PERSON, ServerError
from server.pipeline.crop import prepare_batch
from server.pipeline.inference import DUMMY_LABEL, run_inference, to_device
from server.profiling import stage

NUM_KEYPOINTS = 70
# -1 = a "not a point" click; -2 = the official padding/dummy prompt (its position is zeroed by
# the prompt encoder, so it may lie anywhere, even off the image).
PROMPT_LABEL_MIN, PROMPT_LABEL_MAX = -2, NUM_KEYPOINTS - 1
INFERENCE_TYPES = ("body", "full")

# Official output name -> key of the model's pose dict.
OUTPUT_KEYS = {
    "focal_length": "focal_length",
    "pred_keypoints_3d": "pred_keypoints_3d",
    "pred_keypoints_2d": "pred_keypoints_2d",
    "pred_vertices": "pred_vertices",
    "pred_cam_t": "pred_cam_t",
    "pred_pose_raw": "pred_pose_raw",
    "global_rot": "global_rot",
    "body_pose_params": "body_pose",
    "hand_pose_params": "hand",
    "scale_params": "scale",
    "shape_params": "shape",
    "expr_params": "face",
    "pred_joint_coords": "pred_joint_coords",
    "pred_global_rots": "joint_global_rots",
    "mhr_model_params": "mhr_model_params",
}


def _check_image(img: Any) -> np.ndarray:
    if not isinstance(img, np.ndarray):
        raise ServerError(BAD_INPUT, f"The image must be a numpy array, got {type(img).__name__}.")
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ServerError(BAD_INPUT, f"The image must be RGB uint8 of shape (H, W, 3), got "
                          f"{img.dtype} {img.shape}.")
    if img.shape[0] < 2 or img.shape[1] < 2:
        raise ServerError(BAD_INPUT, f"The image is too small ({img.shape[1]}x{img.shape[0]}).")
    return np.ascontiguousarray(img)


def validate_boxes(boxes: Any, width: int, height: int) -> np.ndarray:
    """(N, 4) xyxy pixel boxes; each must be finite, non-degenerate and overlap the image.

    The numeric dtype is kept (the official crop arithmetic follows it); lists become float32.
    """
    arr = np.asarray(boxes) if isinstance(boxes, np.ndarray) else np.asarray(boxes, dtype=np.float32)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ServerError(BAD_INPUT, f"Boxes must be numbers, got dtype {arr.dtype}.")
    if arr.size % 4 or arr.size == 0:
        raise ServerError(BAD_INPUT, f"Boxes must have shape (N, 4) as x1, y1, x2, y2; got {arr.shape}.")
    arr = arr.reshape(-1, 4)
    for i, (x1, y1, x2, y2) in enumerate(arr.astype(np.float64)):
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            raise ServerError(BAD_INPUT, f"Box {i} has a non-finite coordinate: {arr[i].tolist()}.")
        if x2 - x1 < 1 or y2 - y1 < 1:
            raise ServerError(BAD_INPUT, f"Box {i} {arr[i].tolist()} is degenerate: it needs x2 > x1 and "
                              "y2 > y1 (xyxy pixels, at least 1 px wide and tall).")
        if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
            raise ServerError(BAD_INPUT, f"Box {i} {arr[i].tolist()} lies outside the {width}x{height} image.")
    return arr


def validate_masks(masks: Any, n_boxes: int, width: int, height: int) -> np.ndarray:
    """(N, H, W, 1) uint8, one mask per box, values kept as given (0/1 or 0/255)."""
    if isinstance(masks, (list, tuple)):
        if len(masks) != n_boxes:
            raise ServerError(BAD_INPUT, f"Got {len(masks)} masks for {n_boxes} boxes; give one mask per box.")
        masks = [np.asarray(m) for m in masks]
        for i, m in enumerate(masks):
            if m.shape not in ((height, width), (height, width, 1)):
                raise ServerError(BAD_INPUT, f"Mask {i} has shape {m.shape}; it must match the image "
                                  f"({height}, {width}).")
        masks = np.stack([m.reshape(height, width) for m in masks])
    arr = np.asarray(masks)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3 or arr.shape[1:] != (height, width):
        raise ServerError(BAD_INPUT, f"Masks must have shape (N, {height}, {width}) to match the image, got {arr.shape}.")
    if arr.shape[0] != n_boxes:
        raise ServerError(BAD_INPUT, f"Got {arr.shape[0]} masks for {n_boxes} boxes; give one mask per box.")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)) \
                or arr.min() < 0 or arr.max() > 255:
            raise ServerError(BAD_INPUT, "Mask values must be in 0..255 (0/1 or 0/255 masks).")
        arr = arr.astype(np.uint8)
    return arr.reshape(-1, height, width, 1)


def validate_cam_int(cam_int: Any) -> torch.Tensor:
    """(1, 3, 3) float32 intrinsics from a (3, 3) / (1, 3, 3) array or tensor."""
    k = cam_int.detach().cpu().double().numpy() if isinstance(cam_int, torch.Tensor) else np.asarray(cam_int, dtype=np.float64)
    if k.size != 9:
        raise ServerError(BAD_INPUT, f"Intrinsics must be a 3x3 matrix, got shape {k.shape}.")
    k = k.reshape(3, 3)
    if not np.all(np.isfinite(k)):
        raise ServerError(BAD_INPUT, "Intrinsics contain NaN or infinite values.")
    if k[0, 0] <= 0 or k[1, 1] <= 0:
        raise ServerError(BAD_INPUT, f"Focal lengths must be positive, got fx={k[0, 0]}, fy={k[1, 1]}.")
    src = cam_int if isinstance(cam_int, torch.Tensor) else torch.from_numpy(np.asarray(cam_int))
    return src.detach().cpu().reshape(1, 3, 3).to(torch.float32).clone()


def _parse_prompts(prompts: Sequence[Sequence[float]], n_persons: int, width: int,
                   height: int) -> list[tuple[float, float, int, int | None]]:
    parsed = []
    for i, p in enumerate(prompts):
        if len(p) not in (3, 4):
            raise ServerError(BAD_INPUT, f"Prompt {i} must be (x, y, label) or (x, y, label, person), got {p!r}.")
        try:
            x, y, label = float(p[0]), float(p[1]), float(p[2])
        except (TypeError, ValueError):
            raise ServerError(BAD_INPUT, f"Prompt {i} has non-numeric values: {p!r}.") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ServerError(BAD_INPUT, f"Prompt {i} has a non-finite coordinate: {p!r}.")
        if label != int(label) or not PROMPT_LABEL_MIN <= label <= PROMPT_LABEL_MAX:
            raise ServerError(BAD_INPUT, f"Prompt {i} label {p[2]!r} must be an integer keypoint index "
                              f"0..{PROMPT_LABEL_MAX}, -1 (not a point) or -2 (dummy).")
        # Off-image points are fine where the person's crop reaches past the image edge (checked
        # against the crops in assign_prompts), as Meta's crop-space prompts allow.
        person = None
        if len(p) == 4:
            person = int(p[3])
            if person != p[3] or not 0 <= person < n_persons:
                raise ServerError(BAD_INPUT, f"Prompt {i} person index {p[3]!r} must be 0..{n_persons - 1}.")
        parsed.append((x, y, int(label), person))
    return parsed


def assign_prompts(prompts: Sequence[Sequence[float]], batch: dict[str, torch.Tensor],
                   boxes: np.ndarray, width: int, height: int) -> list[tuple[float, float, int, int]]:
    """Validated full-image prompts as (x, y, label, person). A prompt without a person index
    goes to the person whose crop holds it (ties: the box that contains it, then the nearest box
    centre)."""
    n = boxes.shape[0]
    parsed = _parse_prompts(prompts, n, width, height)
    affine = batch["affine_trans"][0].double().cpu().numpy()  # (N, 2, 3)
    crop = float(batch["img_size"][0, 0, 0])
    assigned = []
    for i, (x, y, label, person) in enumerate(parsed):
        uv = affine @ np.array([x, y, 1.0]) / crop  # (N, 2)
        inside = np.all((uv >= 0) & (uv <= 1), axis=1)
        if label == DUMMY_LABEL:
            # A dummy carries no position: it joins the given person, else the one whose crop
            # holds it, else the nearest box.
            if person is None:
                b = boxes.astype(np.float64)
                dist = np.hypot((b[:, 0] + b[:, 2]) / 2 - x, (b[:, 1] + b[:, 3]) / 2 - y)
                person = int(np.nonzero(inside)[0][0]) if inside.any() else int(np.argmin(dist))
            assigned.append((x, y, label, person))
            continue
        if person is None:
            candidates = np.nonzero(inside)[0]
            if candidates.size == 0:
                raise ServerError(BAD_INPUT, f"Prompt {i} at ({x:g}, {y:g}) is not inside any person's crop; "
                                  "click on a person or give the person index.")
            b = boxes[candidates].astype(np.float64)
            in_box = (b[:, 0] <= x) & (x <= b[:, 2]) & (b[:, 1] <= y) & (y <= b[:, 3])
            dist = np.hypot((b[:, 0] + b[:, 2]) / 2 - x, (b[:, 1] + b[:, 3]) / 2 - y)
            person = int(candidates[np.lexsort((dist, ~in_box))[0]])
        elif not inside[person]:
            raise ServerError(BAD_INPUT, f"Prompt {i} at ({x:g}, {y:g}) lies outside the crop of person {person}.")
        assigned.append((x, y, label, person))
    return assigned


def prompts_to_crop(prompts: Sequence[Sequence[float]], batch: dict[str, torch.Tensor],
                    boxes: np.ndarray, width: int, height: int,
                    assigned: list[tuple[float, float, int, int]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-image pixel prompts -> per-person body-crop prompts.

    Returns `(keypoint_prompt (N, K, 3), prompted (N,) bool)` with (x, y) in [0, 1] of each
    person's 512 crop (the coordinates `run_keypoint_prompt` takes) and the label; persons with
    fewer than K prompts are padded with dummy prompts (0, 0, -2), the official padding. Persons
    are assigned by `assign_prompts` (pass its result as `assigned` to skip doing it twice).
    """
    n = boxes.shape[0]
    if assigned is None:
        assigned = assign_prompts(prompts, batch, boxes, width, height)
    per_person: list[list[tuple[float, float, int]]] = [[] for _ in range(n)]
    for x, y, label, person in assigned:
        if label == DUMMY_LABEL:
            per_person[person].append((0.0, 0.0, label))  # the official dummy (0, 0, -2)
            continue
        # Crop coordinates in float32 like the official prompts: ([x, y, 1] @ Aᵀ) / 512.
        a = batch["affine_trans"][0, person].float()
        pt = torch.tensor([x, y, 1.0], dtype=torch.float32) @ a.T / batch["img_size"][0, person].float()
        per_person[person].append((float(pt[0]), float(pt[1]), label))
    k = max(len(p) for p in per_person)
    out = torch.zeros((n, k, 3), dtype=torch.float32)
    out[:, :, 2] = -2
    for j, pts in enumerate(per_person):
        for m, (u, v, label) in enumerate(pts):
            out[j, m] = torch.tensor([u, v, float(label)])
    prompted = torch.tensor([len(p) > 0 for p in per_person])
    return out, prompted


def _stack_outputs(pose: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                   masks: np.ndarray | None) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {"bbox": batch["bbox"][0].cpu().numpy()}
    for name, key in OUTPUT_KEYS.items():
        out[name] = pose[key].detach().cpu().numpy()
    if masks is not None:
        out["mask"] = masks
    return out


def _hand_boxes(batch_hand: dict[str, torch.Tensor]) -> np.ndarray:
    # Official: float32 tensor arithmetic, then `.item()` into a float64 array.
    c = batch_hand["bbox_center"].flatten(0, 1)
    s = batch_hand["bbox_scale"].flatten(0, 1)
    return torch.stack([c[:, 0] - s[:, 0] / 2, c[:, 1] - s[:, 1] / 2,
                        c[:, 0] + s[:, 0] / 2, c[:, 1] + s[:, 1] / 2], dim=1).cpu().double().numpy()


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@torch.no_grad()
def process_one_image(model: torch.nn.Module, img_rgb: np.ndarray, boxes: Any = None, masks: Any = None,
                      cam_int: Any = None, inference_type: str = "full",
                      prompts: Sequence[Sequence[float]] | None = None,
                      detector: Callable[[np.ndarray], np.ndarray] | None = None,
                      return_info: bool = False, fit_prompts: bool = False) -> dict[str, np.ndarray] | tuple[dict[str, np.ndarray], dict]:
    """Reconstruct every person of one image (official `process_one_image`, stacked outputs).

    Args:
        model: a loaded `SAM3DBody`.
        img_rgb: RGB uint8 (H, W, 3). (The official code also takes BGR paths; we take RGB only.)
        boxes: (N, 4) xyxy pixels, used in the given order; None: detector, else the full image.
        masks: (N, H, W) or (N, H, W, 1) per box (needs `boxes`), values as given (0/1 or 0/255).
        cam_int: (3, 3) intrinsics in pixels; None: f = image diagonal, centre principal point.
        inference_type: "full" (body + hands) or "body".
        prompts: (x, y, label) or (x, y, label, person) in full-image pixels, label = mhr70 index
            or -1; applied with `run_keypoint_prompt` after the body pass (see inference.py).
        detector: callable RGB image -> (K, 4) xyxy person boxes, used when `boxes` is None.
        return_info: also return the branch info of full mode (hand checks, prompts, IK).
        fit_prompts: after the prompted run, fit each prompted person's pose so its prompted
            keypoints land on their points (keypoint_fit.py; not part of the official pipeline).
            Adds `fit_*` arrays and reprojects that person's `pred_keypoints_2d` through K.

    Returns:
        dict of stacked numpy arrays: the official keys (`bbox`, `focal_length`,
        `pred_keypoints_3d`, ..., `mhr_model_params`; full mode `lhand_bbox`, `rhand_bbox`;
        masks given: `mask`) plus `cam_int` (3, 3) float32.
    """
    img = _check_image(img_rgb)
    height, width = img.shape[:2]
    if inference_type not in INFERENCE_TYPES:
        raise ServerError(BAD_INPUT, f"inference_type must be one of {INFERENCE_TYPES}, got {inference_type!r}.")

    if boxes is not None:
        box_arr = validate_boxes(boxes, width, height)
    elif masks is not None:
        raise ServerError(BAD_INPUT, "Masks need person boxes: give one box per mask.")
    elif detector is not None:
        box_arr = np.asarray(detector(img))
        if box_arr.size == 0:
            raise ServerError(NO_PERSON, "No person was found in the image; draw a box around the person.")
        box_arr = validate_boxes(box_arr, width, height)
    else:
        # Official fallback: the whole image as one (integer) box.
        box_arr = np.array([0, 0, width, height]).reshape(1, 4)

    mask_arr = validate_masks(masks, box_arr.shape[0], width, height) if masks is not None else None
    cam = validate_cam_int(cam_int) if cam_int is not None else None

    device = _model_device(model)
    with stage("crop"):
        batch = prepare_batch(img, box_arr, masks=mask_arr, cam_int=cam)
        keypoint_prompt = prompted = None
        assigned: list[tuple[float, float, int, int]] = []
        if prompts is not None and len(prompts) > 0:
            assigned = assign_prompts(prompts, batch, box_arr, width, height)
            keypoint_prompt, prompted = prompts_to_crop(prompts, batch, box_arr, width, height, assigned)
        batch = to_device(batch, device)
    if hasattr(model, "_initialize_batch"):
        model._initialize_batch(batch)
    result = run_inference(model, img, batch, inference_type,
                           keypoint_prompt=None if keypoint_prompt is None else keypoint_prompt.to(device),
                           prompted=None if prompted is None else prompted.to(device))
    info: dict[str, Any] = {}
    if inference_type == "full":
        output, batch_lhand, batch_rhand, _, _, info = result
    else:
        output = result
    out = _stack_outputs(output["mhr"], batch, mask_arr)
    if inference_type == "full":
        out["lhand_bbox"] = _hand_boxes(batch_lhand)
        out["rhand_bbox"] = _hand_boxes(batch_rhand)
    out["cam_int"] = batch["cam_int"][0].cpu().numpy().astype(np.float32)
    if fit_prompts and assigned:
        from server.pipeline.keypoint_fit import fit_outputs

        with stage("fit"):
            report = fit_outputs(model, out, assigned, out["cam_int"])
        out.update(report.as_arrays())
    return (out, info) if return_info else out
