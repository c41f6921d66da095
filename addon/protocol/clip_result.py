"""Clip results: a video reconstruction as rows of person-frames (numpy + stdlib only).

One row per person per processed frame, so a clip with people entering and leaving needs no
ragged arrays: ``frame[i]`` is the row's source frame number and ``track[i]`` the person's
identity across frames. Per-track arrays (``track_*``) hold what a track shares on every frame:
the locked body shape (``track_shape_params``, ``track_scales``) and the rest skeleton / mesh it
gives. Per-frame vertices are not stored (a rig plus per-frame skeleton states rebuilds them;
a 300-frame clip stays a few MB instead of 200 MB).

The server writes it (server/video/clip.py, ``python -m server reconstruct CLIP --out X.npz``);
the add-on reads it (addon/scene/animation.py, ``python -m addon.cli --from-result X.npz``).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

KIND = "clip"
# Row arrays: name -> shape after the row axis.
ROW_ARRAYS: dict[str, tuple[int, ...]] = {
    "frame": (),
    "track": (),
    "pred_cam_t": (3,),
    "mhr_skel_state": (127, 8),
    "mhr_model_params": (204,),
    "shape_params": (45,),
    "expr_params": (72,),
    "pred_keypoints_2d": (70, 2),
    "pred_keypoints_3d": (70, 3),
    "bbox": (4,),
    "focal_length": (),
}
REQUIRED_ROWS = ("frame", "track", "pred_cam_t", "mhr_skel_state")
# Per-track arrays: name -> shape after the track axis ("V": the mesh's vertex count).
TRACK_ARRAYS: dict[str, tuple[Any, ...]] = {
    "track_ids": (),
    "track_shape_params": (45,),
    "track_scales": (68,),
    "track_rest_vertices": ("V", 3),
    "track_rest_skel_state": (127, 8),
}
REQUIRED_SHARED = ("cam_int", "image_size", "fps", "frames")
# Optional: the pose correctives as K shape keys per track (server/video/correctives.py), all or
# none of these. Row r's offsets = corrective_weights[r, :count] @ basis[track, :count] (cm).
CORRECTIVE_ARRAYS = ("corrective_weights", "track_corrective_basis", "track_corrective_count",
                     "track_corrective_error_cm")


def is_clip(arrays: Mapping[str, Any]) -> bool:
    """Whether a loaded npz (or mapping) is a clip result rather than a photo result."""
    kind = arrays.get("kind")
    return kind is not None and str(np.asarray(kind)) == KIND


def check_clip(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Validated copy of a clip result; ValueError names the offending array."""
    out = {k: np.asarray(v) for k, v in arrays.items()}
    if not is_clip(out):
        raise ValueError("not a clip result (no kind='clip'); a photo result goes through Result")
    missing = [k for k in (*REQUIRED_SHARED, *REQUIRED_ROWS, *TRACK_ARRAYS) if k not in out]
    if missing:
        raise ValueError(f"clip result lacks {missing}")
    rows = out["frame"].shape[0] if out["frame"].ndim == 1 else -1
    if rows < 1:
        raise ValueError(f"clip result 'frame' must be a non-empty 1-D array, got shape {out['frame'].shape}")
    for name, tail in ROW_ARRAYS.items():
        if name in out and out[name].shape != (rows, *tail):
            raise ValueError(f"clip result {name!r} has shape {out[name].shape}, expected {(rows, *tail)}")
    tracks = out["track_ids"].shape[0] if out["track_ids"].ndim == 1 else -1
    n_vertices = out["track_rest_vertices"].shape[1] if out["track_rest_vertices"].ndim == 3 else -1
    for name, dims in TRACK_ARRAYS.items():
        want = (tracks, *(n_vertices if d == "V" else d for d in dims))
        if out[name].shape != want:
            raise ValueError(f"clip result {name!r} has shape {out[name].shape}, expected {want}")
    for name in ("frame", "track", "track_ids", "frames"):
        if not np.issubdtype(out[name].dtype, np.integer):
            raise ValueError(f"clip result {name!r} must hold integers, got {out[name].dtype}")
    unknown = sorted(set(out["track"].tolist()) - set(out["track_ids"].tolist()))
    if unknown:
        raise ValueError(f"clip result rows name tracks {unknown} that track_ids lacks")
    if not set(out["frame"].tolist()) <= set(out["frames"].tolist()):
        raise ValueError("clip result rows name frames that 'frames' lacks")
    _check_correctives(out, rows, tracks, n_vertices)
    if out["cam_int"].shape != (3, 3) or out["image_size"].shape != (2,):
        raise ValueError("clip result cam_int must be (3, 3) and image_size (2,)")
    fps = float(out["fps"])
    if not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"clip result fps must be positive, got {fps}")
    for name in (*ROW_ARRAYS, *TRACK_ARRAYS, *CORRECTIVE_ARRAYS, "cam_int"):
        if name in out and np.issubdtype(out[name].dtype, np.floating) and not np.all(np.isfinite(out[name])):
            raise ValueError(f"clip result {name!r} has non-finite values")
    return out


def _check_correctives(out: Mapping[str, np.ndarray], rows: int, tracks: int, n_vertices: int) -> None:
    present = [k for k in CORRECTIVE_ARRAYS if k in out]
    if not present:
        return
    if len(present) != len(CORRECTIVE_ARRAYS):
        raise ValueError(f"clip result has {present} but not {sorted(set(CORRECTIVE_ARRAYS) - set(present))}")
    width = out["corrective_weights"].shape[1] if out["corrective_weights"].ndim == 2 else -1
    want = {"corrective_weights": (rows, width), "track_corrective_basis": (tracks, width, n_vertices, 3),
            "track_corrective_count": (tracks,), "track_corrective_error_cm": (tracks,)}
    for name, shape in want.items():
        if out[name].shape != shape:
            raise ValueError(f"clip result {name!r} has shape {out[name].shape}, expected {shape}")
    count = out["track_corrective_count"]
    if not np.issubdtype(count.dtype, np.integer) or np.any(count < 0) or np.any(count > width):
        raise ValueError(f"clip result 'track_corrective_count' must be integers in 0..{width}")


def track_correctives(clip: Mapping[str, np.ndarray], track_id: int,
                      rows: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(weights (len(rows), K), basis (K, V, 3) cm) of one track's corrective shape keys, or None
    when the result has none for it."""
    if "track_corrective_basis" not in clip:
        return None
    k = int(np.flatnonzero(np.asarray(clip["track_ids"]) == track_id)[0])
    n = int(np.asarray(clip["track_corrective_count"])[k])
    if n == 0:
        return None
    return (np.asarray(clip["corrective_weights"])[rows, :n],
            np.asarray(clip["track_corrective_basis"])[k, :n])


def track_rows(clip: Mapping[str, np.ndarray], track_id: int) -> np.ndarray:
    """Row indices of one track, in frame order."""
    rows = np.flatnonzero(np.asarray(clip["track"]) == track_id)
    return rows[np.argsort(np.asarray(clip["frame"])[rows], kind="stable")]


def track_person(clip: Mapping[str, np.ndarray], track_id: int, row: int) -> dict[str, np.ndarray]:
    """A one-person photo Result (addon/protocol/results.py) for `row` of track `track_id`: the
    track's locked rest skeleton and mesh with that frame's pose, to build the character."""
    k = int(np.flatnonzero(np.asarray(clip["track_ids"]) == track_id)[0])
    person: dict[str, np.ndarray] = {
        "pred_cam_t": clip["pred_cam_t"][row][None],
        "mhr_skel_state": clip["mhr_skel_state"][row][None],
        "mhr_rest_vertices": clip["track_rest_vertices"][k][None],
        "mhr_rest_skel_state": clip["track_rest_skel_state"][k][None],
        "cam_int": np.asarray(clip["cam_int"]),
        "image_size": np.asarray(clip["image_size"]),
    }
    for name in ("pred_keypoints_2d", "mhr_model_params", "shape_params", "bbox"):
        if name in clip:
            person[name] = clip[name][row][None]
    if "faces" in clip:
        person["faces"] = np.asarray(clip["faces"])
    return person


VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".exr")


def is_video_file(path: str) -> bool:
    """A movie file by its suffix (the add-on and the server tell photos from clips the same way)."""
    import os

    return os.path.isfile(path) and os.path.splitext(path)[1].lower() in VIDEO_SUFFIXES
