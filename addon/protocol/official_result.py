"""Results that hold only Meta's official output names (Meta's demo, other 3DB tools).

Such a file has `pred_vertices`, `pred_cam_t`, `mhr_model_params`, `shape_params`,
`expr_params`, maybe `faces`, `cam_int`, `focal_length`..., per person with or without a leading
person axis, but not our self-consistent skeleton (`mhr_skel_state`) or rest mesh
(`mhr_rest_vertices`). Those are computed from the parameters by MHR's forward (torch, so the
headless CLI's environment), which needs MHR's TorchScript file. numpy + stdlib here.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .results import PERSON_ARRAYS

OUR_SKELETON = ("mhr_skel_state", "mhr_rest_vertices")
NEEDED_FOR_SKELETON = ("mhr_model_params", "shape_params")
MHR_FLAG_HINT = ("add --mhr path/to/mhr_model.pt (or --mhr CHECKPOINT_DIR, the folder holding "
                 "assets/mhr_model.pt)")


def is_official_only(arrays: Mapping[str, Any]) -> bool:
    """True when the file lacks our skeleton arrays (they must be computed from the params)."""
    return any(name not in arrays for name in OUR_SKELETON)


def with_person_axis(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """One person saved without the leading axis (a single official output dict) -> N = 1."""
    out = {k: np.asarray(v) for k, v in arrays.items()}
    cam_t = out.get("pred_cam_t")
    if cam_t is not None and cam_t.ndim == 1:
        for name, (shape, _) in PERSON_ARRAYS.items():
            if name in out and out[name].ndim == len(shape):
                out[name] = out[name][None]
    return out


def camera_arrays(arrays: dict[str, np.ndarray], image_size: tuple[int, int] | None) -> dict[str, np.ndarray]:
    """Fill `image_size` (from the photo when given) and `cam_int` (3DB's default camera:
    focal_length, principal point at the image centre) where the file has none."""
    out = dict(arrays)
    if "image_size" not in out and image_size is not None:
        out["image_size"] = np.asarray(image_size, dtype=np.int64)
    if "image_size" not in out and "cam_int" in out:
        # Meta's outputs carry no image size; its default camera has the principal point at the
        # image centre, so the size is twice that point (pass --image where it is not).
        k = np.asarray(out["cam_int"], dtype=np.float64).reshape(3, 3)
        out["image_size"] = np.rint(2.0 * k[:2, 2]).astype(np.int64)
    if "cam_int" not in out and "focal_length" in out and "image_size" in out:
        f = float(np.asarray(out["focal_length"]).reshape(-1)[0])
        w, h = (float(v) for v in np.asarray(out["image_size"]).reshape(-1)[:2])
        out["cam_int"] = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], dtype=np.float32)
    missing = [name for name in ("cam_int", "image_size") if name not in out]
    if missing:
        raise ValueError(
            f"the result file has no {' or '.join(missing)}: it cannot place the photo camera. "
            "Pass the photo with --image (its size, and with `focal_length` in the file the "
            "default camera), or save cam_int (3x3) and image_size (W, H) with the result")
    return out


def missing_for_skeleton(arrays: Mapping[str, Any]) -> list[str]:
    return [name for name in NEEDED_FOR_SKELETON + ("pred_cam_t",) if name not in arrays]


def complete_skeleton(arrays: dict[str, np.ndarray], person_rig_state: Any, module: Any) -> dict[str, np.ndarray]:
    """Add the mhr_* arrays of docs/ARCHITECTURE.md computed by `person_rig_state(module, ...)`."""
    missing = missing_for_skeleton(arrays)
    if missing:
        raise ValueError(f"the result file has no {', '.join(missing)}: the skeleton cannot be "
                         "computed from it")
    expr = arrays.get("expr_params")
    states = person_rig_state(module, arrays["mhr_model_params"], arrays["shape_params"], expr)
    out = dict(arrays)
    for key, value in states.items():
        out.setdefault(key, value)
    return out
