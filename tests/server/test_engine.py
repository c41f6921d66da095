"""The resident engine on the fixture checkpoints: exact outputs plus the self-consistent skeleton."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.engine import ReconstructRequest, load_engine, pick_device
from server.errors import ServerError
from server.imageio import load_image

FLIP = np.array([1.0, -1.0, -1.0], np.float32)


@pytest.fixture(scope="module")
def engine(parity_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return load_engine(checkpoint=str(parity_dir / "checkpoints" / "dinov3_tiny"), device="cpu",
                       cache_dir=str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def astronaut(parity_dir: Path) -> np.ndarray:
    return load_image(str(parity_dir / "images" / "astronaut.png"))[0]


def test_full_mode_equals_official_outputs(engine, astronaut, parity_dir: Path) -> None:
    ref = np.load(parity_dir / "cases" / "02_dinov3_full_1p_hands_valid" / "outputs.npz")
    res = engine.reconstruct(ReconstructRequest(image=astronaut, boxes=np.array([[20, 10, 370, 512]], np.float32)))
    for key in ("pred_vertices", "pred_keypoints_3d", "pred_joint_coords", "mhr_model_params", "pred_cam_t"):
        np.testing.assert_allclose(res[key], ref[key], atol=1e-5, err_msg=key)
    np.testing.assert_allclose(res["pred_keypoints_2d"], ref["pred_keypoints_2d"], atol=1e-3)
    assert str(res["intrinsics_source"]) == "default" and str(res["mode"]) == "full"
    assert tuple(res["image_size"]) == astronaut.shape[1::-1]
    # The rig arrays come from one MHR forward of the final parameters: they reproduce the
    # official mesh (metres, camera axes) exactly, unlike 3DB's stale pred_global_rots.
    np.testing.assert_allclose(res["mhr_vertices"] / 100 * FLIP, res["pred_vertices"], atol=2e-6)
    joints = res["mhr_skel_state"][..., :3] / 100 * FLIP
    np.testing.assert_allclose(joints, res["pred_joint_coords"], atol=2e-6)
    q = res["mhr_skel_state"][..., 3:7]
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1.0, atol=1e-5)
    rig = engine.rig_data()
    assert len(rig["joint_names"]) == 127 and rig["faces"].shape == res["faces"].shape
    np.testing.assert_array_equal(rig["faces"], res["faces"])


def test_body_mode_and_user_intrinsics(engine, astronaut, parity_dir: Path) -> None:
    ref = np.load(parity_dir / "cases" / "01_dinov3_body_1p" / "outputs.npz")
    res = engine.reconstruct(ReconstructRequest(image=astronaut, boxes=np.array([[20, 10, 370, 512]], np.float32), mode="body"))
    np.testing.assert_allclose(res["pred_vertices"], ref["pred_vertices"], atol=1e-5)
    h, w = astronaut.shape[:2]
    res2 = engine.reconstruct(ReconstructRequest(image=astronaut, boxes=np.array([[20, 10, 370, 512]], np.float32),
                                                 mode="body", intrinsics=(700.0, 700.0, w / 2, h / 2)))
    assert str(res2["intrinsics_source"]) == "user"
    assert res2["cam_int"][0, 0] == pytest.approx(700.0)
    assert not np.allclose(res2["pred_cam_t"], res["pred_cam_t"])


def test_bad_requests(engine, astronaut) -> None:
    with pytest.raises(ServerError) as e:
        engine.reconstruct(ReconstructRequest(image=astronaut, mode="hands"))
    assert e.value.code == "bad_input"
    with pytest.raises(ServerError):
        engine.reconstruct(ReconstructRequest(image=astronaut[..., 0]))
    with pytest.raises(ServerError, match="cancelled"):
        engine.reconstruct(ReconstructRequest(image=astronaut), cancelled=lambda: True)


def test_device_choice() -> None:
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ServerError, match="Unknown device"):
        pick_device("tpu")


def test_wrong_variant_config_is_refused(parity_dir: Path, tmp_path: Path) -> None:
    import shutil

    d = tmp_path / "mixed"
    shutil.copytree(parity_dir / "checkpoints" / "dinov3_tiny", d)
    shutil.copy(parity_dir / "checkpoints" / "vith_tiny" / "model_config.yaml", d / "model_config.yaml")
    with pytest.raises(ServerError, match="does not match") as e:
        load_engine(checkpoint=str(d), device="cpu", cache_dir=str(tmp_path / "c"))
    assert "dinov3 vs vith" in e.value.message


def test_large_photo_is_processed_downscaled_with_its_intrinsics(engine, astronaut) -> None:
    box = np.array([[20, 10, 370, 512]], np.float32)
    engine.max_work_side = 256
    try:
        res = engine.reconstruct(ReconstructRequest(image=astronaut, boxes=box, mode="body"))
    finally:
        engine.max_work_side = type(engine).max_work_side
    h, w = astronaut.shape[:2]
    assert tuple(res["image_size"]) == (w, h)
    np.testing.assert_allclose(res["bbox"], box, atol=1e-3)  # reported in the photo's pixels
    k = res["cam_int"]
    assert k[0, 0] == pytest.approx(np.hypot(w, h)) and k[0, 2] == pytest.approx(w / 2)
    # body mode projects with the full K: the 2D keypoints are the 3D ones seen through the
    # photo's own intrinsics, so the downscaled run is consistent at full resolution
    p = res["pred_keypoints_3d"][0] + res["pred_cam_t"][0]
    uv = p[:, :2] / p[:, 2:] * k[[0, 1], [0, 1]] + k[:2, 2]
    np.testing.assert_allclose(res["pred_keypoints_2d"][0], uv, atol=0.05)


def test_out_of_memory_retries_people_in_smaller_batches(engine, parity_dir: Path, monkeypatch) -> None:
    from server.pipeline import estimator

    image = load_image(str(parity_dir / "images" / "two_person.png"))[0]
    boxes = np.array([[20, 10, 370, 512], [424, 150, 684, 480]], np.float32)
    real = estimator.process_one_image
    sizes: list[int] = []

    def limited(model, img, boxes=None, **kw):
        sizes.append(len(boxes))
        if len(boxes) > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, img, boxes=boxes, **kw)

    monkeypatch.setattr(estimator, "process_one_image", limited)
    res = engine.reconstruct(ReconstructRequest(image=image, boxes=boxes, mode="body"))
    assert sizes == [2, 1, 1]
    assert res["pred_vertices"].shape[0] == 2 and res["mhr_skel_state"].shape[0] == 2
    monkeypatch.setattr(estimator, "process_one_image", real)
    one = engine.reconstruct(ReconstructRequest(image=image, boxes=boxes[1:], mode="body"))
    np.testing.assert_allclose(res["pred_vertices"][1], one["pred_vertices"][0], atol=1e-6)

    def always(model, img, boxes=None, **kw):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(estimator, "process_one_image", always)
    with pytest.raises(ServerError) as e:
        engine.reconstruct(ReconstructRequest(image=image, boxes=boxes, mode="body"))
    assert e.value.code == "out_of_memory"


def test_photo_without_box_uses_the_detector_or_the_whole_image(engine, astronaut, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    saved = engine.detector
    try:
        engine.detector = "someone/uncached-detector"  # cannot load offline: whole image, logged
        res = engine.reconstruct(ReconstructRequest(image=astronaut, mode="body"))
        assert str(res["boxes_source"]) == "full_image"
        h, w = astronaut.shape[:2]
        np.testing.assert_allclose(res["bbox"], [[0, 0, w, h]])
        assert engine.detector is None and "not in the local cache" in engine.detector_error
        # A detector (any callable image -> xyxy boxes) gives one person per box.
        engine.detector = lambda img: np.array([[20, 10, 370, 512], [100, 50, 300, 400]], np.float32)
        res = engine.reconstruct(ReconstructRequest(image=astronaut, mode="body"))
        assert str(res["boxes_source"]) == "detector" and res["pred_vertices"].shape[0] == 2
        engine.detector = lambda img: np.zeros((0, 4), np.float32)
        with pytest.raises(ServerError) as e:
            engine.reconstruct(ReconstructRequest(image=astronaut, mode="body"))
        assert e.value.code == "no_person"
    finally:
        engine.detector = saved


@pytest.mark.parametrize("size", [(1, 1), (2, 1), (1, 300)])
def test_degenerate_photos_are_refused_clearly(engine, size) -> None:
    image = np.full((size[1], size[0], 3), 40, np.uint8)
    with pytest.raises(ServerError, match="too small") as e:
        engine.reconstruct(ReconstructRequest(image=image, mode="full"))
    assert e.value.code == "bad_input"


def test_native_mhr_backend_matches_the_torchscript(engine, astronaut, parity_dir: Path, tmp_path: Path) -> None:
    from server.mhr.forward import MHRBody

    native = load_engine(checkpoint=str(parity_dir / "checkpoints" / "dinov3_tiny"), device="cpu",
                         cache_dir=str(tmp_path), mhr_backend="native")
    assert isinstance(native.model.head_pose.mhr, MHRBody)
    assert native.model.head_pose_hand.mhr is native.model.head_pose.mhr
    assert native.info["mhr_backend"] == "native" and engine.info["mhr_backend"] == "torchscript"
    def checkpoint_keys(model) -> list[str]:  # the official checkpoints hold no MHR keys
        return sorted(k for k in model.state_dict() if ".mhr." not in k)

    assert checkpoint_keys(native.model) == checkpoint_keys(engine.model)
    assert not [k for k in native.model.state_dict() if ".mhr." in k]
    ref = np.load(parity_dir / "cases" / "02_dinov3_full_1p_hands_valid" / "outputs.npz")
    box = np.array([[20, 10, 370, 512]], np.float32)
    res = native.reconstruct(ReconstructRequest(image=astronaut, boxes=box))
    for key in ("pred_vertices", "pred_keypoints_3d", "pred_joint_coords", "pred_cam_t"):
        np.testing.assert_allclose(res[key], ref[key], atol=2e-6, err_msg=key)
    np.testing.assert_allclose(res["pred_keypoints_2d"], ref["pred_keypoints_2d"], atol=1e-3)
    ours, theirs = native.rig_data(), engine.rig_data()
    assert sorted(ours) == sorted(theirs)
    for key in ours:
        np.testing.assert_array_equal(np.asarray(ours[key]), np.asarray(theirs[key]), err_msg=key)
    import torch

    from server.engine import resolve_mhr_backend

    assert resolve_mhr_backend("auto", "fast", torch.device("cuda")) == "native"
    for precision, device in (("fast", "cpu"), ("official", "cuda"), ("fp32", "cuda"), ("fast", "mps")):
        assert resolve_mhr_backend("auto", precision, torch.device(device)) == "torchscript"
    assert resolve_mhr_backend("native", "fp32", torch.device("cpu")) == "native"
    with pytest.raises(ServerError, match="MHR backend"):
        load_engine(checkpoint=str(parity_dir / "checkpoints" / "dinov3_tiny"), device="cpu",
                    cache_dir=str(tmp_path), mhr_backend="onnx")


def captured_body_run(engine, image: np.ndarray, keypoints_only: bool) -> tuple[dict, dict]:
    """(result, every stage tensor the model recorded) of one body-mode run."""
    model = engine.model
    head = model.head_pose
    head.intermediate_keypoints_only, model.capture = keypoints_only, {}
    try:
        res = engine.reconstruct(ReconstructRequest(image=image, boxes=np.array([[20, 10, 370, 512]], np.float32),
                                                    mode="body"))
        return res, dict(model.capture)
    finally:
        head.intermediate_keypoints_only, model.capture = True, None


def test_native_backend_skins_only_keypoint_vertices_in_intermediate_layers(parity_dir: Path, astronaut,
                                                                          tmp_path: Path) -> None:
    native = load_engine(checkpoint=str(parity_dir / "checkpoints" / "dinov3_tiny"), device="cpu",
                         cache_dir=str(tmp_path), mhr_backend="native")
    assert native.model.head_pose.intermediate_keypoints_only
    last = len(native.model.decoder.layers) - 1
    res, captured = captured_body_run(native, astronaut, keypoints_only=True)
    assert "L0.pred_keypoints_3d" in captured and "L0.pred_vertices" not in captured
    assert f"L{last}.pred_vertices" in captured
    # The intermediate keypoints equal a whole-mesh evaluation of the same parameters.
    full, whole = captured_body_run(native, astronaut, keypoints_only=False)
    assert "L0.pred_vertices" in whole
    for layer in range(last):
        np.testing.assert_allclose(captured[f"L{layer}.pred_keypoints_3d"].numpy(),
                                   whole[f"L{layer}.pred_keypoints_3d"].numpy(), atol=1e-6)
    np.testing.assert_allclose(res["pred_vertices"], full["pred_vertices"], atol=1e-6)
