"""Input validation and small contracts of the SAM3DBody public methods."""
from __future__ import annotations

import pytest
import torch

from tests.engine.model_parity_helpers import CASES, batch_for, model_for, t

CASE = "01_dinov3_body_1p"
pytestmark = pytest.mark.skipif(CASE not in CASES, reason="parity fixtures not present")


def test_bad_decoder_type_and_missing_batch_keys():
    model, _ = model_for(CASE)
    batch = batch_for(CASE, "body")
    with pytest.raises(ValueError, match="decoder_type"):
        model.forward_step(batch, decoder_type="face")
    del batch["affine_trans"]
    with pytest.raises(KeyError, match="affine_trans"):
        model.forward_step(batch)
    batch = batch_for(CASE, "body")
    batch["img"] = batch["img"][0]
    with pytest.raises(ValueError, match="img"):
        model.forward_step(batch)


def test_decoder_needs_prompts_and_ray_map():
    model, _ = model_for(CASE)
    batch = batch_for(CASE, "body")
    feats = torch.zeros(1, model.backbone.embed_dim, 32, 32)
    with pytest.raises(ValueError, match="keypoints"):
        model.forward_decoder(feats, keypoints=None, batch=batch)
    with pytest.raises(KeyError, match="ray_cond"):
        model.forward_decoder(feats, keypoints=t(CASE, "body.prompt_points"), batch=batch)
    with pytest.raises(NotImplementedError):
        model.forward_decoder(feats, init_estimate=torch.zeros(1, 1, 522), keypoints=t(CASE, "body.prompt_points"), batch=batch)


def test_prompt_outside_crop_is_rejected():
    model, _ = model_for(CASE)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.prompt_encoder(torch.tensor([[[1.2, 0.5, 3.0]]]))
    with pytest.raises(ValueError, match="B, K, 3"):
        model.prompt_encoder(torch.tensor([[0.2, 0.5, 3.0]]))


def test_prompt_labels():
    """-2 -> invalid embedding only, -1 -> not-a-point embedding only, i -> PE + point i."""
    pe = model_for(CASE)[0].prompt_encoder
    pts = torch.tensor([[[0.3, 0.4, -2.0], [0.3, 0.4, -1.0], [0.3, 0.4, 5.0]]])
    emb, valid = pe(pts)
    assert torch.equal(emb[0, 0], pe.invalid_point_embed.weight[0])
    assert torch.equal(emb[0, 1], pe.not_a_point_embed.weight[0])
    assert torch.allclose(emb[0, 2], pe.pe_layer.encode(pts[0, 2, :2]) + pe.point_embeddings[5].weight[0])
    assert valid.tolist() == [[False, True, True]]


def test_hand_box_needs_one_image():
    model, _ = model_for(CASE)
    batch = batch_for(CASE, "body")
    batch["affine_trans"] = batch["affine_trans"].expand(2, -1, -1, -1)
    with pytest.raises(ValueError, match="one image"):
        model._get_hand_box({"mhr": {"hand_box": torch.full((1, 2, 4), 0.5)}}, batch)


def test_data_preprocess_rescales_uint8_range_like_official():
    model, _ = model_for(CASE)
    x = torch.rand(1, 3, 512, 512)
    assert torch.allclose(model.data_preprocess(x * 255.0), model.data_preprocess(x), atol=1e-5)


def test_capture_is_off_by_default_and_ray_map_is_stored():
    from tests.engine.model_parity_helpers import backbone_features

    model, _ = model_for(CASE)
    assert model.capture is None
    batch = batch_for(CASE, "body")
    real = model.backbone
    feats = backbone_features(CASE, "body")

    class Stub(torch.nn.Module):
        embed_dim, patch_size, input_columns = real.embed_dim, real.patch_size, real.input_columns

        def forward(self, x):
            return feats

    model.backbone = Stub()
    try:
        with torch.no_grad():
            out = model.forward_step(batch, "body")
    finally:
        model.backbone = real
    assert model.capture is None
    assert batch["ray_cond"].shape == (1, 2, 512, 512)
    assert set(out) == {"mhr", "mhr_hand", "condition_info", "image_embeddings"} and out["mhr_hand"] is None
    assert out["mhr"]["hand_box"].shape == (1, 2, 4)
    assert model.body_batch_idx == [0] and model.hand_batch_idx == []
