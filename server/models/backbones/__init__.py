"""Image backbones of SAM 3D Body (DINOv3 ViT-H+/16 and ViTPose-style ViT-H/16).

`build_backbone(cfg["MODEL"]["BACKBONE"])` returns an `nn.Module` whose `state_dict()` keys are
the official ones without the parent's `backbone.` prefix. Every returned module has
`embed_dim`, `patch_size`, `input_columns` (the crop columns it expects) and
`forward(x) -> float32 (B, C, h, w)` on the mean/std-normalised crop.

Precision: the official `TRAIN.USE_FP16` converts the backbone *before* the checkpoint is
loaded; call `set_official_precision(backbone, backbone_dtype(cfg["TRAIN"]))` at the same point.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from .dinov3 import Dinov3Backbone, build_dinov3, check_float_dtype
from .vit import VitBackbone, build_vit

SUPPORTED_TYPES = ("dinov3_vith16plus", "dinov3_custom", "vit_hmr_512_384")


def build_backbone(backbone_cfg: Mapping[str, Any]) -> nn.Module:
    """Build the backbone described by the `MODEL.BACKBONE` mapping of model_config.yaml.

    Keys read: `TYPE` (required), `ARCH` (explicit sizes: required for `dinov3_custom`, optional
    overrides of embed_dim/depth/num_heads/mlp_ratio for `vit_hmr_512_384`), `FLASH_ATTN` (ViT
    only, official default False). `DROP_PATH_RATE`, `FROZEN_STAGES` and `PRETRAINED_WEIGHTS`
    only matter for training and are ignored.
    """
    if not isinstance(backbone_cfg, Mapping):
        raise ValueError(f"MODEL.BACKBONE must be a mapping, got {type(backbone_cfg).__name__}")
    backbone_type = backbone_cfg.get("TYPE")
    if backbone_type not in SUPPORTED_TYPES:
        raise ValueError(
            f"unsupported MODEL.BACKBONE.TYPE {backbone_type!r}; supported types: "
            f"{', '.join(SUPPORTED_TYPES)}"
        )
    arch = backbone_cfg.get("ARCH")
    if arch is not None and not isinstance(arch, Mapping):
        raise ValueError(f"MODEL.BACKBONE.ARCH must be a mapping, got {type(arch).__name__}")
    if backbone_type == "vit_hmr_512_384":
        return build_vit(arch, flash_attn=bool(backbone_cfg.get("FLASH_ATTN", False)))
    if backbone_cfg.get("FLASH_ATTN"):
        raise ValueError("MODEL.BACKBONE.FLASH_ATTN only applies to vit_hmr_512_384")
    return build_dinov3(backbone_type, arch)


def backbone_dtype(train_cfg: Mapping[str, Any] | None) -> torch.dtype:
    """The official `backbone_dtype`: fp32 unless `TRAIN.USE_FP16`; then fp16 when
    `FP16_TYPE` is "float16" (its default) and bf16 for any other value."""
    train_cfg = train_cfg or {}
    if not train_cfg.get("USE_FP16", False):
        return torch.float32
    return torch.float16 if train_cfg.get("FP16_TYPE", "float16") == "float16" else torch.bfloat16


def set_official_precision(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Convert a built backbone exactly as the official `convert_to_fp16` does (DINOv3: the
    whole encoder; ViT: Linear/Conv parameters and `pos_embed`, LayerNorm32 stays fp32).
    `torch.float32` undoes it. Returns the module; forward then runs in that dtype."""
    if not isinstance(module, (Dinov3Backbone, VitBackbone)):
        raise ValueError(f"not a backbone built by build_backbone: {type(module).__name__}")
    return module.set_official_precision(dtype)


def round_like_official(module: nn.Module, dtype: torch.dtype, chunk: int = 1 << 22) -> nn.Module:
    """Round, in place, the values `set_official_precision(module, dtype)` would cast, keeping
    their fp32 storage: the values equal loading into the converted backbone and converting
    back (one round-to-nearest each), without a second copy of the weights. Lets a loader build
    in fp32 and convert once, or not at all for `fp32`/`fast` (server/engine.py)."""
    if not isinstance(module, (Dinov3Backbone, VitBackbone)):
        raise ValueError(f"not a backbone built by build_backbone: {type(module).__name__}")
    check_float_dtype(dtype)
    if dtype == torch.float32:
        return module
    with torch.no_grad():
        for tensor in module.official_precision_tensors():
            if tensor.dtype != torch.float32:
                continue
            flat = tensor.view(-1) if tensor.is_contiguous() else None
            if flat is None:
                tensor.copy_(tensor.to(dtype))
                continue
            # Chunks keep the half-precision temporary small (no 2 GiB transient for DINOv3).
            for start in range(0, flat.numel(), chunk):
                part = flat[start:start + chunk]
                part.copy_(part.to(dtype))
    return module


__all__ = [
    "SUPPORTED_TYPES",
    "Dinov3Backbone",
    "VitBackbone",
    "backbone_dtype",
    "build_backbone",
    "round_like_official",
    "set_official_precision",
]
