"""What an armature built from a result remembers for Refine, as custom properties saved with
the .blend (photo, 2D keypoints, box, intrinsics, mode, rest skeleton)."""
from __future__ import annotations

from typing import Any, cast

# Custom properties apply_result's armatures get here, for Refine (saved with the .blend).
PROP_IMAGE = "sam3d_image"
PROP_KEYPOINTS = "sam3d_keypoints_2d"   # 70*2 floats, image pixels
PROP_BBOX = "sam3d_bbox"                # x1, y1, x2, y2
PROP_CAM_INT = "sam3d_cam_int"          # fx, fy, cx, cy
PROP_IMAGE_SIZE = "sam3d_image_size"    # W, H
PROP_MODE = "sam3d_mode"
PROP_REST_STATE = "sam3d_rest_skel_state"  # 127*8 floats: the person's zero-pose skeleton (cm)



def has_prop(obj: Any, key: str) -> bool:
    """Custom-property lookup (the API stubs do not model ID custom properties)."""
    return obj is not None and key in cast(Any, obj)


def get_prop(obj: Any, key: str, default: Any = None) -> Any:
    return cast(Any, obj).get(key, default)


def tag_armatures(created: list[Any], result: dict[str, Any], image_path: str | None) -> None:
    """Remember what Refine needs on each armature (photo, 2D keypoints, box, intrinsics)."""
    import numpy as np

    arms = [obj for obj in created if getattr(obj, "type", "") == "ARMATURE"]
    kp = np.asarray(result.get("pred_keypoints_2d", np.zeros((0, 70, 2))), dtype=np.float64)
    boxes = np.asarray(result.get("bbox", np.zeros((0, 4))), dtype=np.float64)
    cam_int = np.asarray(result.get("cam_int", np.eye(3)), dtype=np.float64)
    size = np.asarray(result.get("image_size", (0, 0))).reshape(-1)
    mode = str(np.asarray(result.get("mode", "body")))
    rest_states = result.get("mhr_rest_skel_state")
    for obj in arms:
        i = int(obj.get("sam3d_person", arms.index(obj)))
        if i >= kp.shape[0]:
            continue
        obj[PROP_IMAGE] = image_path or ""
        obj[PROP_KEYPOINTS] = kp[i].reshape(-1).tolist()
        if i < boxes.shape[0]:
            obj[PROP_BBOX] = boxes[i].tolist()
        obj[PROP_CAM_INT] = [cam_int[0, 0], cam_int[1, 1], cam_int[0, 2], cam_int[1, 2]]
        obj[PROP_IMAGE_SIZE] = [int(size[0]), int(size[1])] if size.size == 2 else [0, 0]
        obj[PROP_MODE] = mode
        if rest_states is not None and i < len(rest_states):
            obj[PROP_REST_STATE] = np.asarray(rest_states[i], dtype=np.float64).reshape(-1).tolist()
