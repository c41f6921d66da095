"""Whole-pass parity of SAM3DBody with the official code (heads and MHR included).

* ``test_decoder_pass``: token assembly + all decoder layers + heads + keypoint-token updates
  from the stored ray-conditioned features (every pass whose features are stored).
* ``test_forward_step``: ``forward_step`` end to end with the backbone replaced by the stored
  backbone output (the backbone has its own tests), i.e. mask embedding, rays, condition,
  decoder, heads, hand boxes.
* ``test_run_keypoint_prompt``: the prompted body re-run (full-mode ``kprompt``, case 06 user
  prompts) on top of ``forward_step``.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
import torch.nn as nn

from tests.engine.model_parity_helpers import (
    CASES,
    CASES_DIR,
    backbone_features,
    batch_for,
    branch_of,
    compare,
    crop_paths,
    decoder_passes,
    intermediates,
    model_for,
    shared,
    t,
)

DEC_PASSES = [(c, p) for c in CASES for p in decoder_passes(c)]
STEP_PASSES = [(c, p) for c in CASES for p in ("body", "lhand", "rhand") if f"{p}.condition" in intermediates(c)]
PROMPT_PASSES = [(c, p) for c in CASES for p in ("kprompt", "uprompt") if f"{p}.keypoint_prompt" in intermediates(c)]
SKIP_KEYS = {"faces", "pred_pose_rotmat", "pred_keypoints_2d_verts", "face"}


def _ids(params):
    return ["-".join(p) for p in params]


def _official_in_place_edits(case: str, pass_name: str, captured: dict, model) -> dict:
    """The harness stored the last layer's output dict by reference, and the official
    run_inference edits some of it in place afterwards; apply the same edits to our copy:
    * lhand: un-mirroring (scale[:, 9] remapped, joint_global_rots[:, 78] <- [:, 42] with rows
      1, 2 negated, hand[:, :54] <- hand[:, 54:]);
    * the output that ends up as the final result has pred_pose_raw zeroed."""
    captured = dict(captured)
    layers = [int(k[1:].split(".")[0]) for k in captured if k.startswith("L") and k[1].isdigit()]
    if not layers:
        return captured
    last = f"L{max(layers)}."
    if pass_name == "lhand" and last + "scale" in captured:
        hp = model.head_pose
        scale = captured[last + "scale"].clone()
        scale[:, 9] = ((hp.scale_mean[8].item() + hp.scale_comps[8, 8].item() * scale[:, 8]) - hp.scale_mean[9].item()) / hp.scale_comps[9, 9].item()
        rots = captured[last + "joint_global_rots"].clone()
        rots[:, 78] = rots[:, 42].clone()
        rots[:, 78, [1, 2], :] *= -1
        hand = captured[last + "hand"].clone()
        hand[:, :54] = hand[:, 54:]
        captured.update({last + "scale": scale, last + "joint_global_rots": rots, last + "hand": hand})
    stored = intermediates(case).get(f"{pass_name}.{last}pred_pose_raw")
    if stored is not None and not stored.any() and last + "pred_pose_raw" in captured:
        # This dict became the final result: the merge zeroed pred_pose_raw and wrote the IK
        # wrists, hand scales and shared hand scale/shape into it in place (pipeline territory,
        # tested there). Take those entries from the fixture; every other entry is compared.
        captured[last + "pred_pose_raw"] = torch.zeros_like(captured[last + "pred_pose_raw"])
        for key, cols in (("body_pose", [31, 32, 33, 41, 42, 43]), ("scale", [8, 9] + list(range(18, 28))), ("shape", list(range(40, 45)))):
            mine = captured[last + key].clone()
            mine[:, cols] = t(case, f"{pass_name}.{last}{key}")[:, cols]
            captured[last + key] = mine
    return captured


def _compare_captured(case: str, pass_name: str, captured: dict, model) -> int:
    """Compare every captured tensor that the fixture also stores for this pass."""
    inter = intermediates(case)
    captured = _official_in_place_edits(case, pass_name, captured, model)
    checked = 0
    for name, value in captured.items():
        key = f"{pass_name}.{name}"
        if name.rsplit(".", 1)[-1] in SKIP_KEYS:
            continue
        want = inter.get(key)
        if want is None and name in ("backbone", "raycond", "ray_ds", "image_pe"):
            want = shared(case, key)
            want = None if want is None else want.numpy()
        if want is None:
            continue
        if name == "image_pe":
            value = value.flatten(2).permute(0, 2, 1)
        compare(case, key, value, want)
        checked += 1
    return checked


class _StoredBackbone(nn.Module):
    """Stands in for the backbone: returns the official backbone output of this pass."""

    def __init__(self, real: nn.Module, features: torch.Tensor) -> None:
        super().__init__()
        self.features = features
        self.embed_dim, self.patch_size, self.input_columns = real.embed_dim, real.patch_size, real.input_columns

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[0] == self.features.shape[0] and x.shape[-1] == self.features.shape[-1] * self.patch_size
        return self.features.clone()


@contextlib.contextmanager
def _stored_backbone(model, features):
    real = model.backbone
    model.backbone = _StoredBackbone(real, features)
    try:
        yield
    finally:
        model.backbone = real
        model.capture = None


@contextlib.contextmanager
def _capturing(model):
    model.capture = {}
    try:
        yield model.capture
    finally:
        model.capture = None


def _prev(case, pass_name):
    key = f"{pass_name}.prev_estimate"
    return t(case, key)[:, None] if key in intermediates(case) else None


@pytest.mark.parametrize("case,pass_name", DEC_PASSES, ids=_ids(DEC_PASSES))
def test_decoder_pass(case, pass_name):
    model, missing = model_for(case)
    assert not missing, f"checkpoint lacks {missing}"
    base = "body" if pass_name in ("kprompt", "uprompt") else pass_name
    ctx = shared(case, f"{base}.raycond")
    if ctx is None:
        pytest.skip("no stored ray-conditioned features for this pass")
    kind = branch_of(pass_name)
    with torch.no_grad(), _capturing(model) as cap:
        hand_tokens, outputs = model.decode_tokens(
            kind, ctx, model.image_pe(kind), t(case, f"{pass_name}.prompt_points"), _prev(case, pass_name),
            t(case, f"{base}.condition"), batch_for(case, pass_name),
        )
    assert len(outputs) == model.decoder.layers.__len__()
    n = _compare_captured(case, pass_name, cap, model)
    assert n >= 16 * len(outputs)


@pytest.mark.parametrize("case,pass_name", STEP_PASSES, ids=_ids(STEP_PASSES))
def test_forward_step(case, pass_name):
    model, _ = model_for(case)
    feats = backbone_features(case, pass_name)
    if feats is None:
        pytest.skip("no stored backbone output for this pass")
    batch = batch_for(case, pass_name)
    kind = branch_of(pass_name)
    with torch.no_grad(), _stored_backbone(model, feats), _capturing(model) as cap:
        output = model.forward_step(batch, decoder_type=kind)
    key = "mhr" if kind == "body" else "mhr_hand"
    assert output["mhr" if kind == "hand" else "mhr_hand"] is None
    pose = output[key]
    n = _compare_captured(case, pass_name, cap, model)
    assert n >= 40, n
    last = max(int(k[1:].split(".")[0]) for k in cap if k.startswith("L"))
    compare(case, f"{pass_name}.L{last}.pred_vertices", pose["pred_vertices"])
    ray_key = "ray_cond" if kind == "body" else "ray_cond_hand"
    assert batch[ray_key].shape == (feats.shape[0], 2, 512, 512 if model.crop_columns.start == 0 else 384)
    if kind == "body" and "body.hand_box" in intermediates(case):
        compare(case, "body.hand_box", pose["hand_box"])
        compare(case, "body.hand_logits", pose["hand_logits"])
    assert output["image_embeddings"].shape == feats.shape
    compare(case, f"{pass_name}.condition", output["condition_info"])


@pytest.mark.parametrize("case,pass_name", PROMPT_PASSES, ids=_ids(PROMPT_PASSES))
def test_run_keypoint_prompt(case, pass_name):
    model, _ = model_for(case)
    feats = backbone_features(case, "body")
    if feats is None:
        pytest.skip("no stored body backbone output")
    batch = batch_for(case, "body")
    with torch.no_grad(), _stored_backbone(model, feats):
        output = model.forward_step(batch, decoder_type="body")
        with _capturing(model) as cap:
            output, prompt = model.run_keypoint_prompt(batch, output, t(case, f"{pass_name}.keypoint_prompt"))
    compare(case, f"{pass_name}.prev_estimate", cap["prev_estimate"])
    n = _compare_captured(case, pass_name, cap, model)
    assert n >= 40, n
    if pass_name == "uprompt":  # case 06 returns output["mhr"] of this call as outputs.npz
        with np.load(CASES_DIR / case / "outputs.npz") as ref:
            for key in ref.files:
                if key in SKIP_KEYS:
                    continue
                compare(case, f"outputs.{key}", output["mhr"][key], ref[key])


def _stored_crops(case: str, pass_name: str) -> torch.Tensor | None:
    """The stored uint8 crops of a pass as the official ToTensor gives them: (1, N, 3, 512, 512)."""
    import cv2

    paths = crop_paths(case, pass_name)
    if paths is None:
        return None
    crops = [cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for p in paths]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(255.0)[None]


CROP_PASSES = [(c, p) for c, p in STEP_PASSES if crop_paths(c, p) is not None]


@pytest.mark.parametrize("case,pass_name", CROP_PASSES, ids=_ids(CROP_PASSES))
def test_forward_step_with_backbone(case, pass_name):
    """Everything including our backbone, from the official crop pixels."""
    model, _ = model_for(case)
    batch = batch_for(case, pass_name)
    batch["img"] = _stored_crops(case, pass_name)
    kind = branch_of(pass_name)
    with torch.no_grad(), _capturing(model) as cap:
        model.forward_step(batch, decoder_type=kind)
    compare(case, f"{pass_name}.backbone", cap.pop("backbone"), backbone_features(case, pass_name))
    assert _compare_captured(case, pass_name, cap, model) >= 40
