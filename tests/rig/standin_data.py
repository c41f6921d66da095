"""Test data: RigData and Result arrays from the MHR stand-in + the real 3DB sample parameters.

The stand-in is NOT Meta's MHR (fixtures/mhr-standin/README.md); it has the real interface and
skeleton, which is what the rig math needs. The samples carry no intrinsics, so the focal length
and principal point below were solved from their own 2D/3D keypoints (max residual 6e-5 px).
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

SAMPLES = ("img_subj00", "img_subj01")
SAMPLE_FOCAL = 2535.2662          # px, from pred_keypoints_2d vs pred_keypoints_3d + pred_cam_t
SAMPLE_IMAGE_SIZE = (1920, 890)   # (W, H): principal point (960, 445) at the centre
PERSON_KEYS = ("pred_vertices", "pred_keypoints_3d", "pred_keypoints_2d", "pred_cam_t",
               "pred_joint_coords", "global_rot", "body_pose_params", "hand_pose_params",
               "shape_params", "scale_params", "expr_params", "mhr_model_params", "bbox")


@functools.lru_cache(maxsize=4)
def load_module(model_path: str):
    import torch
    return torch.jit.load(model_path, map_location="cpu").eval()


@functools.lru_cache(maxsize=4)
def standin_rig(model_path: str) -> dict:
    from server.mhr.rig_data import rig_data_from_mhr
    return rig_data_from_mhr(load_module(model_path))


def sample(samples_dir: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(Path(samples_dir) / f"{name}.npz") as d:
        return {k: d[k] for k in d.files}


def standin_result(model_path: str, samples_dir: Path, n_persons: int = 1,
                   cam_int: np.ndarray | None = None,
                   image_size: tuple[int, int] = SAMPLE_IMAGE_SIZE) -> dict[str, np.ndarray]:
    """A Result mapping for ``n_persons`` (cycling through the two samples, shifted sideways so
    several persons do not overlap)."""
    from server.mhr.rig_data import person_rig_state
    persons = []
    for i in range(n_persons):
        s = sample(samples_dir, SAMPLES[i % len(SAMPLES)])
        p = {k: s[k].astype(np.float32) for k in PERSON_KEYS}
        p["pred_cam_t"] = p["pred_cam_t"] + np.float32(0.9 * (i // len(SAMPLES))) * np.array(
            [1, 0, 0], np.float32)
        p["focal_length"] = np.float32(SAMPLE_FOCAL)
        persons.append(p)
    out = {k: np.stack([p[k] for p in persons]) for k in persons[0]}
    state = person_rig_state(load_module(model_path), out["mhr_model_params"],
                             out["shape_params"], out["expr_params"])
    out.update(state)
    if out["pred_vertices"].shape[1] != state["mhr_vertices"].shape[1]:
        del out["pred_vertices"]  # the real LOD1 samples on a smaller stand-in mesh
    if cam_int is None:
        w, h = image_size
        cam_int = np.array([[SAMPLE_FOCAL, 0, w / 2], [0, SAMPLE_FOCAL, h / 2], [0, 0, 1]])
    out["cam_int"] = np.asarray(cam_int, np.float32)
    out["image_size"] = np.asarray(image_size, np.int32)
    out["faces"] = standin_rig(model_path)["faces"]
    out["intrinsics_source"] = np.asarray("user")
    out["mode"] = np.asarray("full")
    return out
