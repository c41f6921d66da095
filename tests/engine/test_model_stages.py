"""Stage-by-stage parity of SAM3DBody (everything but the backbone) with the official code.

Every stage is fed the official inputs of that stage from ``intermediates.npz`` so that a failure
names the stage. Run with ``-s`` to see the achieved errors.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.engine.model_parity_helpers import (
    CASES,
    backbone_features,
    batch_for,
    branch_of,
    compare,
    decoder_passes,
    intermediates,
    layer_pose,
    model_for,
    shared,
    num_layers,
    t,
)

BATCH_PASSES = [(c, p) for c in CASES for p in ("body", "lhand", "rhand") if f"{p}.condition" in intermediates(c)]
DEC_PASSES = [(c, p) for c in CASES for p in decoder_passes(c)]
LAYER_TOKENS = [
    (c, p, l) for c, p in DEC_PASSES for l in range(num_layers(c, p)) if f"{p}.L{l}.tokens_out" in intermediates(c)
]
KP_UPDATES = [(c, p, l) for c, p, l in LAYER_TOKENS if f"{p}.L{l + 1}.tokens_in" in intermediates(c)]
LAYER_OUTPUTS = [(c, p, l) for c, p in DEC_PASSES for l in range(num_layers(c, p))]


def _ids(params):
    return ["-".join(str(x) for x in p) for p in params]


@pytest.mark.parametrize("case,pass_name", BATCH_PASSES, ids=_ids(BATCH_PASSES))
def test_condition(case, pass_name):
    model, _ = model_for(case)
    cond = model._get_decoder_condition(batch_for(case, pass_name))
    compare(case, f"{pass_name}.condition", cond)


@pytest.mark.parametrize("case,pass_name", BATCH_PASSES, ids=_ids(BATCH_PASSES))
def test_ray_map_downsampled(case, pass_name):
    model, _ = model_for(case)
    batch = batch_for(case, pass_name)
    want = shared(case, f"{pass_name}.ray_ds")
    if want is None:
        pytest.skip("ray_ds not stored for this pass")
    rays = model.get_ray_condition(batch).flatten(0, 1)[..., model.crop_columns]
    enc = model.ray_cond_emb if branch_of(pass_name) == "body" else model.ray_cond_emb_hand
    compare(case, f"{pass_name}.ray_ds", enc.ray_encoder_input(rays), want)


@pytest.mark.parametrize("case,pass_name", BATCH_PASSES, ids=_ids(BATCH_PASSES))
def test_mask_embedding_and_raycond(case, pass_name):
    model, _ = model_for(case)
    feats = backbone_features(case, pass_name)
    if feats is None:
        pytest.skip("no stored backbone features for this pass")
    batch = batch_for(case, pass_name)
    mask = model._get_mask_prompt(batch, feats)
    if f"{pass_name}.mask_embed" in intermediates(case):
        compare(case, f"{pass_name}.mask_embed", mask)
    else:  # no mask: the learned no-mask embedding everywhere
        assert torch.equal(mask, model.prompt_encoder.no_mask_embed.weight.view(1, -1, 1, 1).expand_as(mask))
    rays = model.get_ray_condition(batch).flatten(0, 1)[..., model.crop_columns]
    enc = model.ray_cond_emb if branch_of(pass_name) == "body" else model.ray_cond_emb_hand
    want = shared(case, f"{pass_name}.raycond")
    compare(case, f"{pass_name}.raycond", enc(feats + mask, rays), want)


@pytest.mark.parametrize("case", [c for c in CASES if "body.image_pe" in intermediates(c)])
def test_dense_image_pe(case):
    model, _ = model_for(case)
    compare(case, "body.image_pe", model.image_pe("body").flatten(2).permute(0, 2, 1))


@pytest.mark.parametrize("case,pass_name", DEC_PASSES, ids=_ids(DEC_PASSES))
def test_prompt_embedding(case, pass_name):
    model, _ = model_for(case)
    emb, valid = model.prompt_encoder(t(case, f"{pass_name}.prompt_points"))
    compare(case, f"{pass_name}.prompt_embed", emb)
    assert torch.equal(valid, t(case, f"{pass_name}.prompt_points")[..., 2] > -2)


@pytest.mark.parametrize("case,pass_name", DEC_PASSES, ids=_ids(DEC_PASSES))
def test_initial_tokens(case, pass_name):
    model, _ = model_for(case)
    inter = intermediates(case)
    prev = t(case, f"{pass_name}.prev_estimate")[:, None] if f"{pass_name}.prev_estimate" in inter else None
    cond_pass = "body" if pass_name in ("kprompt", "uprompt") else pass_name
    tokens, augment, slots = model.initial_tokens(
        branch_of(pass_name), t(case, f"{pass_name}.prompt_points"), prev, t(case, f"{cond_pass}.condition")
    )
    compare(case, f"{pass_name}.L0.tokens_in", tokens)
    compare(case, f"{pass_name}.L0.augment_in", augment)
    k = inter[f"{pass_name}.prompt_points"].shape[1]
    assert slots == (2 + k, 4 + k, 74 + k)


def _context(case, pass_name):
    raycond_pass = "body" if pass_name in ("kprompt", "uprompt") else pass_name
    ctx = shared(case, f"{raycond_pass}.raycond")
    if ctx is None:
        pytest.skip(f"no stored {raycond_pass}.raycond for this case (nor an identical twin case)")
    return ctx


@pytest.mark.parametrize("case,pass_name,layer", LAYER_TOKENS, ids=_ids(LAYER_TOKENS))
def test_decoder_layer(case, pass_name, layer):
    model, _ = model_for(case)
    kind = branch_of(pass_name)
    dec = model.decoder if kind == "body" else model.decoder_hand
    ctx = _context(case, pass_name).flatten(2).permute(0, 2, 1)
    pe = model.image_pe(kind).flatten(2).permute(0, 2, 1)
    out = dec.layers[layer](t(case, f"{pass_name}.L{layer}.tokens_in"), ctx, t(case, f"{pass_name}.L{layer}.augment_in"), pe)
    compare(case, f"{pass_name}.L{layer}.tokens_out", out)


@pytest.mark.parametrize("case,pass_name,layer", KP_UPDATES, ids=_ids(KP_UPDATES))
def test_keypoint_token_update(case, pass_name, layer):
    model, _ = model_for(case)
    k = intermediates(case)[f"{pass_name}.prompt_points"].shape[1]
    br = model._branch(branch_of(pass_name))
    tokens, augment = model._update_keypoint_tokens(
        br, 4 + k, 74 + k, _context(case, pass_name),
        t(case, f"{pass_name}.L{layer}.tokens_out"), t(case, f"{pass_name}.L{layer}.augment_in"),
        layer_pose(case, pass_name, layer),
    )
    compare(case, f"{pass_name}.L{layer + 1}.tokens_in", tokens)
    compare(case, f"{pass_name}.L{layer + 1}.augment_in", augment)


@pytest.mark.parametrize("case,pass_name", [(c, p) for c, p, _ in LAYER_TOKENS if _ == num_layers(c, p) - 1])
def test_hand_box_tokens(case, pass_name):
    model, _ = model_for(case)
    k = intermediates(case)[f"{pass_name}.prompt_points"].shape[1]
    dec = model.decoder if branch_of(pass_name) == "body" else model.decoder_hand
    last = num_layers(case, pass_name) - 1
    out = dec.norm_final(t(case, f"{pass_name}.L{last}.tokens_out"))
    compare(case, f"{pass_name}.hand_tokens", out[:, 2 + k : 4 + k])


@pytest.mark.parametrize("case", [c for c in CASES if "body.hand_box" in intermediates(c)])
def test_hand_boxes(case):
    model, _ = model_for(case)
    tokens = t(case, "body.hand_tokens")
    box = model.bbox_embed(tokens).sigmoid()
    compare(case, "body.hand_box", box)
    compare(case, "body.hand_logits", model.hand_cls_embed(tokens))
    batch = batch_for(case, "body")
    left, right = model._get_hand_box({"mhr": {"hand_box": t(case, "body.hand_box")}}, batch)
    compare(case, "body.left_hand_xyxy", left)
    compare(case, "body.right_hand_xyxy", right)
    assert batch["left_scale"].shape == (left.shape[0], 2)


@pytest.mark.parametrize("case,pass_name,layer", LAYER_OUTPUTS, ids=_ids(LAYER_OUTPUTS))
def test_crop_normalised_keypoints(case, pass_name, layer):
    model, _ = model_for(case)
    kp = model._full_to_crop(batch_for(case, pass_name), t(case, f"{pass_name}.L{layer}.pred_keypoints_2d"))
    compare(case, f"{pass_name}.L{layer}.pred_keypoints_2d_cropped", kp)


def test_ray_condition_device_and_grid():
    """Integer pixel grid (no +0.5) mapped through the inverse affine and K."""
    from server.models.camera_encoder import get_ray_condition

    affine = torch.tensor([[[[2.0, 0.0, -10.0], [0.0, 2.0, -4.0]]]])
    k = torch.tensor([[[100.0, 0, 8.0], [0, 50.0, 6.0], [0, 0, 1]]])
    rays = get_ray_condition(affine, k, 3, 4)
    assert rays.shape == (1, 1, 2, 3, 4)
    u = (np.arange(4) + 10.0) / 2.0
    v = (np.arange(3) + 4.0) / 2.0
    np.testing.assert_allclose(rays[0, 0, 0, 1].numpy(), (u - 8.0) / 100.0, rtol=1e-6)
    np.testing.assert_allclose(rays[0, 0, 1, :, 2].numpy(), (v - 6.0) / 50.0, rtol=1e-6)
    with pytest.raises(ValueError):
        get_ray_condition(affine[0], k, 3, 4)
