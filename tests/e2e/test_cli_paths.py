"""The command-line contracts of issue 2 with the real engine on a fixture checkpoint:
`python -m server reconstruct` (RESULT.npz names, prompts, rig arrays) and `python -m addon.cli`
(photo -> .blend/.fbx, and --from-result without the model)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
OFFICIAL = ("pred_vertices", "pred_keypoints_3d", "pred_keypoints_2d", "pred_cam_t", "focal_length",
            "pred_joint_coords", "pred_global_rots", "global_rot", "body_pose_params", "hand_pose_params",
            "shape_params", "scale_params", "expr_params", "mhr_model_params", "bbox", "lhand_bbox", "rhand_bbox")


def run(args: list[str], tmp: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), SAM3D_BODY_CACHE=str(tmp / "cache"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def ckpt(parity_dir: Path) -> str:
    return str(parity_dir / "checkpoints" / "dinov3_tiny")


@pytest.fixture(scope="module")
def result_file(ckpt: str, parity_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("reconstruct")
    out = tmp / "result.npz"
    run(["-m", "server", "reconstruct", str(parity_dir / "images" / "astronaut.png"), "--checkpoint", ckpt,
         "--box", "20,10,370,512", "--mode", "full", "--device", "cpu", "--out", str(out)], tmp)
    return out


def test_reconstruct_writes_the_documented_contract(result_file: Path, parity_dir: Path) -> None:
    res = np.load(result_file, allow_pickle=False)
    for key in OFFICIAL + ("faces", "cam_int", "image_size", "mhr_skel_state", "rig_joint_names", "rig_skin_weights"):
        assert key in res.files, key
    assert res["pred_vertices"].shape[0] == 1  # leading person axis
    ref = np.load(parity_dir / "cases" / "02_dinov3_full_1p_hands_valid" / "outputs.npz")
    for key in ("pred_vertices", "pred_keypoints_3d", "mhr_model_params", "lhand_bbox"):
        np.testing.assert_allclose(res[key], ref[key], atol=1e-5, err_msg=key)
    assert tuple(res["image_size"]) == (512, 512) or res["image_size"].shape == (2,)


def test_reconstruct_with_keypoint_prompts_matches_case_06(ckpt: str, parity_dir: Path, tmp_path: Path) -> None:
    case = parity_dir / "cases" / "06_dinov3_user_keypoint_prompt"
    inputs = np.load(case / "inputs.npz")
    ref = np.load(case / "outputs.npz")
    xy = inputs["keypoint_prompt_full_px"][0]
    labels = inputs["keypoint_prompt"][0, :, 2].astype(int)
    prompts = [f"--prompt={x!r},{y!r},{int(lab)}" for (x, y), lab in zip(xy.tolist(), labels)]
    out = tmp_path / "prompted.npz"
    run(["-m", "server", "reconstruct", str(parity_dir / "images" / "astronaut.png"), "--checkpoint", ckpt,
         "--box", "20,10,370,512", "--mode", "body", "--device", "cpu", *prompts, "--out", str(out)], tmp_path)
    res = np.load(out)
    np.testing.assert_allclose(res["pred_vertices"][0], ref["pred_vertices"][0], atol=1e-5)
    np.testing.assert_allclose(res["pred_cam_t"][0], ref["pred_cam_t"][0], atol=1e-5)
    assert "fit_error_after_px" not in res.files  # the official answer unless a fit is asked for

    # --fit-prompts pins every prompted keypoint onto its point.
    pinned_out = tmp_path / "pinned.npz"
    run(["-m", "server", "reconstruct", str(parity_dir / "images" / "astronaut.png"), "--checkpoint", ckpt,
         "--box", "20,10,370,512", "--mode", "body", "--device", "cpu", *prompts, "--fit-prompts",
         "--out", str(pinned_out)], tmp_path)
    pinned = np.load(pinned_out)
    valid = labels >= 0
    np.testing.assert_array_equal(pinned["fit_prompt_label"], labels[valid])
    assert np.all(pinned["fit_error_after_px"] < pinned["fit_error_before_px"])
    reached = np.linalg.norm(pinned["pred_keypoints_2d"][0, labels[valid]] - xy[valid], axis=1)
    np.testing.assert_allclose(reached, pinned["fit_error_after_px"], atol=0.05)


def test_addon_cli_photo_to_blend_and_fbx(ckpt: str, parity_dir: Path, tmp_path: Path) -> None:
    blend, fbx = tmp_path / "astronaut.blend", tmp_path / "astronaut.fbx"
    run(["-m", "addon.cli", str(parity_dir / "images" / "astronaut.png"), "--checkpoint", ckpt,
         "--box", "20,10,370,512", "--device", "cpu", "--blend", str(blend), "--fbx", str(fbx)], tmp_path)
    assert blend.stat().st_size > 100_000 and fbx.read_bytes()[:18] == b"Kaydara FBX Binary"


def test_addon_cli_from_result_needs_no_model(result_file: Path, tmp_path: Path) -> None:
    blend = tmp_path / "imported.blend"
    run(["-m", "addon.cli", "--from-result", str(result_file), "--blend", str(blend)], tmp_path)
    assert blend.stat().st_size > 100_000


def test_addon_cli_creates_missing_output_folders(result_file: Path, tmp_path: Path) -> None:
    blend = tmp_path / "new" / "folder" / "imported.blend"
    run(["-m", "addon.cli", "--from-result", str(result_file), "--blend", str(blend)], tmp_path)
    assert blend.is_file()
