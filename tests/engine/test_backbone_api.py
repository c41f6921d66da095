"""build_backbone / set_official_precision contract: attributes, shapes, dtypes, bad input."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from server.models.backbones import (
    SUPPORTED_TYPES,
    backbone_dtype,
    build_backbone,
    set_official_precision,
)

TINY_DINO = {
    "TYPE": "dinov3_custom",
    "DROP_PATH_RATE": 0.1,
    "ARCH": {"embed_dim": 32, "depth": 1, "num_heads": 2, "ffn_ratio": 6.0, "drop_path_rate": 0.0},
}
TINY_VIT = {"TYPE": "vit_hmr_512_384", "ARCH": {"embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 4}}


def _image(batch: int, height: int, width: int) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(0))


def test_unknown_type_names_supported_types() -> None:
    with pytest.raises(ValueError) as err:
        build_backbone({"TYPE": "resnet50"})
    for name in SUPPORTED_TYPES:
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ("dinov3_custom", "mapping"),
        ({"TYPE": "dinov3_custom"}, "ARCH"),
        ({"TYPE": "dinov3_vith16plus", "ARCH": {"embed_dim": 64}}, "dinov3_custom"),
        ({**TINY_DINO, "ARCH": {**TINY_DINO["ARCH"], "embed_dims": 64}}, "embed_dims"),
        ({**TINY_DINO, "ARCH": {**TINY_DINO["ARCH"], "num_heads": 3}}, "num_heads"),
        ({**TINY_DINO, "ARCH": {**TINY_DINO["ARCH"], "norm_layer": "rmsnorm"}}, "rmsnorm"),
        ({**TINY_DINO, "ARCH": {**TINY_DINO["ARCH"], "depth": 0}}, "depth"),
        ({**TINY_DINO, "ARCH": [1, 2]}, "ARCH"),
        ({**TINY_DINO, "ARCH": {**TINY_DINO["ARCH"], "layerscale_init": "small"}}, "layerscale_init"),
        ({**TINY_DINO, "FLASH_ATTN": True}, "FLASH_ATTN"),
        ({**TINY_VIT, "ARCH": {**TINY_VIT["ARCH"], "img_size": [256, 192]}}, "img_size"),
        ({**TINY_VIT, "ARCH": {**TINY_VIT["ARCH"], "mlp_ratios": 4}}, "mlp_ratios"),
        ({**TINY_VIT, "ARCH": {**TINY_VIT["ARCH"], "num_heads": 5}}, "num_heads"),
    ],
)
def test_bad_config_is_rejected_with_a_clear_message(cfg, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_backbone(cfg)


def test_dinov3_arch_numbers_written_without_a_dot_are_read_as_numbers() -> None:
    # PyYAML reads `1e-5` as a string; the value still means 1e-5.
    model = build_backbone({**TINY_DINO, "ARCH": {**TINY_DINO["ARCH"], "layerscale_init": "1e-5"}})
    assert torch.allclose(model.encoder.blocks[0].ls1.gamma, torch.full((32,), 1e-5))


def test_dinov3_attributes_and_output() -> None:
    model = build_backbone(TINY_DINO).eval()
    assert model.embed_dim == 32 and model.patch_size == 16
    assert model.input_columns == slice(None)
    with torch.no_grad():
        out = model(_image(2, 64, 48))  # non-square grids work (RoPE coords per axis)
    assert out.shape == (2, 32, 4, 3) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_vit_attributes_and_output() -> None:
    model = build_backbone(TINY_VIT).eval()
    assert model.embed_dim == 32 and model.patch_size == 16
    assert model.input_columns == slice(64, 448)
    crop = _image(1, 512, 512)
    with torch.no_grad():
        out = model(crop[..., model.input_columns])
    assert out.shape == (1, 32, 32, 24) and out.dtype == torch.float32


def test_vit_rejects_other_input_sizes() -> None:
    model = build_backbone(TINY_VIT).eval()
    with pytest.raises(ValueError, match="512, 384"):
        model(_image(1, 512, 512))


@pytest.mark.parametrize("cfg", [TINY_DINO, TINY_VIT])
@pytest.mark.parametrize(
    "bad",
    [torch.zeros(3, 64, 64), torch.zeros(1, 1, 64, 64), torch.zeros(1, 3, 64, 64, dtype=torch.uint8),
     torch.zeros(1, 3, 8, 8)],
)
def test_bad_input_tensor_is_rejected(cfg, bad: torch.Tensor) -> None:
    model = build_backbone(cfg).eval()
    with pytest.raises(ValueError, match="backbone input"):
        model(bad)


def test_backbone_dtype_follows_official_train_flags() -> None:
    assert backbone_dtype(None) == torch.float32
    assert backbone_dtype({"USE_FP16": False, "FP16_TYPE": "float16"}) == torch.float32
    assert backbone_dtype({"USE_FP16": True}) == torch.float16
    assert backbone_dtype({"USE_FP16": True, "FP16_TYPE": "float16"}) == torch.float16
    assert backbone_dtype({"USE_FP16": True, "FP16_TYPE": "bfloat16"}) == torch.bfloat16


def test_dinov3_precision_converts_the_whole_encoder() -> None:
    model = set_official_precision(build_backbone(TINY_DINO), torch.float16)
    assert {t.dtype for t in model.state_dict().values()} == {torch.float16}
    assert model.encoder.rope_embed.compute_dtype == torch.float32  # angles stay fp32
    with torch.no_grad():
        out = model.eval()(_image(1, 32, 32))
    assert out.dtype == torch.float32
    set_official_precision(model, torch.float32)
    assert {t.dtype for t in model.state_dict().values()} == {torch.float32}


def test_vit_precision_keeps_layernorm32_in_fp32() -> None:
    model = set_official_precision(build_backbone(TINY_VIT), torch.bfloat16)
    for name, tensor in model.state_dict().items():
        is_norm = "norm" in name
        assert tensor.dtype == (torch.float32 if is_norm else torch.bfloat16), name
    with torch.no_grad():
        out = model.eval()(_image(1, 512, 384))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_set_official_precision_rejects_other_modules_and_dtypes() -> None:
    with pytest.raises(ValueError, match="build_backbone"):
        set_official_precision(nn.Linear(2, 2), torch.float16)
    with pytest.raises(ValueError, match="float16"):
        set_official_precision(build_backbone(TINY_DINO), torch.float64)


def test_vit_flash_attn_option_is_close_to_exact_attention() -> None:
    torch.manual_seed(0)
    exact = build_backbone(TINY_VIT).eval()
    flash = build_backbone({**TINY_VIT, "FLASH_ATTN": True}).eval()
    flash.load_state_dict(exact.state_dict())
    x = _image(1, 512, 384)
    with torch.no_grad():
        diff = (exact(x) - flash(x)).abs().max().item()
    # fp16 attention (the official flash path casts q/k/v to half): close, not equal.
    assert 0 < diff < 5e-2
