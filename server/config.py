"""Reading `model_config.yaml` of an official SAM 3D Body checkpoint.

The official code reads the yaml through yacs with code-side defaults; we keep the file as a
plain nested dict (what `yaml.safe_load` gives, so nothing in it can execute code) and fill in
the defaults the official code would use for keys a config leaves out
(reference/sam3d-body.md §2.3).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from .errors import CHECKPOINT_INVALID, UNSUPPORTED_MODEL, ServerError

SUPPORTED_BACKBONES = ("dinov3_vith16plus", "dinov3_custom", "vit_hmr_512_384")

# Code-side defaults of the official implementation for keys a config may omit.
_DEFAULTS: dict[str, Any] = {
    "TRAIN": {"USE_FP16": False, "FP16_TYPE": "float16"},
    "MODEL": {
        "IMAGE_SIZE": [512, 512],
        "IMAGE_MEAN": [0.485, 0.456, 0.406],
        "IMAGE_STD": [0.229, 0.224, 0.225],
        "BACKBONE": {"DROP_PATH_RATE": 0.0, "FROZEN_STAGES": -1, "FLASH_ATTN": False},
        "DECODER": {
            "DO_INTERM_PREDS": True,
            "DO_HAND_DETECT_TOKENS": True,
            "DO_KEYPOINT3D_TOKENS": True,
            "CONDITION_TYPE": "cliff",
            "USE_INTRIN_CENTER": True,
        },
        "PROMPT_ENCODER": {"ENABLE": True, "MASK_EMBED_TYPE": "v2", "MASK_PROMPT": "v1"},
        "PERSON_HEAD": {"POSE_TYPE": "mhr", "CAMERA_TYPE": "perspective"},
        "MHR_HEAD": {"MLP_DEPTH": 1, "MLP_CHANNEL_DIV_FACTOR": 1},
        "CAMERA_HEAD": {"MLP_DEPTH": 1, "MLP_CHANNEL_DIV_FACTOR": 1, "DEFAULT_SCALE_FACTOR_HAND": 10},
    },
}

_REQUIRED_DECODER = ("DIM", "DEPTH", "HEADS", "MLP_DIM", "DIM_HEAD")


def _merge_defaults(cfg: dict[str, Any], defaults: dict[str, Any]) -> None:
    for key, value in defaults.items():
        if isinstance(value, dict):
            node = cfg.setdefault(key, {})
            if not isinstance(node, dict):
                raise ServerError(CHECKPOINT_INVALID, f"model_config.yaml: {key} must be a mapping")
            _merge_defaults(node, value)
        else:
            cfg.setdefault(key, copy.deepcopy(value))


def parse_config(text: str, source: str = "model_config.yaml") -> dict[str, Any]:
    """Parse and validate config text; returns the nested dict with defaults filled in."""
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ServerError(CHECKPOINT_INVALID, f"{source} is not valid YAML: {exc}") from exc
    if not isinstance(cfg, dict) or not isinstance(cfg.get("MODEL"), dict):
        raise ServerError(
            CHECKPOINT_INVALID,
            f"{source} has no MODEL section: it is not a SAM 3D Body model_config.yaml",
        )
    _merge_defaults(cfg, _DEFAULTS)
    model = cfg["MODEL"]
    btype = model["BACKBONE"].get("TYPE")
    if btype not in SUPPORTED_BACKBONES:
        raise ServerError(
            UNSUPPORTED_MODEL,
            f"{source}: backbone type {btype!r} is not supported; this build runs "
            f"{', '.join(SUPPORTED_BACKBONES)} (the facebook/sam-3d-body-dinov3 and "
            "facebook/sam-3d-body-vith releases)",
        )
    if btype == "dinov3_custom" and not isinstance(model["BACKBONE"].get("ARCH"), dict):
        raise ServerError(CHECKPOINT_INVALID, f"{source}: dinov3_custom needs a BACKBONE.ARCH block")
    missing = [k for k in _REQUIRED_DECODER if k not in model.get("DECODER", {})]
    if missing:
        raise ServerError(CHECKPOINT_INVALID, f"{source}: MODEL.DECODER lacks {', '.join(missing)}")
    if model["PERSON_HEAD"]["POSE_TYPE"] != "mhr":
        raise ServerError(UNSUPPORTED_MODEL, f"{source}: only POSE_TYPE mhr is supported")
    return cfg


def load_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ServerError(CHECKPOINT_INVALID, f"model_config.yaml not found at {path}") from exc
    return parse_config(text, source=str(path))

