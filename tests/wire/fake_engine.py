# SPDX-License-Identifier: GPL-3.0-or-later
"""TEST DOUBLE: a tiny deterministic numpy engine with the Engine interface
(docs/ARCHITECTURE.md), so the wire/service/client tests run without torch or weights.

It is not a model. Its outputs have the Result names, dtypes and shapes, filled with numbers
derived from the request so tests can check that the request arrived intact:
* ``image_sum`` (an extra key) = the exact sum of all image bytes,
* ``pred_cam_t[i]`` = mean R, G, B / 255 + i, ``bbox`` = the boxes,
* ``mask`` = the masks, ``cam_int`` from the intrinsics (or a default).

Behaviour switches (by image width, so a test chooses per request):
* width ``HANG_WIDTH`` waits until cancelled (at most ``HANG_LIMIT_S``), reporting progress;
* width ``FAIL_WIDTH`` raises a plain RuntimeError (an internal error);
* an empty boxes array raises ServerError(no_person).
Environment: ``SAM3D_FAKE_VERTICES`` (vertex count, default 64),
``SAM3D_FAKE_LOAD_ERROR`` (raise ServerError(checkpoint_missing) while loading).
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable

import numpy as np

from server.errors import CANCELLED, CHECKPOINT_MISSING, NO_PERSON, ServerError
from server.request import ReconstructRequest

HANG_WIDTH = 13
FAIL_WIDTH = 17
HANG_LIMIT_S = 60.0
JOINTS = 127


class FakeEngine:
    def __init__(self, vertices: int = 64, device: str = "cpu") -> None:
        self.vertices = vertices
        self.faces = np.stack([np.arange(vertices - 2), np.arange(1, vertices - 1),
                               np.arange(2, vertices)], axis=1).astype(np.int32)
        self.info = {"model": "fake/test-double", "variant": "fake", "device": device,
                     "dtype": "float32"}
        self.requests: list[ReconstructRequest] = []

    def rig_data(self) -> dict[str, Any]:
        v, k = self.vertices, 8
        weights = np.zeros((v, k), np.float32)
        weights[:, 0] = 1.0
        return {
            "joint_names": [f"joint_{i:03d}" for i in range(JOINTS)],
            "joint_parents": np.arange(-1, JOINTS - 1, dtype=np.int32),
            "bind_skel_state": np.tile(np.array([0, 0, 0, 0, 0, 0, 1, 1], np.float32),
                                       (JOINTS, 1)),
            "faces": self.faces,
            "texcoords": np.zeros((v, 2), np.float32),
            "texcoord_faces": self.faces,
            "skin_indices": np.zeros((v, k), np.int32),
            "skin_weights": weights,
            "template_vertices": np.linspace(0, 1, v * 3, dtype=np.float32).reshape(v, 3),
        }

    def reconstruct(self, request: ReconstructRequest,
                    progress: Callable[[float, str], None] = lambda f, s: None,
                    cancelled: Callable[[], bool] = lambda: False) -> dict[str, np.ndarray]:
        image = request.image
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        height, width = image.shape[:2]
        progress(0.1, "fake: started")
        if width == HANG_WIDTH:
            deadline = time.monotonic() + HANG_LIMIT_S
            step = 0
            while not cancelled():
                if time.monotonic() > deadline:
                    raise RuntimeError("fake engine: hang limit reached without a cancel")
                time.sleep(0.01)
                step += 1
                if step % 20 == 0:
                    progress(0.5, "fake: waiting to be cancelled")
            raise ServerError(CANCELLED, "cancelled")
        if width == FAIL_WIDTH:
            raise RuntimeError("fake engine failure")
        boxes = request.boxes
        if boxes is not None and len(boxes) == 0:
            raise ServerError(NO_PERSON, "No person was found in the image.")
        if boxes is None:
            boxes = np.array([[0, 0, width, height]], np.float32)
        n, v = len(boxes), self.vertices
        mean = image.reshape(-1, 3).mean(axis=0) / 255.0
        total = int(image.sum(dtype=np.uint64))
        if request.intrinsics is not None:
            fx, fy, cx, cy = request.intrinsics
            source = "user"
        else:
            fx = fy = float(max(width, height))
            cx, cy = width / 2, height / 2
            source = "default"
        people = np.arange(n, dtype=np.float32)[:, None]

        def zeros(*shape: int) -> np.ndarray:
            return np.zeros((n, *shape), np.float32)

        result = {
            "pred_vertices": zeros(v, 3) + people[:, :, None],
            "pred_keypoints_3d": zeros(70, 3), "pred_keypoints_2d": zeros(70, 2),
            "pred_cam_t": (mean[None, :] + people).astype(np.float32),
            "focal_length": np.full(n, fx, np.float32),
            "image_sum": np.array(total, np.int64),
            "pred_joint_coords": zeros(JOINTS, 3),
            "pred_global_rots": np.broadcast_to(np.eye(3, dtype=np.float32),
                                                (n, JOINTS, 3, 3)).copy(),
            "global_rot": zeros(3), "body_pose_params": zeros(133),
            "hand_pose_params": zeros(108), "shape_params": zeros(45),
            "scale_params": zeros(28), "expr_params": zeros(72),
            "mhr_model_params": zeros(204), "pred_pose_raw": zeros(266),
            "bbox": np.asarray(boxes, np.float32),
            "faces": self.faces,
            "cam_int": np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float32),
            "image_size": np.array([width, height], np.int32),
            "intrinsics_source": np.array(source),
            "mode": np.array(request.mode),
            "mhr_skel_state": zeros(JOINTS, 8), "mhr_vertices": zeros(v, 3),
            "mhr_rest_vertices": zeros(v, 3), "mhr_rest_skel_state": zeros(JOINTS, 8),
        }
        if request.mode == "full":
            result["lhand_bbox"] = zeros(4)
            result["rhand_bbox"] = zeros(4)
        if request.masks is not None:
            result["mask"] = np.stack(request.masks)[..., None].astype(np.uint8)
        if request.prompts:
            result["prompts_seen"] = np.asarray(request.prompts, np.float32)
        progress(0.9, "fake: done")
        return result


def make_engine(checkpoint: str | None = None, repo: str | None = None, mhr: str | None = None,
                device: str = "auto") -> FakeEngine:
    if os.environ.get("SAM3D_FAKE_LOAD_ERROR"):
        raise ServerError(CHECKPOINT_MISSING, "fake engine: no checkpoint (as asked by the test)")
    return FakeEngine(int(os.environ.get("SAM3D_FAKE_VERTICES", "64")),
                      "cpu" if device == "auto" else device)
