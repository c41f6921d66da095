"""Build the scene of a saved RESULT.npz exactly as a live reconstruction would (bpy)."""
from __future__ import annotations

import os
from typing import Any, Mapping

from ..protocol.result_file import load_result_file, resolve_rig
from ..protocol.results import RigData


def import_result(context: Any, result_path: str | os.PathLike,
                  rig: RigData | Mapping[str, Any] | str | os.PathLike | None = None,
                  image_path: str | None = None,
                  options: Mapping[str, Any] | None = None) -> list[Any]:
    """Build the scene of a saved result exactly as a live reconstruction would.

    Returns apply_result's objects (armature and mesh per person, then the camera). The
    collection is named after the photo when given, else after the result file. The armatures
    carry what Refine needs (photo, 2D keypoints, box, intrinsics), as after a live result.
    """
    from .apply import apply_result
    from ..scene.tags import tag_armatures

    mhr = rig if isinstance(rig, (str, os.PathLike)) and not os.fspath(rig).lower().endswith(".npz") else None
    result, embedded = load_result_file(result_path, mhr=mhr, image_size=_photo_size(image_path))
    rig_data = resolve_rig(embedded, rig)
    opts = dict(options or {})
    if image_path is None and not opts.get("collection_name"):
        opts["collection_name"] = os.path.splitext(os.path.basename(os.fspath(result_path)))[0]
    created = apply_result(context, result, rig_data, image_path=image_path, options=opts)
    tag_armatures(created, dict(result.arrays), image_path)
    return created


def _photo_size(image_path: str | None) -> tuple[int, int] | None:
    """(W, H) of the photo through Blender's loader (no PIL inside Blender)."""
    if not image_path or not os.path.isfile(image_path):
        return None
    import bpy

    image = bpy.data.images.load(image_path, check_existing=True)
    size = (int(image.size[0]), int(image.size[1]))
    return size if min(size) > 0 else None
