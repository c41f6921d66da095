"""Backbone state_dict keys, shapes and dtypes against the official models.

Full-size variants are built on the meta device and compared with the manifests of both
official releases (fixtures/parity/manifests: every key, shape and dtype after the official fp16
conversion); the tiny variants with the keys of the parity checkpoints.
"""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from server.models.backbones import backbone_dtype, build_backbone, set_official_precision
from tests.conftest import PARITY

PREFIX = "backbone."
MANIFESTS = {
    "dinov3_vith16plus": "sam-3d-body-dinov3.state_dict.json",
    "vit_hmr_512_384": "sam-3d-body-vith.state_dict.json",
}


def _manifest(parity_dir, backbone_type: str) -> tuple[list[tuple[str, tuple, str]], dict]:
    data = json.loads((parity_dir / "manifests" / MANIFESTS[backbone_type]).read_text())
    entries = [
        (e["key"][len(PREFIX):], tuple(e["shape"]), e["dtype"])
        for e in data["keys"]
        if e["key"].startswith(PREFIX)
    ]
    return entries, data


def _entries(module: torch.nn.Module) -> list[tuple[str, tuple, str]]:
    return [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in module.state_dict().items()]


@pytest.mark.parametrize("backbone_type", sorted(MANIFESTS))
def test_full_size_keys_shapes_dtypes_match_manifest(parity_dir, backbone_type: str) -> None:
    expected, data = _manifest(parity_dir, backbone_type)
    assert data["config"]["MODEL"]["BACKBONE"]["TYPE"] == backbone_type
    with torch.device("meta"):
        model = build_backbone(data["config"]["MODEL"]["BACKBONE"])
    # The manifests were taken after the official conversion (USE_FP16, FP16_TYPE float16).
    set_official_precision(model, backbone_dtype(data["config"]["TRAIN"]))
    got = _entries(model)
    assert [k for k, _, _ in got] == [k for k, _, _ in expected], "key names or order differ"
    assert got == expected
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == data["counts"]["backbone_parameters"]
    assert model.embed_dim == 1280 and model.patch_size == 16


@pytest.mark.parametrize("checkpoint", ["dinov3_tiny", "dinov3_tiny_fp16", "vith_tiny"])
def test_tiny_keys_shapes_dtypes_match_checkpoint(parity_dir, checkpoint: str) -> None:
    ckpt_dir = parity_dir / "checkpoints" / checkpoint
    cfg = yaml.safe_load((ckpt_dir / "model_config.yaml").read_text())
    state = torch.load(ckpt_dir / "model.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    expected = [
        (k[len(PREFIX):], tuple(v.shape), str(v.dtype).removeprefix("torch."))
        for k, v in state.items()
        if k.startswith(PREFIX)
    ]
    model = build_backbone(cfg["MODEL"]["BACKBONE"])
    set_official_precision(model, backbone_dtype(cfg["TRAIN"]))
    assert sorted(_entries(model)) == sorted(expected)


@pytest.mark.parametrize("checkpoint", ["dinov3_tiny", "dinov3_tiny_fp16"])
def test_deterministic_buffers_equal_official_values(parity_dir, checkpoint: str) -> None:
    """RoPE `periods` and the K-bias mask are computed at construction exactly as the official
    init does (the checkpoint stores them, so this only matters without one)."""
    ckpt_dir = parity_dir / "checkpoints" / checkpoint
    cfg = yaml.safe_load((ckpt_dir / "model_config.yaml").read_text())
    state = torch.load(ckpt_dir / "model.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    model = build_backbone(cfg["MODEL"]["BACKBONE"])
    set_official_precision(model, backbone_dtype(cfg["TRAIN"]))
    ours = model.state_dict()
    buffers = [k for k in ours if k.endswith(("rope_embed.periods", "bias_mask"))]
    assert len(buffers) == 1 + cfg["MODEL"]["BACKBONE"]["ARCH"]["depth"]
    for key in buffers:
        assert torch.equal(ours[key], state[PREFIX + key]), key


@pytest.mark.parametrize("backbone_type", sorted(MANIFESTS))
def test_layernorm_eps_is_official(backbone_type: str) -> None:
    """eps 1e-5 everywhere (DINOv3 `layernormbf16`, ViT `LayerNorm32`). A 1e-6 eps moves the tiny
    parity features by only 8e-5, under the feature tolerance, hence this structural check."""
    with torch.device("meta"):
        model = build_backbone({"TYPE": backbone_type})
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * 32 + 1
    assert {m.eps for m in norms} == {1e-5}
