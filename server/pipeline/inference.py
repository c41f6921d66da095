"""`run_inference`: body and full (body + both hands) inference on one prepared batch.

A faithful re-implementation of the official `SAM3DBody.run_inference` (reference/sam3d-body.md
§5.10-5.11), on top of the model's official methods `forward_step`, `run_keypoint_prompt`,
`_get_hand_box` and `head_pose.mhr_forward`. Every quirk of the official code is copied on
purpose and marked "QUIRK": changing one moves the outputs away from the official ones (the
parity fixtures check them).

Pose outputs are the model's `output["mhr"]` dicts (tensors with a leading B*N axis):
`pred_pose_raw, global_rot, body_pose, shape, scale, hand, face, pred_cam, pred_keypoints_3d,
pred_keypoints_2d, pred_keypoints_2d_cropped, pred_cam_t, focal_length, pred_joint_coords,
joint_global_rots, mhr_model_params, pred_vertices, hand_box` (body pass).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from server.models.rotations import euler_to_rotmat, fix_wrist_euler, rotation_angle_difference, \
    rotmat_to_euler
from server.pipeline.crop import HAND_PADDING, prepare_batch
from server.profiling import stage

WRIST_ANGLE_THRESHOLD = 1.4  # rad, C1 and the IK gate
HAND_CROP_MIN_SIDE = 64  # px, C2
HAND_KP_CROP_LIMIT = 0.5  # C3, crop-normalised
WRIST_DIST_LIMIT = 0.25  # C4, fraction of the hand crop side

KP_RIGHT_WRIST, KP_LEFT_WRIST = 41, 62  # mhr70
KP_RIGHT_ELBOW, KP_LEFT_ELBOW = 8, 7
LOWARM_JOINTS = (76, 40)  # [left, right] in the 127-joint skeleton
WRIST_TWIST_JOINTS = (77, 41)
LEFT_WRIST_JOINT, RIGHT_WRIST_JOINT = 78, 42
# Wrist Euler (X, Z, Y) entries of the 133 body parameters, [left, right].
WRIST_BODY_PARAMS = (41, 43, 42, 31, 33, 32)
DUMMY_LABEL = -2


def to_device(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


# ------------------------------------------------------------------------------ hand geometry


def mirror_boxes_x(boxes_xyxy: np.ndarray, width: int) -> np.ndarray:
    """Boxes of the horizontally flipped image: x1' = W - x2 - 1, x2' = W - x1 - 1.

    Pixel centres sit at integer coordinates (cv2's convention, used by the crop warp), so
    `img[:, ::-1]` maps x to W - 1 - x; the same "- 1" un-mirrors the hand outputs later.
    """
    out = boxes_xyxy.copy()
    out[:, 0] = width - boxes_xyxy[:, 2] - 1
    out[:, 2] = width - boxes_xyxy[:, 0] - 1
    return out


def unmirror_left_hand(hand_out: dict[str, torch.Tensor], batch_lhand: dict[str, torch.Tensor],
                       scale_mean: torch.Tensor, scale_comps: torch.Tensor, width: int) -> None:
    """Turn the hand decoder's right-hand answer on the mirrored image into a left hand (in place)."""
    # Python floats via .item(), exactly as the official code: the arithmetic below then runs in
    # float32 with these scalars.
    r_mean, l_mean = scale_mean[8].item(), scale_mean[9].item()
    r_std, l_std = scale_comps[8, 8].item(), scale_comps[9, 9].item()
    hand_out["scale"][:, 9] = ((r_mean + r_std * hand_out["scale"][:, 8]) - l_mean) / l_std
    jgr = hand_out["joint_global_rots"]
    jgr[:, LEFT_WRIST_JOINT] = jgr[:, RIGHT_WRIST_JOINT].clone()
    # QUIRK: the official un-mirroring of the wrist rotation negates rows 1 and 2, i.e.
    # diag(1,-1,-1) @ R, rather than conjugating R by the x mirror; copied as is.
    jgr[:, LEFT_WRIST_JOINT, [1, 2], :] *= -1
    hand_out["hand"][:, :54] = hand_out["hand"][:, 54:]
    batch_lhand["bbox_center"][:, :, 0] = width - batch_lhand["bbox_center"][:, :, 0] - 1


def wrist_zero_rotation(joint_global_rots: torch.Tensor, joint_rotation: torch.Tensor) -> torch.Tensor:
    """(BN, 2, 3, 3) global wrist rotation with a zero local wrist pose, [left, right]."""
    lowarm = joint_global_rots[:, list(LOWARM_JOINTS)]
    twist = torch.tensor(WRIST_TWIST_JOINTS, device=joint_rotation.device)
    return lowarm @ joint_rotation[twist]


def hand_wrist_global(lhand_out: Mapping[str, torch.Tensor], rhand_out: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(BN, 2, 3, 3) wrist rotations predicted by the hand passes, [left, right]."""
    return torch.stack([lhand_out["joint_global_rots"][:, LEFT_WRIST_JOINT],
                        rhand_out["joint_global_rots"][:, RIGHT_WRIST_JOINT]], dim=1)


def fused_local_wrist(pred_global_wrist: torch.Tensor, wrist_zero: torch.Tensor) -> torch.Tensor:
    """Local wrist rotation that puts the wrist at the hand pass's global rotation: zeroᵀ · R."""
    return torch.einsum("kabc,kabd->kadc", pred_global_wrist, wrist_zero)


def hand_validity(body_out: Mapping[str, torch.Tensor], lhand_out: Mapping[str, torch.Tensor],
                  rhand_out: Mapping[str, torch.Tensor], batch_lhand: Mapping[str, torch.Tensor],
                  batch_rhand: Mapping[str, torch.Tensor], ori_local_wrist: torch.Tensor,
                  joint_rotation: torch.Tensor, width: int,
                  thresh_wrist_angle: float = WRIST_ANGLE_THRESHOLD) -> dict[str, torch.Tensor]:
    """The four official checks per hand, each (BN, 2) bool [left, right], plus `hand_valid`
    and the measured quantities (`wrist_angle`, `crop_side`, `max_abs_kp`, `wrist_dist`)."""
    # C1: wrist angle between the body pass and the hand pass.
    wrist_zero = wrist_zero_rotation(body_out["joint_global_rots"], joint_rotation)
    fused = fused_local_wrist(hand_wrist_global(lhand_out, rhand_out), wrist_zero)
    angle = rotation_angle_difference(ori_local_wrist, fused)
    # C2: hand crop large enough (both sides of the square crop).
    c2 = torch.stack([(batch_lhand["bbox_scale"].flatten(0, 1) > HAND_CROP_MIN_SIDE).all(dim=1),
                      (batch_rhand["bbox_scale"].flatten(0, 1) > HAND_CROP_MIN_SIDE).all(dim=1)], dim=1)
    # C3: every hand-pass keypoint inside the hand crop. QUIRK: the 49 non-hand keypoints that the
    # hand head zeroes (3D point 0, projected through the hand camera) take part too, as official.
    max_kp = torch.stack([lhand_out["pred_keypoints_2d_cropped"].abs().amax(dim=(1, 2)),
                          rhand_out["pred_keypoints_2d_cropped"].abs().amax(dim=(1, 2))], dim=1)
    # C4: hand-pass wrist close to the body-pass wrist in the image.
    right_kp = rhand_out["pred_keypoints_2d"][:, [KP_RIGHT_WRIST]].clone()
    left_kp = lhand_out["pred_keypoints_2d"][:, [KP_RIGHT_WRIST]].clone()
    left_kp[:, :, 0] = width - left_kp[:, :, 0] - 1  # back from the mirrored image
    body_right = body_out["pred_keypoints_2d"][:, [KP_RIGHT_WRIST]].clone()
    body_left = body_out["pred_keypoints_2d"][:, [KP_LEFT_WRIST]].clone()
    # QUIRK: the right-hand distance is normalised by the LEFT hand crop side and vice versa.
    right_dist = (right_kp - body_right).flatten(0, 1).norm(dim=-1) / batch_lhand["bbox_scale"].flatten(0, 1)[:, 0]
    left_dist = (left_kp - body_left).flatten(0, 1).norm(dim=-1) / batch_rhand["bbox_scale"].flatten(0, 1)[:, 0]
    dist = torch.stack([left_dist, right_dist], dim=1)
    checks = {
        "C1": angle < thresh_wrist_angle,
        "C2": c2,
        "C3": max_kp < HAND_KP_CROP_LIMIT,
        "C4": dist < WRIST_DIST_LIMIT,
    }
    checks["hand_valid"] = checks["C1"] & checks["C2"] & checks["C3"] & checks["C4"]
    checks.update(wrist_angle=angle, crop_side=torch.stack(
        [batch_lhand["bbox_scale"].flatten(0, 1)[:, 0], batch_rhand["bbox_scale"].flatten(0, 1)[:, 0]], dim=1),
        max_abs_kp=max_kp, wrist_dist=dist)
    return checks


def full_to_crop(batch: Mapping[str, torch.Tensor], kp2d: torch.Tensor) -> torch.Tensor:
    """Full-image px (BN, K, 2) -> crop-normalised [-0.5, 0.5] (official `_full_to_crop`)."""
    homo = torch.cat([kp2d, torch.ones_like(kp2d[:, :, [-1]])], dim=-1)
    affine = batch["affine_trans"].flatten(0, 1).to(homo)
    img_size = batch["img_size"].flatten(0, 1).unsqueeze(1)
    return (homo @ affine.mT)[..., :2] / img_size - 0.5


def wrist_elbow_prompt(batch: Mapping[str, torch.Tensor], body_out: Mapping[str, torch.Tensor],
                       lhand_out: Mapping[str, torch.Tensor], rhand_out: Mapping[str, torch.Tensor],
                       hand_valid: torch.Tensor, width: int) -> torch.Tensor:
    """Keypoint prompt (BN, K, 3) = (x, y in [0,1] of the body crop, label) for the re-run.

    Points: right wrist (right hand pass), left wrist (left hand pass), right elbow, left elbow
    (body pass); labels 41, 62, 8, 7. A point is unusable when it lies outside the body crop or
    its hand failed a check (mask order [R, L, R, L]).
    QUIRK (batch-size dependent, as official): with one person the unusable points are DROPPED
    (K can be 0..4); with several persons they become dummy prompts (0, 0, -2) so K stays 4.
    """
    right_wrist = rhand_out["pred_keypoints_2d"][:, [KP_RIGHT_WRIST]].clone()
    left_wrist = lhand_out["pred_keypoints_2d"][:, [KP_RIGHT_WRIST]].clone()
    left_wrist[:, :, 0] = width - left_wrist[:, :, 0] - 1
    right_elbow = body_out["pred_keypoints_2d"][:, [KP_RIGHT_ELBOW]].clone()
    left_elbow = body_out["pred_keypoints_2d"][:, [KP_LEFT_ELBOW]].clone()
    prompt = torch.cat([full_to_crop(batch, right_wrist), full_to_crop(batch, left_wrist),
                        full_to_crop(batch, right_elbow), full_to_crop(batch, left_elbow)], dim=1)
    prompt = torch.cat([prompt, prompt[..., [-1]]], dim=-1)
    for i, label in enumerate((KP_RIGHT_WRIST, KP_LEFT_WRIST, KP_RIGHT_ELBOW, KP_LEFT_ELBOW)):
        prompt[:, i, -1] = label
    hand_mask = hand_valid[..., [1, 0, 1, 0]]
    if prompt.shape[0] > 1:
        invalid = ((prompt[..., 0] < -0.5) | (prompt[..., 0] > 0.5) | (prompt[..., 1] < -0.5)
                   | (prompt[..., 1] > 0.5) | (~hand_mask)).unsqueeze(-1)
        dummy = torch.zeros((1, 1, 3)).to(prompt)
        dummy[:, :, -1] = DUMMY_LABEL
        prompt[:, :, :2] = torch.clamp(prompt[:, :, :2] + 0.5, min=0.0, max=1.0)
        prompt = torch.where(invalid, dummy, prompt)
    else:
        # Note the strict inequalities here versus the non-strict ones of the B>1 branch (official).
        valid = (torch.all((prompt[:, :, :2] > -0.5) & (prompt[:, :, :2] < 0.5), dim=2) & hand_mask).squeeze(0)
        prompt = prompt[:, valid]
        prompt[:, :, :2] = torch.clamp(prompt[:, :, :2] + 0.5, min=0.0, max=1.0)
    return prompt


def merge_hands(body_out: dict[str, torch.Tensor], lhand_out: Mapping[str, torch.Tensor],
                rhand_out: Mapping[str, torch.Tensor], hand_valid: torch.Tensor, ori_local_wrist: torch.Tensor,
                head_pose: torch.nn.Module, thresh_wrist_angle: float = WRIST_ANGLE_THRESHOLD) -> dict[str, torch.Tensor]:
    """Drop the hand passes into the body output (in place): hand pose, hand scales, shared finger
    scale/shape, and the wrist rotation solved by "IK" (reference §5.11 steps 6-7).

    Returns the IK intermediates: `wrist_xzy_raw`, `wrist_xzy_fixed`, `ik_angle`, `ik_valid`.
    """
    hand_pose = torch.cat([lhand_out["hand"][:, :54], rhand_out["hand"][:, 54:]], dim=1)
    scale = body_out["scale"].clone()
    scale[:, 9] = lhand_out["scale"][:, 9]
    scale[:, 8] = rhand_out["scale"][:, 8]
    scale[:, 18:] = (lhand_out["scale"][:, 18:] + rhand_out["scale"][:, 18:]) / 2
    shape = body_out["shape"].clone()
    shape[:, 40:] = (lhand_out["shape"][:, 40:] + rhand_out["shape"][:, 40:]) / 2

    # FK of the body with the hand values, to get the lower-arm rotations the wrist hangs from.
    joint_rots = head_pose.mhr_forward(
        global_trans=body_out["global_rot"] * 0, global_rot=body_out["global_rot"],
        body_pose_params=body_out["body_pose"], hand_pose_params=hand_pose, scale_params=scale,
        shape_params=shape, expr_params=body_out["face"], return_joint_rotations=True)[1]
    wrist_zero = wrist_zero_rotation(joint_rots, head_pose.joint_rotation)
    fused = fused_local_wrist(hand_wrist_global(lhand_out, rhand_out), wrist_zero)
    wrist_raw = rotmat_to_euler("XZY", fused)
    wrist_xzy = fix_wrist_euler(wrist_raw)

    angle = rotation_angle_difference(ori_local_wrist, fused)
    valid = (angle < thresh_wrist_angle) & hand_valid  # (BN, 2)
    valid3 = valid.unsqueeze(-1)

    body_wrist = body_out["body_pose"][:, list(WRIST_BODY_PARAMS)].unflatten(1, (2, 3))
    body_out["body_pose"][:, list(WRIST_BODY_PARAMS)] = torch.where(valid3, wrist_xzy, body_wrist).flatten(1, 2)
    body_hand = body_out["hand"].unflatten(1, (2, 54))
    body_out["hand"] = torch.where(valid3, hand_pose.unflatten(1, (2, 54)), body_hand).flatten(1, 2)

    hand_scale = torch.stack([body_out["scale"][:, 9], body_out["scale"][:, 8]], dim=1)
    new_hand_scale = torch.stack([scale[:, 9], scale[:, 8]], dim=1)
    masked = torch.where(valid, new_hand_scale, hand_scale)
    body_out["scale"][:, 9] = masked[:, 0]
    body_out["scale"][:, 8] = masked[:, 1]

    # Shared finger scales and hand shape: valid-weighted mean of the two hand passes.
    n_valid = valid.sum(dim=1, keepdim=True)
    wl, wr = valid[:, [0]], valid[:, [1]]
    body_out["scale"][:, 18:] = torch.where(
        n_valid > 0, (lhand_out["scale"][:, 18:] * wl + rhand_out["scale"][:, 18:] * wr) / (n_valid + 1e-8),
        body_out["scale"][:, 18:])
    body_out["shape"][:, 40:] = torch.where(
        n_valid > 0, (lhand_out["shape"][:, 40:] * wl + rhand_out["shape"][:, 40:] * wr) / (n_valid + 1e-8),
        body_out["shape"][:, 40:])
    return {"wrist_xzy_raw": wrist_raw, "wrist_xzy_fixed": wrist_xzy, "ik_angle": angle, "ik_valid": valid}


def final_forward(body_out: dict[str, torch.Tensor], head_pose: torch.nn.Module, width: int, height: int) -> None:
    """Final MHR forward with the merged parameters and the final 2D keypoints (in place)."""
    verts, j3d, jcoords, model_params, _ = head_pose.mhr_forward(
        global_trans=body_out["global_rot"] * 0, global_rot=body_out["global_rot"],
        body_pose_params=body_out["body_pose"], hand_pose_params=body_out["hand"],
        scale_params=body_out["scale"], shape_params=body_out["shape"], expr_params=body_out["face"],
        return_keypoints=True, return_joint_coords=True, return_model_params=True,
        return_joint_rotations=True)
    j3d = j3d[:, :70]
    # MHR (y up) -> camera (y down, z forward).
    verts[..., [1, 2]] *= -1
    j3d[..., [1, 2]] *= -1
    jcoords[..., [1, 2]] *= -1
    body_out["pred_keypoints_3d"] = j3d
    body_out["pred_vertices"] = verts
    body_out["pred_joint_coords"] = jcoords
    body_out["pred_pose_raw"][...] = 0  # no longer a decoder output
    body_out["mhr_model_params"] = model_params
    # QUIRK: `joint_global_rots` is NOT refreshed from this forward; the output keeps the
    # (keypoint-prompted) body pass's rotations, as the official code does.

    # QUIRK: the final 2D projection uses f = K[0,0] for both axes and the IMAGE CENTRE as
    # principal point, not K's (cx, cy) that the camera head used; `pred_cam_t` is unchanged.
    proj = body_out["pred_keypoints_3d"] + body_out["pred_cam_t"][:, None, :]
    proj[:, :, [0, 1]] *= body_out["focal_length"][:, None, None]
    centre = torch.FloatTensor([width / 2, height / 2]).to(proj)
    proj[:, :, [0, 1]] = proj[:, :, [0, 1]] + centre[None, None, :] * proj[:, :, [2]]
    proj[:, :, :2] = proj[:, :, :2] / proj[:, :, [2]]
    body_out["pred_keypoints_2d"] = proj[:, :, :2]


# ------------------------------------------------------------------------------ passes


def body_pass(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """First body decoder pass (dummy prompt); the model's full output dict."""
    return model.forward_step(batch, decoder_type="body")


def hand_pass(model: torch.nn.Module, image: np.ndarray, boxes_xyxy: np.ndarray, cam_int: torch.Tensor,
              device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Hand decoder on square hand crops (padding 0.9) of `image`; the hand is treated as right."""
    with stage("crop"):
        batch = to_device(prepare_batch(image, boxes_xyxy, padding=HAND_PADDING, cam_int=cam_int.clone()), device)
    return batch, model.forward_step(batch, decoder_type="hand")


def run_full_hands(model: torch.nn.Module, image: np.ndarray, batch: dict[str, torch.Tensor],
                   output: dict[str, Any], ori_local_wrist: torch.Tensor,
                   thresh_wrist_angle: float = WRIST_ANGLE_THRESHOLD,
                   hand_boxes: tuple[np.ndarray, np.ndarray] | None = None,
                   extra_prompt: torch.Tensor | None = None) -> tuple[dict[str, Any], ...]:
    """Steps 2-9 of the official full inference, given the body pass `output`.

    `hand_boxes` (left, right xyxy) defaults to `model._get_hand_box(output, batch)`.
    `extra_prompt` (BN, K', 3), if given, is put in front of the wrist/elbow prompts of the
    re-prompt pass (user prompts must survive it). Returns `(output, batch_lhand, batch_rhand,
    lhand_out, rhand_out, info)`; `info` holds the validity checks, the prompt and the IK values.
    """
    height, width = image.shape[:2]
    device = batch["img"].device
    cam_int = batch["cam_int"].clone()
    left_xyxy, right_xyxy = hand_boxes if hand_boxes is not None else model._get_hand_box(output, batch)

    # Left hand: the hand decoder only knows right hands, so run it on the mirrored image.
    # QUIRK: the mirrored image keeps the ORIGINAL intrinsics (cx is not mirrored), as official.
    flipped = np.ascontiguousarray(image[:, ::-1])
    batch_lhand, lhand_output = hand_pass(model, flipped, mirror_boxes_x(np.asarray(left_xyxy), width),
                                          cam_int, device)
    lhand_out = lhand_output["mhr_hand"]
    unmirror_left_hand(lhand_out, batch_lhand, model.head_pose.scale_mean, model.head_pose.scale_comps, width)
    batch_rhand, rhand_output = hand_pass(model, image, np.asarray(right_xyxy), cam_int, device)
    rhand_out = rhand_output["mhr_hand"]

    checks = hand_validity(output["mhr"], lhand_out, rhand_out, batch_lhand, batch_rhand, ori_local_wrist,
                           model.head_pose.joint_rotation, width, thresh_wrist_angle)
    hand_valid = checks["hand_valid"]

    prompt = wrist_elbow_prompt(batch, output["mhr"], lhand_out, rhand_out, hand_valid, width)
    if extra_prompt is not None:
        prompt = torch.cat([extra_prompt.to(prompt), prompt], dim=1)
    if prompt.numel() != 0:
        output, _ = model.run_keypoint_prompt(batch, output, prompt)

    with stage("merge"):
        ik = merge_hands(output["mhr"], lhand_out, rhand_out, hand_valid, ori_local_wrist, model.head_pose,
                         thresh_wrist_angle)
        final_forward(output["mhr"], model.head_pose, width, height)
    info = {"checks": checks, "keypoint_prompt": prompt, **ik}
    return output, batch_lhand, batch_rhand, lhand_out, rhand_out, info


def local_wrist_rotmat(body_pose: torch.Tensor) -> torch.Tensor:
    """(BN, 2, 3, 3) local wrist rotations of the body pass, [left, right] (XZY Euler)."""
    return euler_to_rotmat("XZY", body_pose[:, list(WRIST_BODY_PARAMS)].unflatten(1, (2, 3)))


def keep_unprompted(new_pose: dict[str, torch.Tensor], old_pose: Mapping[str, torch.Tensor],
                    prompted: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per person: the prompted pass's values where `prompted` (BN,) is true, else the old ones,
    so persons without user prompts come out exactly as without a prompt pass."""
    merged = dict(new_pose)
    for key, new in new_pose.items():
        old = old_pose.get(key)
        if isinstance(new, torch.Tensor) and isinstance(old, torch.Tensor) and old.shape == new.shape \
                and new.dim() >= 1 and new.shape[0] == prompted.shape[0]:
            mask = prompted.view(-1, *([1] * (new.dim() - 1)))
            merged[key] = torch.where(mask, new, old)
    for key, old in old_pose.items():
        merged.setdefault(key, old)
    return merged


@torch.no_grad()
def run_inference(model: torch.nn.Module, image: np.ndarray, batch: dict[str, torch.Tensor],
                  inference_type: str = "full", thresh_wrist_angle: float = WRIST_ANGLE_THRESHOLD,
                  keypoint_prompt: torch.Tensor | None = None, prompted: torch.Tensor | None = None) -> Any:
    """The official `run_inference` for `body` and `full` on a prepared batch (on the model's device).

    `image` is the full RGB uint8 image (needed for the hand crops). Returns the model output dict
    for `body`, and `(output, batch_lhand, batch_rhand, lhand_out, rhand_out, info)` for `full`
    (the official 5-tuple plus the branch info; the official returns `output` = `pose_output`).

    `keypoint_prompt` (BN, K, 3), (x, y) in [0, 1] of the body crop + label: user prompts,
    applied with `run_keypoint_prompt` right after the body pass (the official notebook's
    semantics, fixture case 06). `prompted` (BN,) marks the persons that have prompts (the others
    are padded with dummies and keep their un-prompted body output). In `full` mode the user
    prompts are also put in front of the wrist/elbow prompts of the re-prompt pass (our
    extension: the official full mode has no user prompts); there, persons without user prompts
    carry the dummy padding too, so with several persons their result can move slightly.
    """
    if inference_type not in ("body", "full"):
        raise ValueError(f"inference_type must be 'body' or 'full', got {inference_type!r}")
    output = body_pass(model, batch)
    if inference_type == "full":
        # Hand boxes and the reference wrist pose come from the un-prompted body pass (official).
        hand_boxes = model._get_hand_box(output, batch)
        ori_local_wrist = local_wrist_rotmat(output["mhr"]["body_pose"])
    if keypoint_prompt is not None and keypoint_prompt.shape[1] > 0:
        old_pose = output["mhr"]
        output, _ = model.run_keypoint_prompt(batch, output, keypoint_prompt.to(batch["img"]))
        if prompted is not None and not bool(prompted.all()):
            output["mhr"] = keep_unprompted(output["mhr"], old_pose, prompted.to(keypoint_prompt.device))
    if inference_type == "body":
        return output
    with stage("hands"):
        return run_full_hands(model, image, batch, output, ori_local_wrist, thresh_wrist_angle, hand_boxes,
                              extra_prompt=keypoint_prompt)
