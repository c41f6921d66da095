"""Pin to markers (server/pipeline/keypoint_fit.py) on the fixture checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from server.pipeline import estimator as est
from server.pipeline import keypoint_fit as kf
from tests.pipeline import parity_cases as pc

CASE = "02_dinov3_full_1p_hands_valid"
RIGHT_WRIST, RIGHT_ELBOW, LEFT_ANKLE = 41, 8, 13


@pytest.fixture(scope="module")
def setup(parity_dir):
    model = pc.model_for(CASE)
    return model, pc.image(CASE), np.asarray(pc.inputs(CASE)["boxes"], np.float32)


def project(out: dict, person: int = 0) -> np.ndarray:
    k = out["cam_int"].astype(np.float64)
    p = out["pred_keypoints_3d"][person].astype(np.float64) + out["pred_cam_t"][person]
    return p[:, :2] / p[:, 2:] * k[[0, 1], [0, 1]] + k[:2, 2]


@pytest.mark.parametrize("mode", ["body", "full"])
def test_keypoint_model_equals_the_pipeline_keypoints(setup, mode: str) -> None:
    """The subset-skinned keypoints equal the pose head's, from the person's model parameters."""
    model, img, boxes = setup
    out = est.process_one_image(model, img, boxes=boxes, inference_type=mode)
    kp_model = kf.keypoint_model(model)
    assert 0 < len(kp_model.vertex_ids) < model.head_pose.mhr.character_torch.blend_shape.base_shape.shape[0]
    kp = kp_model.keypoints(torch.from_numpy(out["mhr_model_params"]), torch.from_numpy(out["shape_params"]),
                            torch.from_numpy(out["expr_params"]))
    np.testing.assert_allclose(kp.numpy(), out["pred_keypoints_3d"], atol=2e-6)


@pytest.mark.parametrize("mode", ["body", "full"])
def test_moved_wrist_lands_on_its_point_and_the_rest_holds(setup, mode: str) -> None:
    model, img, boxes = setup
    plain = est.process_one_image(model, img, boxes=boxes, inference_type=mode)
    target = plain["pred_keypoints_2d"][0, RIGHT_WRIST] + [35.0, -20.0]
    prompts = [(float(target[0]), float(target[1]), RIGHT_WRIST)]
    hint = est.process_one_image(model, img, boxes=boxes, inference_type=mode, prompts=prompts)
    out = est.process_one_image(model, img, boxes=boxes, inference_type=mode, prompts=prompts,
                                fit_prompts=True)
    assert "fit_error_after_px" not in hint
    start = project(hint)  # where the prompted run put the keypoints (through K)
    assert np.linalg.norm(start[RIGHT_WRIST] - target) > 30  # random weights: the hint alone misses
    assert np.linalg.norm(out["pred_keypoints_2d"][0, RIGHT_WRIST] - target) < 0.5
    anchors = [a for a in kf.ANCHORS if a != RIGHT_WRIST]
    assert np.abs(out["pred_keypoints_2d"][0, anchors] - start[anchors]).max() < 3.0
    # The report: pixel errors before/after for the one prompt.
    np.testing.assert_array_equal(out["fit_prompt_label"], [RIGHT_WRIST])
    np.testing.assert_array_equal(out["fit_prompt_person"], [0])
    assert out["fit_error_before_px"][0] == pytest.approx(np.linalg.norm(start[RIGHT_WRIST] - target), abs=0.01)
    assert out["fit_error_after_px"][0] < 0.5

    # Only the pose changed: shape, scales, hands, jaw and MHR's root translation are as predicted.
    new, old = out["mhr_model_params"][0], hint["mhr_model_params"][0]
    np.testing.assert_array_equal(new[136:], old[136:])
    np.testing.assert_array_equal(new[:3], old[:3])
    np.testing.assert_array_equal(new[133:136], old[133:136])
    head = model.head_pose
    for idx in (head.hand_joint_idxs_left, head.hand_joint_idxs_right):
        np.testing.assert_array_equal(new[idx.numpy()], old[idx.numpy()])
    for key in ("shape_params", "scale_params", "hand_pose_params", "expr_params"):
        np.testing.assert_array_equal(out[key], hint[key], err_msg=key)
    assert np.abs(new - old).max() > 1e-3
    # Every dependent output follows the new parameters.
    np.testing.assert_array_equal(out["global_rot"][0], new[3:6])
    np.testing.assert_array_equal(out["body_pose_params"][0, :130], new[6:136])
    np.testing.assert_allclose(out["pred_keypoints_2d"][0], project(out), atol=1e-3)
    verts, joints, _, rots = head.mhr_forward(
        global_trans=torch.zeros(1, 3), global_rot=torch.from_numpy(out["global_rot"]),
        body_pose_params=torch.from_numpy(out["body_pose_params"]),
        hand_pose_params=torch.from_numpy(out["hand_pose_params"]),
        scale_params=torch.from_numpy(out["scale_params"]), shape_params=torch.from_numpy(out["shape_params"]),
        expr_params=torch.from_numpy(out["expr_params"]), return_joint_coords=True, return_model_params=True,
        return_joint_rotations=True)
    flip = np.array([1.0, -1.0, -1.0], np.float32)
    np.testing.assert_allclose(out["pred_vertices"][0], verts[0].numpy() * flip, atol=1e-6)
    np.testing.assert_allclose(out["pred_joint_coords"][0], joints[0].numpy() * flip, atol=1e-6)
    np.testing.assert_allclose(out["pred_global_rots"][0], rots[0].numpy(), atol=1e-6)


def test_only_prompted_people_are_fitted(parity_dir) -> None:
    case = "03_dinov3_full_2p_one_hand_invalid"
    model, img = pc.model_for(case), pc.image(case)
    boxes = np.asarray(pc.inputs(case)["boxes"], np.float32)
    plain = est.process_one_image(model, img, boxes=boxes, inference_type="body")
    x, y = plain["pred_keypoints_2d"][1, LEFT_ANKLE] + [12.0, 0.0]
    out = est.process_one_image(model, img, boxes=boxes, inference_type="body",
                                prompts=[(float(x), float(y), LEFT_ANKLE)], fit_prompts=True)
    np.testing.assert_array_equal(out["pred_vertices"][0], plain["pred_vertices"][0])
    np.testing.assert_array_equal(out["fit_prompt_person"], [1])
    assert np.linalg.norm(out["pred_keypoints_2d"][1, LEFT_ANKLE] - [x, y]) < 0.5


def test_not_a_point_prompts_are_not_fitted(setup) -> None:
    model, img, boxes = setup
    prompts = [(100.0, 200.0, -1)]
    hint = est.process_one_image(model, img, boxes=boxes, inference_type="body", prompts=prompts)
    out = est.process_one_image(model, img, boxes=boxes, inference_type="body", prompts=prompts,
                                fit_prompts=True)
    assert "fit_error_after_px" not in out or len(out["fit_error_after_px"]) == 0
    np.testing.assert_array_equal(out["pred_vertices"], hint["pred_vertices"])


def test_unreachable_point_stays_finite_and_close(setup) -> None:
    """A marker far beyond the arm's reach: the fit gets as close as the body allows, no NaN."""
    model, img, boxes = setup
    plain = est.process_one_image(model, img, boxes=boxes, inference_type="body")
    far = plain["pred_keypoints_2d"][0, RIGHT_WRIST] + [0.0, -400.0]
    far[1] = max(far[1], 1.0)
    out = est.process_one_image(model, img, boxes=boxes, inference_type="body",
                                prompts=[(float(far[0]), float(far[1]), RIGHT_WRIST)], fit_prompts=True)
    for key in ("pred_vertices", "mhr_model_params", "pred_keypoints_2d", "pred_cam_t"):
        assert np.all(np.isfinite(out[key])), key
    assert out["fit_error_after_px"][0] < out["fit_error_before_px"][0]


def test_dragged_keypoints_carry_what_hangs_from_them() -> None:
    held = set(kf.held_anchors({RIGHT_ELBOW}))
    assert RIGHT_ELBOW not in held and RIGHT_WRIST not in held  # the forearm swings along
    assert {6, 5, 7, 62, 9, 10, 0, 69} <= held
    held = set(kf.held_anchors({11}))  # left knee: ankle and foot follow, the right leg holds
    assert not held & {11, 13, 15, 16, 17} and {12, 14, 18, 19, 20} <= held
    assert set(kf.held_anchors({69})) == set(kf.ANCHORS) - {69, 0, 1, 2, 3, 4}
    assert set(kf.ANCHOR_PARENT) == set(kf.ANCHORS)
