"""Shared bpy read-back helpers for the tests."""
from __future__ import annotations

import bpy
import numpy as np

from addon.rig.axes import mhr_to_blender_points
from addon.rig.skinning import linear_blend_skinning, skinning_transforms


def evaluated_world_vertices(obj) -> np.ndarray:
    """Vertices after modifiers, in world space (metres)."""
    dg = bpy.context.evaluated_depsgraph_get()
    ev = obj.evaluated_get(dg)
    me = ev.to_mesh()
    try:
        co = np.empty(len(me.vertices) * 3, np.float32)
        me.vertices.foreach_get("co", co)
    finally:
        ev.to_mesh_clear()
    m = np.array(obj.matrix_world)
    return co.reshape(-1, 3).astype(np.float64) @ m[:3, :3].T + m[:3, 3]


def numpy_lbs_blender(result, rig, i) -> np.ndarray:
    """MHR LBS (no correctives) of person i's rest mesh, in Blender armature space (metres)."""
    t = skinning_transforms(result["mhr_skel_state"][i], rig["bind_skel_state"])
    v = linear_blend_skinning(result["mhr_rest_vertices"][i], rig["skin_indices"],
                              rig["skin_weights"], t)
    return mhr_to_blender_points(v)


def write_png(path, width, height) -> str:
    img = bpy.data.images.new("tmp_photo", width, height)
    img.filepath_raw = str(path)
    img.file_format = "PNG"
    img.save()
    bpy.data.images.remove(img)
    return str(path)
