"""Full-mode hand logic against the official intermediates: mirroring, the four validity checks
(with the swapped C4 normaliser), the wrist/elbow prompt rules (B=1 drop / B>1 dummies), the
hand boxes of the output, and the final-2D / IK helpers."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from server.models.rotations import fix_wrist_euler
from server.pipeline import crop
from server.pipeline import inference as inf
from server.pipeline.estimator import _hand_boxes
from tests.pipeline import parity_cases as pc

pytestmark = pytest.mark.usefixtures("parity_dir")


@functools.lru_cache(maxsize=None)
def _hand_batches(case: str):
    it = pc.intermediates(case)
    img = pc.image(case)
    cam = torch.from_numpy(it["body.cam_int"])
    left = inf.mirror_boxes_x(it["body.left_hand_xyxy"], img.shape[1])
    batch_l = crop.prepare_batch(np.ascontiguousarray(img[:, ::-1]), left, padding=crop.HAND_PADDING, cam_int=cam)
    batch_r = crop.prepare_batch(img, it["body.right_hand_xyxy"], padding=crop.HAND_PADDING, cam_int=cam)
    return batch_l, batch_r


@functools.lru_cache(maxsize=None)
def _body_batch(case: str):
    inp = pc.inputs(case)
    return crop.prepare_batch(pc.image(case), inp["boxes"], masks=inp.get("masks"), cam_int=inp.get("cam_int"))


def _hand_setup(case: str):
    it = pc.intermediates(case)
    img = pc.image(case)
    width = img.shape[1]
    sd = pc.state_dict(case)
    batch_l, batch_r = ({k: v.clone() for k, v in b.items()} for b in _hand_batches(case))
    lhand = pc.pose_output(case, pc.last_layer(case, "lhand"))
    rhand = pc.pose_output(case, pc.last_layer(case, "rhand"))
    inf.unmirror_left_hand(lhand, batch_l, sd["head_pose.scale_mean"], sd["head_pose.scale_comps"], width)
    body = pc.pose_output(case, pc.last_layer(case, "body"))
    return it, img, sd, batch_l, batch_r, lhand, rhand, body


@pytest.mark.parametrize("case", pc.FULL_CASES)
def test_unmirror_left_hand_matches_final(case: str) -> None:
    it, img, _, batch_l, _, lhand, rhand, _ = _hand_setup(case)
    for key, value in lhand.items():
        np.testing.assert_array_equal(value.numpy(), it[f"lhand.final.{key}"], err_msg=key)
    for key, value in rhand.items():
        np.testing.assert_array_equal(value.numpy(), it[f"rhand.final.{key}"], err_msg=key)
    np.testing.assert_array_equal(batch_l["bbox_center"].numpy(), it["lhand.final.bbox_center"])


@pytest.mark.parametrize("case", pc.FULL_CASES)
def test_hand_validity_checks(case: str) -> None:
    it, img, sd, batch_l, batch_r, lhand, rhand, body = _hand_setup(case)
    branches = pc.case_json(case)["branches"]
    ori = inf.local_wrist_rotmat(body["body_pose"])
    checks = inf.hand_validity(body, lhand, rhand, batch_l, batch_r, ori, sd["head_pose.joint_rotation"], img.shape[1])
    # case.json rounds the measured values to 4 decimals.
    np.testing.assert_allclose(checks["wrist_angle"].numpy(), branches["C1_wrist_angle_rad"], atol=1e-4)
    np.testing.assert_allclose(checks["crop_side"].numpy(), branches["C2_hand_crop_side_px"], atol=1e-2)
    np.testing.assert_allclose(checks["max_abs_kp"].numpy(), branches["C3_max_abs_hand_kp_cropped"], atol=1e-4)
    np.testing.assert_allclose(checks["wrist_dist"].numpy(), branches["C4_ratio_official_swapped"], atol=1e-4)
    for name in ("C1", "C2", "C3", "C4"):
        assert checks[name].tolist() == branches[f"{name}_ok"], name
    assert checks["hand_valid"].tolist() == branches["hand_valid"]


def test_c4_normaliser_is_swapped() -> None:
    """Right-hand distance / LEFT crop side: the dev cases only pass C4 because of it."""
    case = "02_dinov3_full_1p_hands_valid"
    it, img, sd, batch_l, batch_r, lhand, rhand, body = _hand_setup(case)
    ori = inf.local_wrist_rotmat(body["body_pose"])
    checks = inf.hand_validity(body, lhand, rhand, batch_l, batch_r, ori, sd["head_pose.joint_rotation"], img.shape[1])
    right_px = (rhand["pred_keypoints_2d"][:, 41] - body["pred_keypoints_2d"][:, 41]).norm(dim=-1)
    np.testing.assert_allclose(checks["wrist_dist"][:, 1], right_px / batch_l["bbox_scale"][0, :, 0], rtol=1e-6)
    unswapped = right_px / batch_r["bbox_scale"][0, :, 0]
    assert pc.case_json(case)["branches"]["C4_ok_if_unswapped"][0][1] == bool(unswapped[0] < 0.25) is False


@pytest.mark.parametrize("case", pc.FULL_CASES)
def test_wrist_elbow_prompt(case: str) -> None:
    it, img, _, batch_l, batch_r, lhand, rhand, body = _hand_setup(case)
    batch = _body_batch(case)
    valid = torch.tensor(pc.case_json(case)["branches"]["hand_valid"])
    prompt = inf.wrist_elbow_prompt(batch, body, lhand, rhand, valid, img.shape[1])
    if "kprompt.keypoint_prompt" in it:
        np.testing.assert_array_equal(prompt.numpy(), it["kprompt.keypoint_prompt"])
        np.testing.assert_array_equal(prompt[..., 2].numpy(), pc.case_json(case)["branches"]["keypoint_prompt_labels"])
    else:
        assert prompt.numel() == 0  # no valid hand: no re-prompt pass (case 10)


def test_prompt_rules_depend_on_batch_size() -> None:
    """B=1 drops unusable points; B>1 turns them into dummies (0, 0, -2)."""
    img = np.zeros((100, 100, 3), np.uint8)
    boxes = np.array([[10, 10, 60, 90], [40, 10, 90, 90]], np.float32)
    batch2 = crop.prepare_batch(img, boxes)
    kp = torch.full((2, 70, 2), 50.0)
    kp[:, 7] = torch.tensor([30.0, 40.0])
    kp[0, 8] = torch.tensor([-500.0, 40.0])  # person 0's right elbow far outside its crop
    out = {"pred_keypoints_2d": kp}
    valid = torch.tensor([[True, False], [True, True]])  # person 0: right hand invalid
    p2 = inf.wrist_elbow_prompt(batch2, out, out, out, valid, 100)
    assert p2.shape == (2, 4, 3)
    assert p2[0, :, 2].tolist() == [-2, 62, -2, 7]
    assert p2[1, :, 2].tolist() == [41, 62, 8, 7]
    assert p2[0, 0].tolist() == [0, 0, -2]
    assert ((p2[..., :2] >= 0) & (p2[..., :2] <= 1)).all()

    batch1 = crop.prepare_batch(img, boxes[:1])
    one = {"pred_keypoints_2d": kp[:1]}
    p1 = inf.wrist_elbow_prompt(batch1, one, one, one, valid[:1], 100)
    assert p1[0, :, 2].tolist() == [62, 7]
    p0 = inf.wrist_elbow_prompt(batch1, one, one, one, torch.tensor([[False, False]]), 100)
    assert p0.shape == (1, 0, 3)


@pytest.mark.parametrize("case", pc.FULL_CASES)
def test_output_hand_boxes(case: str) -> None:
    it = pc.intermediates(case)
    out = pc.outputs(case)
    lb = {k: torch.from_numpy(it[f"lhand.final.{k}"]) for k in ("bbox_center", "bbox_scale")}
    rb = {k: torch.from_numpy(it[f"rhand.final.{k}"]) for k in ("bbox_center", "bbox_scale")}
    left, right = _hand_boxes(lb), _hand_boxes(rb)
    assert left.dtype == np.float64
    np.testing.assert_array_equal(left, out["lhand_bbox"])
    np.testing.assert_array_equal(right, out["rhand_bbox"])


def test_mirror_boxes() -> None:
    boxes = np.array([[10.5, 3, 20, 9]], np.float32)
    m = inf.mirror_boxes_x(boxes, 100)
    np.testing.assert_array_equal(m, [[79, 3, 88.5, 9]])
    np.testing.assert_array_equal(inf.mirror_boxes_x(m, 100), boxes)


@pytest.mark.parametrize("case", [c for c in pc.FULL_CASES if "ik.wrist_xzy_raw" in pc.intermediates(c)])
def test_wrist_euler_fix_on_ik_values(case: str) -> None:
    it = pc.intermediates(case)
    raw = torch.from_numpy(it["ik.wrist_xzy_raw"])
    np.testing.assert_array_equal(fix_wrist_euler(raw).numpy(), it["ik.wrist_xzy_fixed"])


@pytest.mark.parametrize("case", [c for c in pc.FULL_CASES if "kprompt.L2.body_pose" in pc.intermediates(c)])
def test_merge_without_fk_pieces(case: str) -> None:
    """Hand-pose / scale / shape merge of the final output from the stored passes (the parts of
    `merge_hands` that do not need the MHR forward), and the final 2D quirk."""
    it, img, sd, *_ = _hand_setup(case)
    out = pc.outputs(case)
    branches = pc.case_json(case)["branches"]
    applied = np.array(branches["IK_applied"])
    lh, rh = pc.pose_output(case, "lhand.final"), pc.pose_output(case, "rhand.final")
    kp = pc.pose_output(case, pc.last_layer(case, "kprompt"))
    hand = kp["hand"].clone().unflatten(1, (2, 54))
    new = torch.cat([lh["hand"][:, :54], rh["hand"][:, 54:]], dim=1).unflatten(1, (2, 54))
    expect = torch.where(torch.from_numpy(applied)[..., None], new, hand).flatten(1, 2)
    np.testing.assert_array_equal(expect.numpy(), out["hand_pose_params"])
    # Stale rotations: the output keeps the prompted body pass's joint_global_rots.
    np.testing.assert_array_equal(kp["joint_global_rots"].numpy(), out["pred_global_rots"])
    np.testing.assert_array_equal(kp["pred_cam_t"].numpy(), out["pred_cam_t"])
    # Final 2D with f = K[0,0] and the image centre (not K's principal point).
    pose = {"pred_keypoints_3d": torch.from_numpy(out["pred_keypoints_3d"]), "pred_cam_t": kp["pred_cam_t"],
            "focal_length": kp["focal_length"]}
    h, w = img.shape[:2]
    proj = pose["pred_keypoints_3d"] + pose["pred_cam_t"][:, None]
    proj[..., :2] *= pose["focal_length"][:, None, None]
    proj[..., :2] = proj[..., :2] + torch.tensor([w / 2, h / 2]) * proj[..., [2]]
    np.testing.assert_allclose((proj[..., :2] / proj[..., [2]]).numpy(), out["pred_keypoints_2d"], atol=1e-3)
    # IK: applied wrists carry fix_wrist_euler(XZY) of the fused rotation.
    body_pose = out["body_pose_params"]
    for side, idx in ((0, [41, 43, 42]), (1, [31, 33, 32])):
        for n in range(body_pose.shape[0]):
            if applied[n, side]:
                np.testing.assert_allclose(body_pose[n, idx], it["ik.wrist_xzy_fixed"][n, side], atol=1e-6)
            else:
                np.testing.assert_array_equal(body_pose[n, idx], kp["body_pose"][n, idx].numpy())
