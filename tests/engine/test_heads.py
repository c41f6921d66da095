"""MHR and camera heads against Meta's official per-layer outputs (fixtures/parity).

The decoder (another module) is not needed: the saved `L<l>.tokens_out` are the decoder layer
outputs before `norm_final`, so the test applies a LayerNorm loaded from `decoder.norm_final.*`
itself and feeds token 0 to the heads. Hand passes only store the heads' outputs, so the hand
head is checked from the saved 519-d prediction pieces through `MHRHead.decode`.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

from server.models.camera_head import PerspectiveHead
from server.models.mhr_head import MHRHead
from tests import tolerances as tol
from tests.conftest import PARITY

ATOL = tol.PARAMS  # metres and angles/params of the body passes share 1e-5 (tests/tolerances.py)
PX_ATOL = tol.PIXELS

POSE_KEYS = (
    "pred_pose_raw", "global_rot", "body_pose", "shape", "scale", "hand", "pred_keypoints_3d",
    "pred_joint_coords", "joint_global_rots", "mhr_model_params", "pred_vertices",
)
CAM_KEYS = ("pred_keypoints_2d", "pred_cam_t", "focal_length", "pred_keypoints_2d_depth")


@lru_cache(maxsize=None)
def _state_dict(checkpoint: str) -> dict[str, torch.Tensor]:
    return torch.load(PARITY / "checkpoints" / checkpoint / "model.ckpt", weights_only=True)["state_dict"]


def _prefixed(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


@lru_cache(maxsize=None)
def _heads(checkpoint: str):
    """(sd, body pose head, hand pose head, body camera, hand camera, norm_final) of a checkpoint."""
    sd = _state_dict(checkpoint)
    dim = sd["decoder.norm_final.weight"].shape[0]
    mhr_path = PARITY / "checkpoints" / checkpoint / "assets" / "mhr_model.pt"
    pose = {}
    for name, hand in (("head_pose", False), ("head_pose_hand", True)):
        head = MHRHead(dim, mlp_depth=2, mhr_model_path=mhr_path, mlp_channel_div_factor=1, enable_hand_model=hand)
        missing, unexpected = head.load_state_dict(_prefixed(sd, name + "."), strict=False)
        assert not unexpected and all(k.startswith("mhr.") for k in missing), (missing, unexpected)
        pose[name] = head.eval()
    cams = {}
    for name, factor in (("head_camera", 1.0), ("head_camera_hand", 10.0)):
        cam = PerspectiveHead(dim, (512, 512), mlp_depth=2, mlp_channel_div_factor=1, default_scale_factor=factor)
        cam.load_state_dict(_prefixed(sd, name + "."))
        cams[name] = cam.eval()
    norm = torch.nn.LayerNorm(dim, eps=1e-6)
    norm.load_state_dict(_prefixed(sd, "decoder.norm_final."))
    return sd, pose["head_pose"], pose["head_pose_hand"], cams["head_camera"], cams["head_camera_hand"], norm


def _case(name: str):
    case_dir = PARITY / "cases" / name
    if not case_dir.exists():
        pytest.skip(f"{case_dir} not present")
    meta = json.loads((case_dir / "case.json").read_text())
    ckpt = Path(meta["checkpoint"]).name
    with np.load(case_dir / "intermediates.npz") as f:
        inter = {k: f[k] for k in f.files}
    with np.load(case_dir / "outputs.npz") as f:
        outputs = {k: f[k] for k in f.files}
    return ckpt, inter, outputs


def _compare(got: dict, ref: dict, prefix: str, keys, atol: float) -> int:
    n = 0
    for key in keys:
        if f"{prefix}{key}" not in ref:
            continue
        value = got[key]
        value = value.detach().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        expected = ref[f"{prefix}{key}"]
        assert value.shape == expected.shape, f"{prefix}{key}: shape {value.shape} != {expected.shape}"
        tol.check(f"heads {prefix}{key}", value, expected, atol, tol.for_key(key)[0])
        n += 1
    return n


def _project(cam: PerspectiveHead, kp3d, pred_cam, inter, pass_name):
    # Prompted re-runs of the body decoder reuse the body pass's batch.
    batch_pass = "body" if pass_name in ("kprompt", "uprompt") else pass_name
    b = lambda k: torch.from_numpy(inter[f"{batch_pass}.{k}"].copy())  # noqa: E731
    center = b("bbox_center")[0]
    if pass_name == "lhand":
        # The official code un-mirrors the left-hand batch's bbox_center in place after the pass,
        # so the stored value is the un-mirrored one; the projection ran with the mirrored x.
        center[:, 0] = b("ori_img_size")[0][:, 0] - center[:, 0] - 1
    return cam.perspective_projection(
        kp3d, pred_cam, center, b("bbox_scale")[0][:, 0], b("ori_img_size")[0],
        b("cam_int").expand(kp3d.shape[0], 3, 3), use_intrin_center=True,
    )


@pytest.mark.parametrize(
    "case, pass_name",
    [
        ("01_dinov3_body_1p", "body"),
        ("03_dinov3_full_2p_one_hand_invalid", "body"),
        ("06_dinov3_user_keypoint_prompt", "uprompt"),
        ("07_dinov3_full_cam_int", "body"),
        ("08a_vith_body_1p", "body"),
    ],
)
def test_body_heads_per_layer(parity_dir, case, pass_name):
    ckpt, inter, _ = _case(case)
    sd, head, _, cam, _, norm = _heads(ckpt)
    layers = sorted({int(k.split(".")[1][1:]) for k in inter if k.startswith(f"{pass_name}.L") and k.endswith("tokens_out")})
    assert layers, f"{case}: no {pass_name} tokens_out stored"
    checked = 0
    for layer in layers:
        prefix = f"{pass_name}.L{layer}."
        with torch.no_grad():
            token = norm(torch.from_numpy(inter[prefix + "tokens_out"]))[:, 0]
            out = head(token, sd["init_pose.weight"])
            out["pred_cam"] = cam(token, sd["init_camera.weight"])
            out.update(_project(cam, out["pred_keypoints_3d"], out["pred_cam"], inter, pass_name))
        checked += _compare(out, inter, prefix, POSE_KEYS + ("pred_cam",), ATOL)
        checked += _compare(out, inter, prefix, ("pred_cam_t", "focal_length", "pred_keypoints_2d_depth"), ATOL)
        checked += _compare(out, inter, prefix, ("pred_keypoints_2d",), PX_ATOL)
    assert checked >= 14 * len(layers)


@pytest.mark.parametrize("pass_name", ["lhand", "rhand", "body", "kprompt"])
def test_decode_and_camera_from_saved_predictions(parity_dir, pass_name):
    """Rebuild the 519-d prediction from the saved pieces; decode with the pass's head."""
    ckpt, inter, _ = _case("02_dinov3_full_1p_hands_valid")
    _, body_head, hand_head, body_cam, hand_cam, _ = _heads(ckpt)
    hand = pass_name.endswith("hand")
    head, cam = (hand_head, hand_cam) if hand else (body_head, body_cam)
    layers = sorted({int(k.split(".")[1][1:]) for k in inter if k.startswith(f"{pass_name}.L") and k.endswith(".pred_pose_raw")})
    if pass_name in ("lhand", "kprompt"):
        # The last layer's dict is the object run_inference edits in place afterwards (left-hand
        # un-mirroring; IK and pred_pose_raw zeroing of the prompted body pass), so the saved
        # pieces of that layer are post-edit and cannot be decoded back.
        layers = layers[:-1]
    assert layers
    for layer in layers:
        prefix = f"{pass_name}.L{layer}."
        g = lambda k: torch.from_numpy(inter[prefix + k])  # noqa: E731
        face = torch.randn(g("shape").shape[0], 72)  # multiplied by 0 in the head
        pred = torch.cat([g("pred_pose_raw"), g("shape"), g("scale"), g("hand"), face], dim=1)
        with torch.no_grad():
            out = head.decode(pred)
            out.update(_project(cam, out["pred_keypoints_3d"], g("pred_cam"), inter, pass_name))
        assert _compare(out, inter, prefix, POSE_KEYS, ATOL) >= 10
        _compare(out, inter, prefix, ("pred_cam_t", "pred_keypoints_2d_depth"), ATOL)
        _compare(out, inter, prefix, ("pred_keypoints_2d",), PX_ATOL)
        if hand:
            kp = out["pred_keypoints_3d"]
            assert torch.all(kp[:, :21] == 0) and torch.all(kp[:, 42:] == 0)
            assert torch.all(out["mhr_model_params"][:, head.nonhand_param_idxs] == 0)


@pytest.mark.parametrize(
    "case", ["02_dinov3_full_1p_hands_valid", "03_dinov3_full_2p_one_hand_invalid", "08b_vith_full_1p"]
)
def test_final_merge_forward_reproduces_outputs(parity_dir, case):
    """The last MHR forward of full mode (merged hands, IK'd wrists) through mhr_forward."""
    ckpt, _, out = _case(case)
    _, head, *_ = _heads(ckpt)
    t = lambda k: torch.from_numpy(out[k])  # noqa: E731
    with torch.no_grad():
        verts, kp, joints, params = head.mhr_forward(
            t("global_rot") * 0, t("global_rot"), t("body_pose_params"), t("hand_pose_params"),
            t("scale_params"), t("shape_params"), t("expr_params"),
            return_keypoints=True, return_joint_coords=True, return_model_params=True,
        )
    for a in (verts, kp, joints):
        a[..., [1, 2]] *= -1
    got = {"pred_vertices": verts, "pred_keypoints_3d": kp[:, :70], "pred_joint_coords": joints, "mhr_model_params": params}
    assert _compare(got, out, "", got.keys(), ATOL) == 4


def test_ik_rotations_from_mhr_forward(parity_dir):
    """`return_joint_rotations` alone returns a bare tensor the IK step indexes with [1] ..."""
    ckpt, inter, out = _case("02_dinov3_full_1p_hands_valid")
    _, head, *_ = _heads(ckpt)
    t = lambda k: torch.from_numpy(out[k])  # noqa: E731
    with torch.no_grad():
        res = head.mhr_forward(
            t("global_rot") * 0, t("global_rot"), t("body_pose_params"), t("hand_pose_params"),
            t("scale_params"), t("shape_params"), t("expr_params"), return_joint_rotations=True,
        )
    assert isinstance(res, tuple) and len(res) == 2
    rots = res[1]
    assert rots.shape == (1, 127, 3, 3)
    assert torch.allclose(rots @ rots.transpose(-1, -2), torch.eye(3).expand_as(rots), atol=1e-5)


def test_state_dict_keys_equal_checkpoint(parity_dir):
    sd, body_head, hand_head, body_cam, hand_cam, _ = _heads("dinov3_tiny")
    for prefix, module in (
        ("head_pose.", body_head), ("head_pose_hand.", hand_head),
        ("head_camera.", body_cam), ("head_camera_hand.", hand_cam),
    ):
        ours = {k: tuple(v.shape) for k, v in module.state_dict().items() if not k.startswith("mhr.")}
        theirs = {k: tuple(v.shape) for k, v in _prefixed(sd, prefix).items()}
        assert ours == theirs, prefix
    assert any(k.startswith("mhr.") for k in body_head.state_dict()), "MHR must be registered as `mhr`"


def test_stored_hand_pca_is_used(parity_dir):
    """The stored hand_pose_comps is not the identity; the head must use it as stored."""
    _, head, *_ = _heads("dinov3_tiny")
    assert not torch.allclose(head.hand_pose_comps, torch.eye(54))
    x = torch.zeros(1, 136)
    hand = torch.zeros(1, 108)
    hand[0, 0] = 1.0
    with_pca = head.replace_hands_in_pose(x.clone(), hand)
    comps = head.hand_pose_comps.data.clone()
    try:
        head.hand_pose_comps.data = torch.eye(54)
        with_eye = head.replace_hands_in_pose(x.clone(), hand)
    finally:
        head.hand_pose_comps.data = comps
    assert not torch.allclose(with_pca, with_eye)


def test_mhr_stays_fp32_and_off_mps_when_model_converted(standin_small):
    head = MHRHead(16, mlp_depth=2, mhr_model_path=standin_small, mlp_channel_div_factor=1)
    head.half()
    assert head.proj.layers[0][0].weight.dtype == torch.float16
    assert all(t.dtype != torch.float16 for t in head.mhr.buffers())
    head.float()
    out = head(torch.zeros(2, 16), head.get_zero_pose_init())
    assert out["pred_vertices"].shape == (2, head.keypoint_mapping.shape[1] - 127, 3)


def test_head_errors(standin_small, tmp_path):
    head = MHRHead(16, mlp_depth=1, mhr_model_path=standin_small)
    with pytest.raises(ValueError, match="pose token"):
        head(torch.zeros(16))
    with pytest.raises(ValueError, match="519"):
        head.decode(torch.zeros(1, 518))
    with pytest.raises(Exception, match="not found"):
        MHRHead(16, mhr_model_path=tmp_path / "missing.pt")
    cam = PerspectiveHead(16)
    with pytest.raises(ValueError, match="pose token"):
        cam(torch.zeros(3, 2, 16))


def test_zero_pose_init_decodes_to_rest(standin_small):
    head = MHRHead(16, mlp_depth=1, mhr_model_path=standin_small)
    init = head.get_zero_pose_init()
    with torch.no_grad():
        out = head.decode(init)
    assert torch.allclose(out["global_rot"], torch.zeros(1, 3), atol=1e-7)
    assert torch.allclose(out["body_pose"], torch.zeros(1, 133), atol=1e-6)


def test_head_with_our_mhr_forward_matches_official(parity_dir):
    """MHRHead driven by server.mhr.forward.MHRBody instead of the TorchScript."""
    from server.mhr.forward import MHRBody
    from server.mhr.torchscript import load_mhr

    ckpt, inter, _ = _case("01_dinov3_body_1p")
    sd, ts_head, _, _, _, norm = _heads(ckpt)
    ours = MHRHead(
        ts_head.proj.layers[0][0].in_features, mlp_depth=2, mlp_channel_div_factor=1,
        mhr=MHRBody.from_torchscript(load_mhr(PARITY / "checkpoints" / ckpt / "assets" / "mhr_model.pt")),
    )
    ours.load_state_dict(_prefixed(sd, "head_pose."), strict=True)  # no mhr.* keys: MHRBody buffers are not persistent
    prefix = "body.L2."
    with torch.no_grad():
        out = ours(norm(torch.from_numpy(inter[prefix + "tokens_out"]))[:, 0], sd["init_pose.weight"])
    assert _compare(out, inter, prefix, POSE_KEYS, ATOL) == len(POSE_KEYS)
