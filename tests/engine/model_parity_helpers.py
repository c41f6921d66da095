"""Shared loading / comparison helpers for the SAM3DBody parity tests (tests/engine/test_model_*).

Fixtures: ../shared/fixtures/parity (README there). Each case's official intermediates are fed
stage by stage into our modules; each array is held to the tolerance of its quantity class
(tests/tolerances.py, measured in docs/TOLERANCES.md), never below 10x the official run-to-run
difference of the same array.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests import tolerances as tol
from tests.conftest import PARITY

CASES_DIR = PARITY / "cases"
CASES = sorted(p.name for p in CASES_DIR.iterdir()) if CASES_DIR.exists() else []


@functools.lru_cache(maxsize=None)
def case_info(case: str) -> dict:
    info = json.loads((CASES_DIR / case / "case.json").read_text())
    info["checkpoint_dir"] = (CASES_DIR / case / info["checkpoint"]).resolve()
    info["image_path"] = (CASES_DIR / case / info["image"]).resolve()
    return info


@functools.lru_cache(maxsize=None)
def intermediates(case: str) -> dict[str, np.ndarray]:
    with np.load(CASES_DIR / case / "intermediates.npz") as data:
        return {k: data[k] for k in data.files}


def passes(case: str) -> list[str]:
    return [p for p in ("body", "lhand", "rhand", "kprompt", "uprompt") if f"{p}.bbox" in intermediates(case) or f"{p}.prompt_points" in intermediates(case)]


def decoder_passes(case: str) -> list[str]:
    return [p for p in passes(case) if f"{p}.L0.tokens_in" in intermediates(case)]


def branch_of(pass_name: str) -> str:
    return "hand" if pass_name in ("lhand", "rhand") else "body"


def batch_pass_of(pass_name: str) -> str:
    """Prompted body passes reuse the body pass's batch."""
    return "body" if pass_name in ("kprompt", "uprompt") else pass_name


def num_layers(case: str, pass_name: str) -> int:
    inter = intermediates(case)
    n = 0
    while f"{pass_name}.L{n}.pred_cam" in inter:
        n += 1
    return n


def r2r(case: str, key: str) -> float:
    diffs = case_info(case)["run_to_run_max_abs_diff_threads_2_vs_1"]["intermediates"]
    return float(diffs.get(key, 0.0))


FEATURE_KEYS = frozenset({"backbone", "raycond", "ray_ds", "mask_embed", "image_pe", "prompt_embed"})


def is_fp16(case: str) -> bool:
    return bool(config(case)["TRAIN"].get("USE_FP16", False))


def compare(case: str, key: str, got, want=None) -> float:
    """Assert `got` equals the intermediate `key` (or `want`) within the tolerance of its class
    (tests/tolerances.py); returns the error."""
    if want is None:
        want = intermediates(case)[key]
    got = got.detach().cpu().double().numpy() if isinstance(got, torch.Tensor) else np.asarray(got, np.float64)
    want = want.detach().cpu().double().numpy() if isinstance(want, torch.Tensor) else np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{case} {key}: shape {got.shape} != {want.shape}"
    what = f"{case} {key}"
    name = key.rsplit(".", 1)[-1]
    fp16 = is_fp16(case)
    if name == "backbone" and fp16:
        return tol.check_fp16(what, got, want)
    if name in FEATURE_KEYS:
        return tol.check_features(what, got, want, run_to_run=r2r(case, key), fp16=fp16)
    cls, limit = tol.for_key(key, fp16=fp16)
    return tol.check(what, got, want, limit, cls, run_to_run=r2r(case, key))


def t(case: str, key: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(intermediates(case)[key]))


def config(case: str) -> dict:
    return yaml.safe_load((case_info(case)["checkpoint_dir"] / "model_config.yaml").read_text())


@functools.lru_cache(maxsize=None)
def checkpoint_state(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint_dir / "model.ckpt", map_location="cpu", weights_only=True)["state_dict"]


@functools.lru_cache(maxsize=None)
def _model_for(checkpoint_dir: Path):
    from server.models.build import build_sam3d_body, load_official_state_dict

    cfg = yaml.safe_load((checkpoint_dir / "model_config.yaml").read_text())
    torch.manual_seed(0)
    model = build_sam3d_body(cfg, str(checkpoint_dir / "assets" / "mhr_model.pt"))
    missing = load_official_state_dict(model, checkpoint_state(checkpoint_dir))
    return model, tuple(missing)


def model_for(case: str):
    """(model loaded with the case's checkpoint, missing keys other than head_pose*.mhr.*)."""
    try:
        return _model_for(case_info(case)["checkpoint_dir"])
    except ImportError as exc:  # a part written by another engineer is not there yet
        pytest.skip(f"model cannot be built yet: {exc}")


def batch_for(case: str, pass_name: str) -> dict:
    """The batch dict of a pass rebuilt from the stored crop geometry (img is a zero placeholder:
    stage tests never run the backbone on it)."""
    inter = intermediates(case)
    p = batch_pass_of(pass_name)
    batch = {k: t(case, f"{p}.{k}") for k in ("bbox", "bbox_center", "bbox_scale", "affine_trans", "ori_img_size", "img_size", "mask_score", "cam_int")}
    n = batch["bbox"].shape[1]
    if p == "lhand":
        # The official run_inference mirrors the left-hand batch's bbox_center back in place after
        # the pass, and the harness stored that mutated dict: undo it to get what the pass saw.
        centre = batch["bbox_center"].clone()
        centre[..., 0] = batch["ori_img_size"][..., 0] - centre[..., 0] - 1
        batch["bbox_center"] = centre
    batch["img"] = torch.zeros((1, n, 3, 512, 512), dtype=torch.float32)
    batch["person_valid"] = torch.ones((1, n))
    masks = [CASES_DIR / case / f"{p}_mask_crop_u8_p{i}.png" for i in range(n)]
    if all(m.exists() for m in masks):
        import cv2

        batch["mask"] = torch.stack([torch.from_numpy(cv2.imread(str(m), cv2.IMREAD_UNCHANGED).astype(np.float32)) for m in masks])[None, :, None]
    else:
        batch["mask"] = torch.zeros((1, n, 1, 512, 512), dtype=torch.float32)
    assert p + ".bbox" in inter
    return batch


# What each shareable body-pass intermediate depends on (besides the checkpoint).
_DEPENDS_ON = {
    "body.image_pe": (),
    "body.backbone": ("image_path", "boxes_xyxy"),
    "body.ray_ds": ("image_path", "boxes_xyxy", "cam_int"),
    "body.raycond": ("image_path", "boxes_xyxy", "cam_int", "masks"),
}


def shared(case: str, key: str) -> torch.Tensor | None:
    """An intermediate of the case, or the identical one stored with a twin case (the README's
    "not stored because identical to another case with the same checkpoint, image and box").
    Only body-pass inputs are shared (hand passes depend on the body pass output)."""
    if key in intermediates(case):
        return t(case, key)
    if key not in _DEPENDS_ON:
        return None
    info = case_info(case)
    fields = ("checkpoint_dir",) + _DEPENDS_ON[key]
    for other in CASES:
        o = case_info(other)
        if all(o[f] == info[f] for f in fields) and key in intermediates(other):
            return t(other, key)
    return None


def crop_paths(case: str, pass_name: str) -> list[Path] | None:
    """The stored uint8 crops of a pass (body crops may be stored with a twin case: a crop only
    depends on the image and the boxes)."""
    n = intermediates(case)[f"{pass_name}.bbox"].shape[1]
    candidates = [case]
    if pass_name == "body":
        info = case_info(case)
        candidates += [o for o in CASES if (case_info(o)["image_path"], case_info(o)["boxes_xyxy"]) == (info["image_path"], info["boxes_xyxy"])]
    for other in candidates:
        paths = [CASES_DIR / other / f"{pass_name}_crop_u8_p{i}.png" for i in range(n)]
        if all(p.exists() for p in paths):
            return paths
    return None


def backbone_features(case: str, pass_name: str) -> torch.Tensor | None:
    return shared(case, f"{pass_name}.backbone")


def layer_pose(case: str, pass_name: str, layer: int) -> dict[str, torch.Tensor]:
    prefix = f"{pass_name}.L{layer}."
    return {k[len(prefix):]: t(case, k) for k in intermediates(case) if k.startswith(prefix) and "tokens" not in k and "augment" not in k}
