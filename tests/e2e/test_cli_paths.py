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

from tests import tolerances as tol

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
        tol.check_key("server reconstruct (case 02)", key, res[key], ref[key])
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
    for key in ("pred_vertices", "pred_cam_t"):
        tol.check_key("server reconstruct --prompt (case 06)", key, res[key][0], ref[key][0])

    # A dummy off-image prompt in the form `--help` gives: taken, the run succeeds.
    dummy_out = tmp_path / "dummy.npz"
    run(["-m", "server", "reconstruct", str(parity_dir / "images" / "astronaut.png"), "--checkpoint", ckpt,
         "--box", "20,10,370,512", "--mode", "body", "--device", "cpu", *prompts, "--prompt=-107.5,-41.5,-2",
         "--out", str(dummy_out)], tmp_path)
    assert np.load(dummy_out)["pred_vertices"].shape == res["pred_vertices"].shape
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


def _write_case05_masks(parity_dir: Path, tmp_path: Path) -> list[str]:
    from PIL import Image

    masks = np.load(parity_dir / "cases" / "05_dinov3_full_2p_masks" / "inputs.npz")["masks"]
    assert [sorted(np.unique(m).tolist()) for m in masks] == [[0, 1], [0, 255]]
    paths = []
    for i, m in enumerate(masks):
        paths.append(str(tmp_path / f"mask{i}.png"))
        Image.fromarray(m).save(paths[-1])  # what cv2.imwrite / PIL write for a uint8 mask
    return paths


def test_mask_files_keep_their_values_case_05(ckpt: str, parity_dir: Path, tmp_path: Path) -> None:
    """A 0/1 and a 0/255 mask file reach the model as Meta's code gets them: case 05's outputs."""
    case = parity_dir / "cases" / "05_dinov3_full_2p_masks"
    paths = _write_case05_masks(parity_dir, tmp_path)
    out = tmp_path / "masked.npz"
    boxes = np.load(case / "inputs.npz")["boxes"]
    run(["-m", "server", "reconstruct", str(parity_dir / "images" / "two_person.png"), "--checkpoint", ckpt,
         *[f"--box={','.join(str(float(v)) for v in b)}" for b in boxes],
         "--mask", paths[0], "--mask", paths[1], "--mode", "full", "--device", "cpu", "--out", str(out)], tmp_path)
    res, ref = np.load(out), np.load(case / "outputs.npz")
    np.testing.assert_array_equal(res["mask"], ref["mask"])
    r2r = __import__("json").loads((case / "case.json").read_text())["run_to_run_max_abs_diff_threads_2_vs_1"]["outputs"]
    for key in ("pred_vertices", "pred_keypoints_2d", "pred_cam_t", "body_pose_params"):
        tol.check_key("server reconstruct --mask (case 05)", key, res[key], ref[key], run_to_run=r2r.get(key, 0.0))


@pytest.mark.parametrize(("values", "message"), [((0, 128, 255), "not binary"), ((0,), "is empty"),
                                                 ((0, 1, 255), "not binary")])
def test_unusable_mask_files_are_refused(ckpt: str, parity_dir: Path, tmp_path: Path, values, message) -> None:
    from PIL import Image

    mask = np.zeros((512, 512), np.uint8)
    for i, v in enumerate(values):
        mask[100 + 50 * i: 150 + 50 * i, 100:300] = v
    Image.fromarray(mask).save(tmp_path / "bad.png")
    env = dict(os.environ, PYTHONPATH=str(ROOT), SAM3D_BODY_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "server", "reconstruct", str(parity_dir / "images" / "astronaut.png"),
                           "--checkpoint", ckpt, "--box", "20,10,370,512", "--mask", str(tmp_path / "bad.png"),
                           "--device", "cpu", "--out", str(tmp_path / "never.npz")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "never.npz").exists()
