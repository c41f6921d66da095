"""Build ``SAM3DBody`` from a ``model_config.yaml`` mapping and load official state dicts."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from .sam3d_body import SAM3DBody

# Switches the official code reads whose other values it (or we) does not implement.
_REQUIRED_VALUES = {
    ("DECODER", "TYPE"): "sam",
    ("DECODER", "ENABLE_TWOWAY"): False,
    ("DECODER", "FFN_TYPE"): "origin",
    ("DECODER", "DO_KEYPOINT_TOKENS"): True,
    ("DECODER", "DO_INTERM_PREDS"): True,
    ("PROMPT_ENCODER", "ENABLE"): True,
    ("PROMPT_ENCODER", "PROMPT_KEYPOINTS"): "mhr70",
    ("PERSON_HEAD", "POSE_TYPE"): "mhr",
    ("PERSON_HEAD", "CAMERA_TYPE"): "perspective",
}
_REQUIRED_NUMBERS = ("DIM", "DEPTH", "HEADS", "DIM_HEAD", "MLP_DIM")

# Tensors of the TorchScript MHR registered under the heads; they come from mhr_model.pt.
MHR_PREFIXES = ("head_pose.mhr.", "head_pose_hand.mhr.")


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Raise ValueError with a readable message if ``cfg`` is not a config this model implements."""
    if not isinstance(cfg, Mapping) or not isinstance(cfg.get("MODEL"), Mapping):
        raise ValueError("model config must be a mapping with a MODEL section (model_config.yaml)")
    m = cfg["MODEL"]
    for section in ("BACKBONE", "DECODER", "PROMPT_ENCODER", "PERSON_HEAD"):
        if not isinstance(m.get(section), Mapping):
            raise ValueError(f"model config lacks MODEL.{section}")
    for key in ("IMAGE_SIZE", "IMAGE_MEAN", "IMAGE_STD"):
        if key not in m:
            raise ValueError(f"model config lacks MODEL.{key}")
    size = list(m["IMAGE_SIZE"])
    if len(size) != 2 or size[0] != size[1]:
        raise ValueError(f"MODEL.IMAGE_SIZE must be a square [S, S], got {size}")
    for (section, key), expected in _REQUIRED_VALUES.items():
        got = m[section].get(key)
        if (bool(got) if isinstance(expected, bool) else got) != expected:
            raise ValueError(f"MODEL.{section}.{key} = {got!r} is not supported (expected {expected!r})")
    dec = m["DECODER"]
    for key in _REQUIRED_NUMBERS:
        if not isinstance(dec.get(key), int) or dec[key] <= 0:
            raise ValueError(f"MODEL.DECODER.{key} must be a positive integer, got {dec.get(key)!r}")
    if float(dec.get("LAYER_SCALE_INIT", 0.0) or 0.0) != 0.0:
        raise ValueError("MODEL.DECODER.LAYER_SCALE_INIT must be 0 (the official code crashes otherwise)")
    if not dec.get("KEYPOINT_TOKEN_UPDATE"):
        raise ValueError("MODEL.DECODER.KEYPOINT_TOKEN_UPDATE must be set (v2) as in the released configs")
    if dec.get("CONDITION_TYPE", "cliff") not in ("cliff", "none"):
        raise ValueError(f"MODEL.DECODER.CONDITION_TYPE {dec.get('CONDITION_TYPE')!r} is not supported")
    pe = m["PROMPT_ENCODER"]
    if pe.get("MASK_EMBED_TYPE") not in (None, "v1", "v2"):
        raise ValueError(f"MODEL.PROMPT_ENCODER.MASK_EMBED_TYPE {pe.get('MASK_EMBED_TYPE')!r} is not supported")
    if pe.get("MASK_EMBED_TYPE") is not None and pe.get("MASK_PROMPT", "v1") != "v1":
        raise ValueError(f"MODEL.PROMPT_ENCODER.MASK_PROMPT {pe.get('MASK_PROMPT')!r} is not supported")


def build_sam3d_body(cfg: Mapping[str, Any], mhr_path: str | None) -> SAM3DBody:
    """``cfg`` = yaml.safe_load(model_config.yaml); ``mhr_path`` = assets/mhr_model.pt (or None
    to use MODEL.MHR_HEAD.MHR_MODEL_PATH). Returns the model (random weights, fp16 backbone when
    TRAIN.USE_FP16), in eval mode on the CPU; load weights with ``load_official_state_dict``."""
    validate_config(cfg)
    return SAM3DBody(cfg, mhr_path).eval()


def load_official_state_dict(model: SAM3DBody, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Load an official checkpoint ``state_dict`` non-strictly, as the official loader does.

    Returns the model keys the checkpoint lacks, excluding ``head_pose(_hand).mhr.*`` (those come
    from mhr_model.pt). Raises ValueError on unexpected keys or shape mismatches. Values are cast
    into the model's dtypes (so the fp16 backbone gets fp16 weights).
    """
    own = model.state_dict()
    unexpected = sorted(k for k in state_dict if k not in own)
    if unexpected:
        raise ValueError(f"checkpoint has {len(unexpected)} keys this model does not: {unexpected[:10]}")
    bad = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if tuple(v.shape) != tuple(own[k].shape)
    ]
    if bad:
        raise ValueError("checkpoint shapes do not match the model: " + "; ".join(bad[:10]))
    model.load_state_dict(dict(state_dict), strict=False)
    return sorted(k for k in own if k not in state_dict and not k.startswith(MHR_PREFIXES))
