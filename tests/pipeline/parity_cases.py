"""Loading helpers for the pipeline tests against ../shared/fixtures/parity (README there)."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import PARITY

CASES_DIR = PARITY / "cases"
CASES = sorted(p.name for p in CASES_DIR.iterdir()) if CASES_DIR.exists() else []
FULL_CASES = [c for c in CASES if CASES and json.loads((CASES_DIR / c / "case.json").read_text())
              .get("inference_type") == "full"]


def require_parity() -> None:
    if not CASES_DIR.exists():
        pytest.skip(f"{CASES_DIR} not present")


@functools.lru_cache(maxsize=None)
def case_json(case: str) -> dict:
    return json.loads((CASES_DIR / case / "case.json").read_text())


def case_path(case: str, rel: str) -> Path:
    return (CASES_DIR / case / rel).resolve()


@functools.lru_cache(maxsize=None)
def _read_rgb(path: str) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise FileNotFoundError(path)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    img.setflags(write=False)
    return img


def image(case: str) -> np.ndarray:
    return _read_rgb(str(case_path(case, case_json(case)["image"])))


def stored_png(case: str, name: str) -> np.ndarray | None:
    path = CASES_DIR / case / name
    return _read_rgb(str(path)) if path.exists() else None


@functools.lru_cache(maxsize=None)
def _npz(case: str, name: str) -> dict[str, np.ndarray]:
    with np.load(CASES_DIR / case / name) as data:
        return {k: data[k] for k in data.files}


def inputs(case: str) -> dict[str, np.ndarray]:
    return _npz(case, "inputs.npz")


def outputs(case: str) -> dict[str, np.ndarray]:
    return _npz(case, "outputs.npz")


def intermediates(case: str) -> dict[str, np.ndarray]:
    return _npz(case, "intermediates.npz")


def checkpoint_dir(case: str) -> Path:
    return case_path(case, case_json(case)["checkpoint"])


@functools.lru_cache(maxsize=None)
def state_dict_of_dir(directory: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(directory / "model.ckpt", map_location="cpu", weights_only=True)
    return ckpt.get("state_dict", ckpt)


def state_dict(case: str) -> dict[str, torch.Tensor]:
    return state_dict_of_dir(checkpoint_dir(case))


POSE_KEYS = ("pred_pose_raw", "pred_cam", "global_rot", "body_pose", "shape", "scale", "hand",
             "pred_keypoints_3d", "pred_keypoints_2d", "pred_keypoints_2d_cropped", "pred_keypoints_2d_depth",
             "pred_cam_t", "focal_length", "pred_joint_coords", "joint_global_rots", "mhr_model_params")


def pose_output(case: str, prefix: str) -> dict[str, torch.Tensor]:
    """A pass's pose dict from the stored tensors, e.g. prefix 'body.L2' or 'lhand.final'."""
    it = intermediates(case)
    return {k: torch.from_numpy(it[f"{prefix}.{k}"].copy()) for k in POSE_KEYS if f"{prefix}.{k}" in it}


def last_layer(case: str, pass_name: str) -> str:
    it = intermediates(case)
    layers = sorted({int(k.split(".")[1][1:]) for k in it if k.startswith(pass_name + ".L")
                     and k.split(".")[1][1:].isdigit()})
    return f"{pass_name}.L{layers[-1]}"


@functools.lru_cache(maxsize=None)
def _model(directory: Path):
    build = pytest.importorskip("server.models.build")
    import yaml

    cfg = yaml.safe_load((directory / "model_config.yaml").read_text())
    torch.manual_seed(0)
    model = build.build_sam3d_body(cfg, str(directory / "assets" / "mhr_model.pt"))
    missing = build.load_official_state_dict(model, state_dict_of_dir(directory))
    assert not missing, missing
    return model


def model_for(case: str):
    """Our SAM3DBody loaded with the case's official checkpoint (cached per checkpoint)."""
    require_parity()
    return _model(checkpoint_dir(case))
