"""process_one_image: input validation, box sources, prompt assignment, stacked output layout."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from server.errors import BAD_INPUT, NO_PERSON, ServerError
from server.pipeline import estimator as est
from server.pipeline.crop import prepare_batch
from server.pipeline.inference import keep_unprompted
from tests.pipeline import parity_cases as pc


class _NoModel(torch.nn.Module):
    """Validation happens before the model runs; calling it is a test failure."""

    def forward_step(self, *a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("model must not run on invalid input")


IMG = np.zeros((100, 120, 3), np.uint8)


def _run(**kwargs):
    return est.process_one_image(_NoModel(), kwargs.pop("img", IMG), **kwargs)


@pytest.mark.parametrize("img, msg", [
    (np.zeros((100, 120), np.uint8), "RGB uint8"),
    (np.zeros((100, 120, 4), np.uint8), "RGB uint8"),
    (np.zeros((100, 120, 3), np.float32), "RGB uint8"),
    ([[0, 0, 0]], "numpy array"),
    (np.zeros((1, 120, 3), np.uint8), "too small"),
])
def test_bad_images(img, msg) -> None:
    with pytest.raises(ServerError, match=msg) as e:
        _run(img=img)
    assert e.value.code == BAD_INPUT


@pytest.mark.parametrize("boxes, msg", [
    ([[10, 10, 10, 50]], "degenerate"),
    ([[50, 10, 20, 60]], "degenerate"),
    ([[0, 0, float("nan"), 50]], "non-finite"),
    ([[200, 10, 300, 50]], "outside"),
    ([[-50, -50, -10, -10]], "outside"),
    ([[10, 10, 50]], r"\(N, 4\)"),
    (np.zeros((0, 4)), r"\(N, 4\)"),
    (np.array([["a", "b", "c", "d"]]), "numbers"),
])
def test_bad_boxes(boxes, msg) -> None:
    with pytest.raises(ServerError, match=msg):
        _run(boxes=boxes)


def test_bad_masks() -> None:
    boxes = [[10, 10, 60, 90]]
    with pytest.raises(ServerError, match="need person boxes"):
        _run(masks=np.zeros((1, 100, 120), np.uint8))
    with pytest.raises(ServerError, match="2 masks for 1 boxes"):
        _run(boxes=boxes, masks=np.zeros((2, 100, 120), np.uint8))
    with pytest.raises(ServerError, match="match the image"):
        _run(boxes=boxes, masks=np.zeros((1, 50, 120), np.uint8))
    with pytest.raises(ServerError, match="0..255"):
        _run(boxes=boxes, masks=np.full((1, 100, 120), 300.0))
    with pytest.raises(ServerError, match="Mask 0 has shape"):
        _run(boxes=boxes, masks=[np.zeros((10, 10), np.uint8)])


@pytest.mark.parametrize("cam, msg", [
    (np.eye(2), "3x3"),
    (np.array([[np.nan, 0, 1], [0, 1, 1], [0, 0, 1]]), "NaN"),
    (np.array([[-5.0, 0, 1], [0, 1, 1], [0, 0, 1]]), "positive"),
])
def test_bad_intrinsics(cam, msg) -> None:
    with pytest.raises(ServerError, match=msg):
        _run(cam_int=cam)


@pytest.mark.parametrize("prompts, msg", [
    ([(10, 10, 70)], "label"),
    ([(10, 10, -3)], "label"),
    ([(10, 10, 1.5)], "label"),
    ([(130, 10, 5)], "not inside any person"),
    ([(10, -30, 5)], "not inside any person"),
    ([(10, 10)], r"\(x, y, label\)"),
    ([(10, 10, 5, 3)], "person index"),
    ([(float("inf"), 10, 5)], "non-finite"),
])
def test_bad_prompts(prompts, msg) -> None:
    with pytest.raises(ServerError, match=msg):
        _run(boxes=[[10, 10, 60, 90]], prompts=prompts)


def test_bad_inference_type() -> None:
    with pytest.raises(ServerError, match="inference_type"):
        _run(inference_type="hand")


def test_detector_without_persons_is_no_person() -> None:
    with pytest.raises(ServerError) as e:
        _run(detector=lambda img: np.zeros((0, 4), np.float32))
    assert e.value.code == NO_PERSON


def test_prompt_assignment_to_persons() -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    boxes = np.array([[10, 10, 70, 90], [120, 10, 180, 90]], np.float32)
    batch = prepare_batch(img, boxes)
    prompt, prompted = est.prompts_to_crop([(40, 50, 5), (150, 50, 6), (160, 30, -1)], batch, boxes, 200, 100)
    assert prompt.shape == (2, 2, 3)
    assert prompted.tolist() == [True, True]
    assert prompt[0, :, 2].tolist() == [5, -2]  # padded with a dummy
    assert prompt[1, :, 2].tolist() == [6, -1]
    np.testing.assert_allclose(prompt[0, 0, :2].numpy(), [0.5, 0.5], atol=1e-6)  # box centre = crop centre
    assert prompt[0, 1, :2].tolist() == [0, 0]
    # Explicit person index; only person 1 prompted.
    prompt, prompted = est.prompts_to_crop([(150, 50, 6, 1)], batch, boxes, 200, 100)
    assert prompted.tolist() == [False, True] and prompt.shape == (2, 1, 3)
    assert prompt[0, 0].tolist() == [0, 0, -2]
    with pytest.raises(ServerError, match="outside the crop of person 0"):
        est.prompts_to_crop([(190, 50, 6, 0)], batch, boxes, 200, 100)
    with pytest.raises(ServerError, match="not inside any person"):
        est.prompts_to_crop([(100, 2, 6)], prepare_batch(img, boxes[:1]), boxes[:1], 200, 100)


def test_dummy_and_off_image_prompts_are_taken() -> None:
    """Label -2 (Meta's padding) is accepted anywhere and becomes the official dummy (0, 0, -2);
    a point off the image but inside the person's crop (the crop reaches past the edge) is a
    normal prompt."""
    img = np.zeros((100, 200, 3), np.uint8)
    boxes = np.array([[10, 10, 70, 90], [120, 10, 180, 90]], np.float32)
    batch = prepare_batch(img, boxes)
    prompt, prompted = est.prompts_to_crop([(-107.5, -41.5, -2), (40, 50, 5), (175, 50, -2, 1)],
                                           batch, boxes, 200, 100)
    assert prompted.tolist() == [True, True]
    assert prompt[0].tolist()[0] == [0, 0, -2] and prompt[0, 1, 2] == 5  # nearest box: person 0
    assert prompt[1].tolist() == [[0, 0, -2], [0, 0, -2]]  # its own dummy, then the padding
    prompt, _ = est.prompts_to_crop([(-3.0, 50, 9)], prepare_batch(img, boxes[:1]), boxes[:1], 200, 100)
    u = float(prompt[0, 0, 0])
    assert 0.0 <= u < 0.5 and prompt[0, 0, 2] == 9  # left of the image, inside the crop


def test_prompt_pixel_to_crop_matches_fixture(parity_dir) -> None:
    case = "06_dinov3_user_keypoint_prompt"
    inp = pc.inputs(case)
    batch = prepare_batch(pc.image(case), inp["boxes"])
    px, labels = inp["keypoint_prompt_full_px"][0], inp["keypoint_prompt"][0, :, 2]
    prompt, _ = est.prompts_to_crop([(float(x), float(y), int(lab)) for (x, y), lab in zip(px, labels)],
                                    batch, inp["boxes"], 512, 512)
    np.testing.assert_allclose(prompt.numpy(), inp["keypoint_prompt"], atol=1e-6)


def test_keep_unprompted() -> None:
    new = {"a": torch.ones(3, 2), "b": torch.ones(3), "extra": torch.ones(3)}
    old = {"a": torch.zeros(3, 2), "b": torch.zeros(3), "hand_box": torch.zeros(3, 2, 4)}
    merged = keep_unprompted(new, old, torch.tensor([True, False, True]))
    assert merged["a"][:, 0].tolist() == [1, 0, 1] and merged["b"].tolist() == [1, 0, 1]
    assert "hand_box" in merged and merged["extra"].tolist() == [1, 1, 1]


# ---------------------------------------------------------------- with the tiny fixture model


def test_full_image_fallback_and_layout(parity_dir) -> None:
    case = "01_dinov3_body_1p"
    img = pc.image(case)[:200, :300].copy()
    res = est.process_one_image(pc.model_for(case), img, inference_type="body")
    np.testing.assert_array_equal(res["bbox"], [[0, 0, 300, 200]])
    n = 1
    expect = {"bbox": (n, 4), "focal_length": (n,), "pred_keypoints_3d": (n, 70, 3), "pred_keypoints_2d": (n, 70, 2),
              "pred_cam_t": (n, 3), "pred_pose_raw": (n, 266), "global_rot": (n, 3), "body_pose_params": (n, 133),
              "hand_pose_params": (n, 108), "scale_params": (n, 28), "shape_params": (n, 45), "expr_params": (n, 72),
              "pred_joint_coords": (n, 127, 3), "pred_global_rots": (n, 127, 3, 3), "mhr_model_params": (n, 204),
              "cam_int": (3, 3)}
    for key, shape in expect.items():
        assert res[key].shape == shape, key
        assert res[key].dtype == np.float32, key
    assert res["pred_vertices"].shape[0] == n and res["pred_vertices"].shape[2] == 3
    np.testing.assert_allclose(res["focal_length"], [np.hypot(300, 200)], rtol=1e-6)


def test_detector_boxes_and_prompts_for_one_of_two_persons(parity_dir) -> None:
    """Detector boxes are used (sorted by the detector); a prompt on person 1 changes only person 1."""
    case = "03_dinov3_full_2p_one_hand_invalid"
    model = pc.model_for(case)
    boxes = pc.inputs(case)["boxes"]
    img = pc.image(case)
    plain = est.process_one_image(model, img, detector=lambda im: boxes.copy(), inference_type="body")
    np.testing.assert_array_equal(plain["bbox"], boxes)
    ref = pc.intermediates(case)
    np.testing.assert_allclose(plain["pred_vertices"], ref["body.L2.pred_vertices"], atol=1e-5)
    x, y = plain["pred_keypoints_2d"][1, 13]  # person 1's left ankle, moved 15 px right
    prompted = est.process_one_image(model, img, boxes=boxes, inference_type="body",
                                     prompts=[(float(x) + 15, float(y), 13)])
    np.testing.assert_array_equal(prompted["pred_vertices"][0], plain["pred_vertices"][0])
    assert np.abs(prompted["pred_vertices"][1] - plain["pred_vertices"][1]).max() > 1e-4


def test_full_mode_keeps_user_prompts_in_the_reprompt_pass(parity_dir) -> None:
    case = "02_dinov3_full_1p_hands_valid"
    model = pc.model_for(case)
    boxes = pc.inputs(case)["boxes"]
    plain = pc.outputs(case)
    x, y = plain["pred_keypoints_2d"][0, 13]
    res, info = est.process_one_image(model, pc.image(case), boxes=boxes, inference_type="full",
                                      prompts=[(float(x) + 10, float(y), 13)], return_info=True)
    labels = info["keypoint_prompt"][0, :, 2].int().tolist()
    assert labels[0] == 13 and labels[1:] == pc.case_json(case)["branches"]["keypoint_prompt_labels"][0]
    assert np.abs(res["pred_vertices"] - plain["pred_vertices"]).max() > 1e-4
    # Hand boxes come from the un-prompted body pass, as without prompts.
    np.testing.assert_allclose(res["lhand_bbox"], plain["lhand_bbox"], atol=1e-3)
    assert np.all(res["pred_pose_raw"] == 0)
