"""FBX / glTF export of built characters (reference/blender.md §4.6 settings).

Presets only differ in how units reach the target: Blender round trips keep metres on the
objects (FBX_SCALE_NONE); Unity and Unreal get the unit scale applied to the data
(FBX_SCALE_ALL) so they do not see x100 object scales. Every preset writes no leaf bones,
keeps Blender's bone axes (Y primary, X secondary) and disables key simplification.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, cast

FBX_PRESETS: dict[str, dict[str, Any]] = {
    "blender": {"apply_scale_options": "FBX_SCALE_NONE"},
    "unity": {"apply_scale_options": "FBX_SCALE_ALL"},
    "unreal": {"apply_scale_options": "FBX_SCALE_ALL"},
    # Mixamo's uploader re-rigs or retargets from the bind pose and rejects extra takes: send
    # the character alone (build it with naming="mixamo" so the bones carry mixamorig: names).
    "mixamo": {"apply_scale_options": "FBX_SCALE_ALL", "bake_anim": False, "use_armature_deform_only": True},
}

_FBX_COMMON: dict[str, Any] = {
    "use_selection": True,
    "object_types": {"ARMATURE", "MESH"},
    "add_leaf_bones": False,
    "primary_bone_axis": "Y",
    "secondary_bone_axis": "X",
    "armature_nodetype": "NULL",
    "axis_forward": "-Z",
    "axis_up": "Y",
    "apply_unit_scale": True,
    "bake_space_transform": False,  # reported to double-convert axes together with axis_up
    "mesh_smooth_type": "FACE",
    "use_mesh_modifiers": False,    # keep the Armature modifier as skinning, not baked geometry
    "use_armature_deform_only": False,
    "bake_anim": True,
    "bake_anim_use_all_bones": True,
    "bake_anim_use_nla_strips": False,
    "bake_anim_use_all_actions": False,
    "bake_anim_force_startend_keying": True,
    "bake_anim_simplify_factor": 0.0,
    "use_custom_props": True,
    "path_mode": "AUTO",
}


def fbx_settings(preset: str = "blender") -> dict[str, Any]:
    """Keyword arguments for ``bpy.ops.export_scene.fbx`` (without ``filepath``)."""
    if preset not in FBX_PRESETS:
        raise ValueError(f"unknown FBX preset {preset!r}; choose one of {sorted(FBX_PRESETS)}")
    settings = dict(_FBX_COMMON)
    settings.update(FBX_PRESETS[preset])
    return settings


def _with_children(objects: Iterable[Any]) -> list[Any]:
    """The given objects plus their meshes and the armatures deforming them, so passing just
    the armature (or just the mesh) exports the whole skinned character."""
    out: list[Any] = []

    def add(o: Any) -> None:
        if o is not None and o.type in {"ARMATURE", "MESH"} and o not in out:
            out.append(o)

    for obj in objects:
        if obj.type == "MESH":
            for mod in obj.modifiers:
                if mod.type == "ARMATURE":
                    add(mod.object)
        add(obj)
        for child in getattr(obj, "children_recursive", []):
            add(child)
    return out


def _check_path(path: str | os.PathLike, suffix: str) -> str:
    p = os.fspath(path)
    if not p.lower().endswith(suffix):
        raise ValueError(f"export path must end with {suffix}: {p}")
    folder = os.path.dirname(os.path.abspath(p))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"export folder does not exist: {folder}")
    return p


class _Selection:
    """Select exactly ``objects`` for an exporter, restoring the previous selection after."""

    def __init__(self, context: Any, objects: list[Any]):
        self.context = context
        self.objects = objects

    def __enter__(self) -> None:
        view_layer = self.context.view_layer
        self.before = [o for o in view_layer.objects if o.select_get()]
        self.active = view_layer.objects.active
        for o in self.before:
            o.select_set(False)
        for o in self.objects:
            o.select_set(True)
        view_layer.objects.active = self.objects[0]

    def __exit__(self, *exc: Any) -> None:
        view_layer = self.context.view_layer
        for o in self.objects:
            if o.name in view_layer.objects:
                o.select_set(False)
        for o in self.before:
            if o.name in view_layer.objects:
                o.select_set(True)
        view_layer.objects.active = self.active


class _StaticClip:
    """A static pose (no action on any exported object) goes out as a two-frame clip.

    The FBX exporter bakes the scene's frame range (250 identical keys in a default scene);
    two keys keep the pose as a clip that Unity's importer does not drop, at a fraction of the
    size. Animated characters keep the scene's range. The range is restored afterwards.
    """

    def __init__(self, scene: Any, objects: list[Any]):
        self.scene = scene
        self.static = not any(getattr(o.animation_data, "action", None) for o in objects)

    def __enter__(self) -> None:
        self.range = (self.scene.frame_start, self.scene.frame_end)
        if self.static:
            frame = self.scene.frame_current
            self.scene.frame_start, self.scene.frame_end = frame, frame + 1

    def __exit__(self, *exc: Any) -> None:
        self.scene.frame_start, self.scene.frame_end = self.range


def export_fbx(path: str | os.PathLike, objects: Iterable[Any], preset: str = "blender",
               context: Any = None) -> str:
    """Write the characters (armatures and their meshes) to an FBX file; returns the path."""
    import bpy

    ctx = context or bpy.context
    settings = fbx_settings(preset)
    objs = _with_children(objects)
    if not objs:
        raise ValueError("nothing to export: pass the character's armature and/or mesh objects")
    out = _check_path(path, ".fbx")
    with _Selection(ctx, objs), _StaticClip(ctx.scene, objs), ctx.temp_override(
            active_object=objs[0], object=objs[0], selected_objects=objs):
        # The stubs declare operators as returning None; they return a set of status names.
        result = cast("set[str]", bpy.ops.export_scene.fbx(filepath=out, **settings))
    if "FINISHED" not in result:
        raise RuntimeError(f"FBX export failed: {result}")
    return out


def export_glb(path: str | os.PathLike, objects: Iterable[Any], context: Any = None) -> str:
    """Write the characters to a binary glTF (.glb): skin, pose and correctives shape key."""
    import bpy

    ctx = context or bpy.context
    objs = _with_children(objects)
    if not objs:
        raise ValueError("nothing to export: pass the character's armature and/or mesh objects")
    out = _check_path(path, ".glb")
    kwargs: dict[str, Any] = {"filepath": out, "export_format": "GLB", "use_selection": True,
                              "export_skins": True, "export_morph": True,
                              "export_apply": False, "export_yup": True}
    gltf_op: Any = bpy.ops.export_scene.gltf  # the stubs type operators as unbound classes
    if "export_animation_mode" in gltf_op.get_rna_type().properties:
        # A clip's armature action and its corrective shape-key action play together: one
        # glTF animation of the clip, not one per action.
        kwargs["export_animation_mode"] = "ACTIVE_ACTIONS"
    with _Selection(ctx, objs), ctx.temp_override(active_object=objs[0], object=objs[0],
                                                  selected_objects=objs):
        # The stubs declare operators as returning None; they return a set of status names.
        result = cast("set[str]", bpy.ops.export_scene.gltf(**kwargs))
    if "FINISHED" not in result:
        raise RuntimeError(f"glTF export failed: {result}")
    return out
