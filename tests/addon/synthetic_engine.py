# SPDX-License-Identifier: GPL-3.0-or-later
"""TEST DOUBLE: a tiny, self-consistent rig and result with the real array contract.

Not a model. A 127-joint chain (1 cm apart, up +Y) with three vertices per joint rigidly
skinned to it; the "reconstruction" turns the whole body by `TURN_DEG` about +Y around the root,
so the posed vertices are exactly the skinned rest vertices (no correctives needed) and a test
can check the built scene against them.

Also usable as a server engine: ``python -m server serve --engine
tests.addon.synthetic_engine:make_engine`` (the server imports the module by name and needs
`make_engine` and `ReconstructRequest`).

Behaviour switch (by image width): width ``FAIL_WIDTH`` raises ServerError(no_person).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from addon.rig.naming import MHR_JOINT_NAMES, MHR_JOINT_PARENTS
from server.request import ReconstructRequest

JOINTS = 127
TURN_DEG = 30.0
CAM_T = (0.1, -0.2, 4.0)
FOCAL = 500.0
FAIL_WIDTH = 7


def _turn() -> np.ndarray:
    a = math.radians(TURN_DEG)
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def _quat_y(deg: float) -> np.ndarray:
    half = math.radians(deg) / 2
    return np.array([0.0, math.sin(half), 0.0, math.cos(half)])  # x, y, z, w


def rig_data() -> dict[str, Any]:
    joints = np.zeros((JOINTS, 3))
    joints[:, 1] = 90.0 + np.arange(JOINTS)
    bind = np.zeros((JOINTS, 8), np.float32)
    bind[:, :3] = joints
    bind[:, 6] = 1.0
    bind[:, 7] = 1.0
    offsets = np.array([[2.0, 0, 0], [0, 0, 2.0], [-2.0, 0, 0]])
    vertices = (joints[:, None, :] + offsets[None]).reshape(-1, 3)
    n_v = len(vertices)
    faces = np.arange(n_v, dtype=np.int32).reshape(-1, 3)
    skin_indices = np.zeros((n_v, 8), np.int32)
    skin_indices[:, 0] = np.repeat(np.arange(JOINTS), 3)
    skin_weights = np.zeros((n_v, 8), np.float32)
    skin_weights[:, 0] = 1.0
    return {
        # MHR's real names and hierarchy (the builder checks them); the geometry stays a chain.
        "joint_names": np.asarray(MHR_JOINT_NAMES),
        "joint_parents": np.asarray(MHR_JOINT_PARENTS, dtype=np.int32),
        "bind_skel_state": bind,
        "faces": faces,
        "texcoords": np.zeros((n_v, 2), np.float32),
        "texcoord_faces": faces,
        "skin_indices": skin_indices,
        "skin_weights": skin_weights,
        "template_vertices": vertices.astype(np.float32),
    }


def posed_vertices_cm() -> np.ndarray:
    """The result's `mhr_vertices` (MHR model space, cm)."""
    rig = rig_data()
    root = rig["bind_skel_state"][0, :3].astype(np.float64)
    v = rig["template_vertices"].astype(np.float64)
    return (v - root) @ _turn().T + root


def result(width: int = 64, height: int = 48, mode: str = "full") -> dict[str, np.ndarray]:
    rig = rig_data()
    bind = rig["bind_skel_state"].astype(np.float64)
    root = bind[0, :3]
    skel = bind.copy()
    skel[:, :3] = (bind[:, :3] - root) @ _turn().T + root
    skel[:, 3:7] = _quat_y(TURN_DEG)
    n_v = rig["template_vertices"].shape[0]
    out: dict[str, np.ndarray] = {
        "pred_cam_t": np.asarray([CAM_T], np.float32),
        "focal_length": np.asarray([FOCAL], np.float32),
        "bbox": np.asarray([[0, 0, width, height]], np.float32),
        "pred_vertices": np.zeros((1, n_v, 3), np.float32),
        "mhr_skel_state": skel[None].astype(np.float32),
        "mhr_rest_skel_state": bind[None].astype(np.float32),
        "mhr_vertices": posed_vertices_cm()[None].astype(np.float32),
        "mhr_rest_vertices": rig["template_vertices"][None].copy(),
        "faces": rig["faces"],
        "cam_int": np.array([[FOCAL, 0, width / 2], [0, FOCAL, height / 2], [0, 0, 1]],
                            np.float32),
        "image_size": np.array([width, height], np.int32),
        "intrinsics_source": np.array("default"),
        "mode": np.array(mode),
    }
    return out


# --- server engine interface ------------------------------------------------------------------


class SyntheticEngine:
    info = {"model": "synthetic/test-double", "variant": "synthetic", "device": "cpu",
            "dtype": "float32"}

    def rig_data(self) -> dict[str, Any]:
        return rig_data()

    def reconstruct(self, request: ReconstructRequest,
                    progress: Callable[[float, str], None] = lambda f, s: None,
                    cancelled: Callable[[], bool] = lambda: False) -> dict[str, np.ndarray]:
        from server.errors import NO_PERSON, ServerError

        height, width = request.image.shape[:2]
        progress(0.5, "synthetic: halfway")
        if width == FAIL_WIDTH:
            raise ServerError(NO_PERSON, "No person was found in the image.")
        return result(width, height, request.mode)


def make_engine(checkpoint: str | None = None, repo: str | None = None, mhr: str | None = None,
                device: str = "auto") -> SyntheticEngine:
    return SyntheticEngine()
