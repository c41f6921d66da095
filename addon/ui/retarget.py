# SPDX-License-Identifier: GPL-3.0-or-later
"""Pose the animator's own rig: the "Pose Your Rig" panel, its settings and operators.

Apply Pose to Rig transfers the source armature's current pose (a reconstructed character) onto
a target armature; Bake Animation to Rig does it for every frame of the source's action. The
bone map is detected from the target's names, chosen from the presets, read from a JSON file or
edited slot by slot in the panel (and saved as JSON). The math and the writes live in
addon/rig/retarget.py and addon/scene/retarget.py; this module only gathers the settings.
"""
from __future__ import annotations

from typing import Any, Literal

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, IntProperty,
                       PointerProperty, StringProperty)

from ..rig import bone_maps
from ..scene import retarget as scene_retarget
from .panel import CATEGORY, sub_panel
from .properties import BLEND_RELATIVE

OperatorResult = set[
    Literal["RUNNING_MODAL", "CANCELLED", "FINISHED", "PASS_THROUGH", "INTERFACE"]
]
_PRESET_LABELS = {"mhr": "MHR (ours)", "mixamo": "Mixamo", "unreal": "Unreal (UE5 Manny)",
                  "unity": "Unity Humanoid", "rigify_fk": "Rigify (generated, FK controls)",
                  "rigify": "Rigify Metarig", "rigify_deform": "Rigify DEF bones"}
BONE_MAP_ITEMS = [("AUTO", "Detect", "Pick the preset that matches the most bones")] + [
    (p, _PRESET_LABELS.get(p, p), f"The {_PRESET_LABELS.get(p, p)} bone names")
    for p in bone_maps.PRESETS] + [
    ("FILE", "Map File", "A bone-map JSON file"),
    ("CUSTOM", "Edit in Panel", "The slot list below (fill it from a preset, then edit)")]


def _is_armature(_self: Any, obj: bpy.types.Object) -> bool:
    return obj.type == "ARMATURE"


class SAM3D_PG_bone_slot(bpy.types.PropertyGroup):
    """One row of the bone-map editor: a humanoid slot and the target bones serving it."""

    slot: StringProperty(name="Slot")
    bones: StringProperty(
        name="Bones", description="Target bone names, root to tip, separated by commas "
        "(chains such as the spine or a finger may hold any number)")


class SAM3D_PG_retarget(bpy.types.PropertyGroup):
    source: PointerProperty(
        name="Source", type=bpy.types.Object, poll=_is_armature,
        description="The posed armature to copy from (empty: the active armature)")
    target: PointerProperty(
        name="Target Rig", type=bpy.types.Object, poll=_is_armature,
        description="Your character's armature: its pose bones take the pose; rest pose, "
        "proportions, constraints and meshes stay its own")
    bone_map: EnumProperty(
        name="Bone Map", items=BONE_MAP_ITEMS, default="AUTO")
    map_file: StringProperty(
        name="Map File", subtype="FILE_PATH", options=BLEND_RELATIVE,
        description="A bone-map JSON file (Save Map writes one)")
    use_ik: BoolProperty(
        name="Hands and Feet IK", default=False,
        description="Bend arms and legs so hands and feet land where the source's do "
        "(for contacts), instead of copying elbow and knee angles exactly")
    root_motion: BoolProperty(
        name="Root Motion", default=True,
        description="Move the hips like the source's, scaled by the leg-length ratio")
    keyframe: BoolProperty(
        name="Insert Keyframes", default=False,
        description="Key the posed bones at the current frame")
    slots: CollectionProperty(type=SAM3D_PG_bone_slot)
    slot_index: IntProperty(name="Slot")


def settings_of(context: bpy.types.Context) -> SAM3D_PG_retarget:
    scene = context.scene
    if scene is None:
        raise ValueError("no active scene")
    return scene.sam3d_retarget  # type: ignore[attr-defined]


def editor_map(settings: Any) -> dict[str, list[str]]:
    """The map held by the panel's slot list (empty rows skipped)."""
    out = {}
    for row in settings.slots:
        bones = [b.strip() for b in row.bones.split(",") if b.strip()]
        if bones:
            out[row.slot] = bones
    return bone_maps.validate_map(out, "the panel's bone map")


def fill_editor(settings: Any, mapping: dict[str, list[str]]) -> None:
    settings.slots.clear()
    for slot in bone_maps.SLOTS:
        row = settings.slots.add()
        row.slot = slot
        row.bones = ", ".join(mapping.get(slot, []))


def map_spec(settings: Any) -> Any:
    """What scene/retarget.py takes as the target's map, from the panel's choice."""
    choice = settings.bone_map
    if choice == "AUTO":
        return scene_retarget.AUTO
    if choice == "FILE":
        path = bpy.path.abspath(settings.map_file)
        if not settings.map_file:
            raise ValueError("choose a bone-map file, or another Bone Map option")
        return path
    if choice == "CUSTOM":
        return editor_map(settings)
    return choice


def source_and_target(context: bpy.types.Context, settings: Any) -> tuple[Any, Any]:
    source = settings.source
    if source is None:
        active = context.active_object
        source = active if active is not None and active.type == "ARMATURE" else None
    if source is None:
        raise ValueError("select the reconstructed armature (or set Source)")
    if settings.target is None:
        raise ValueError("choose your rig as Target Rig")
    if source == settings.target:
        raise ValueError("Source and Target Rig are the same armature: pick the reconstructed "
                         "character as the source")
    return source, settings.target


class SAM3D_OT_retarget_pose(bpy.types.Operator):
    """Pose the target rig like the source armature (rotations in each bone's own frame, root
    motion scaled by leg length, optional hand and foot IK)"""

    bl_idname = "sam3d_body.retarget_pose"
    bl_label = "Apply Pose to Rig"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        settings = settings_of(context)
        try:
            source, target = source_and_target(context, settings)
            pose = scene_retarget.retarget_pose(
                context, source, target, target_map=map_spec(settings), ik=settings.use_ik,
                root_motion=settings.root_motion, keyframe=settings.keyframe)
        except (ValueError, FileNotFoundError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, pose.summary(0)[0] if pose.summary(0) else "posed")
        return {"FINISHED"}


class SAM3D_OT_retarget_clip(bpy.types.Operator):
    """Bake the source's animation onto the target rig as a new action (its old action is
    kept)"""

    bl_idname = "sam3d_body.retarget_clip"
    bl_label = "Bake Animation to Rig"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        settings = settings_of(context)
        try:
            source, target = source_and_target(context, settings)
            action, stats = scene_retarget.retarget_clip(
                context, source, target, target_map=map_spec(settings), ik=settings.use_ik,
                root_motion=settings.root_motion)
        except (ValueError, FileNotFoundError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"{action.name}: {int(stats['frames'])} frames, worst direction "
                    f"error {stats['max_angle_deg']:.1f}°")
        return {"FINISHED"}


class SAM3D_OT_bone_map_fill(bpy.types.Operator):
    """Fill the slot list from the target rig's bone names (the chosen preset, or detection)"""

    bl_idname = "sam3d_body.bone_map_fill"
    bl_label = "Fill from Rig"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        settings = settings_of(context)
        if settings.target is None:
            self.report({"ERROR"}, "choose your rig as Target Rig first")
            return {"CANCELLED"}
        spec = settings.bone_map if settings.bone_map in bone_maps.PRESETS else scene_retarget.AUTO
        try:
            preset, mapping = scene_retarget.bone_map_for(settings.target, spec)
        except ValueError as exc:
            # an unknown rig: an empty list to fill by hand
            self.report({"WARNING"}, str(exc))
            preset, mapping = "custom", {}
        fill_editor(settings, mapping)
        settings.bone_map = "CUSTOM"
        self.report({"INFO"}, f"{preset}: {sum(len(v) for v in mapping.values())} bones in "
                    f"{len(mapping)} slots")
        return {"FINISHED"}


class SAM3D_OT_bone_map_save(bpy.types.Operator):
    """Save the slot list as a bone-map JSON file"""

    bl_idname = "sam3d_body.bone_map_save"
    bl_label = "Save Map"
    bl_options = {"REGISTER"}

    filepath: StringProperty(subtype="FILE_PATH")
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})

    def invoke(self, context: bpy.types.Context, event: Any) -> OperatorResult:
        if not self.filepath:
            self.filepath = "bone_map.json"
        if context.window_manager is None:
            return {"CANCELLED"}
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        settings = settings_of(context)
        path = bpy.path.ensure_ext(bpy.path.abspath(self.filepath), ".json")
        try:
            bone_maps.save_map(path, editor_map(settings), None)
        except (ValueError, OSError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        settings.map_file = path
        self.report({"INFO"}, f"saved {path}")
        return {"FINISHED"}


class SAM3D_OT_bone_map_load(bpy.types.Operator):
    """Load a bone-map JSON file into the slot list"""

    bl_idname = "sam3d_body.bone_map_load"
    bl_label = "Load Map"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(subtype="FILE_PATH")
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})

    def invoke(self, context: bpy.types.Context, event: Any) -> OperatorResult:
        if context.window_manager is None:
            return {"CANCELLED"}
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        settings = settings_of(context)
        path = bpy.path.abspath(self.filepath)
        try:
            mapping = bone_maps.load_map(path)
        except (ValueError, OSError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        fill_editor(settings, mapping)
        settings.bone_map = "CUSTOM"
        settings.map_file = path
        return {"FINISHED"}


class SAM3D_UL_bone_slots(bpy.types.UIList):
    def draw_item(self, context: Any, layout: Any, data: Any, item: Any, icon: Any,
                  active_data: Any, active_propname: Any, index: int | None = 0,
                  flt_flag: int | None = 0) -> None:
        row = layout.row(align=True)
        row.label(text=item.slot)
        row.prop(item, "bones", text="", emboss=True)


class SAM3D_PT_retarget(bpy.types.Panel):
    bl_idname = "SAM3D_PT_retarget"
    bl_label = "Pose Your Rig"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = CATEGORY
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        if layout is None:
            return
        settings = settings_of(context)
        layout.prop(settings, "source")
        layout.prop(settings, "target")
        layout.prop(settings, "bone_map")
        if settings.bone_map == "FILE":
            layout.prop(settings, "map_file")
        header, body = sub_panel(layout, "sam3d_body_bone_map_editor")
        header.label(text="Bone Map Editor")
        if body is not None:
            row = body.row(align=True)
            row.operator("sam3d_body.bone_map_fill", icon="FILE_REFRESH")
            row.operator("sam3d_body.bone_map_load", text="", icon="FILEBROWSER")
            row.operator("sam3d_body.bone_map_save", text="", icon="FILE_TICK")
            body.template_list("SAM3D_UL_bone_slots", "", settings, "slots", settings,
                               "slot_index", rows=6)
        layout.prop(settings, "use_ik")
        layout.prop(settings, "root_motion")
        layout.prop(settings, "keyframe")
        row = layout.row()
        row.scale_y = 1.3
        row.operator("sam3d_body.retarget_pose", icon="ARMATURE_DATA")
        layout.operator("sam3d_body.retarget_clip", icon="ACTION")
        report = settings.target.get(scene_retarget.REPORT_PROP) if settings.target else None
        if report:
            box = layout.box()
            for line in str(report.get("lines", "")).splitlines():
                box.label(text=line.strip())


CLASSES = (SAM3D_PG_bone_slot, SAM3D_PG_retarget, SAM3D_OT_retarget_pose, SAM3D_OT_retarget_clip,
           SAM3D_OT_bone_map_fill, SAM3D_OT_bone_map_save, SAM3D_OT_bone_map_load,
           SAM3D_UL_bone_slots, SAM3D_PT_retarget)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    setattr(bpy.types.Scene, "sam3d_retarget", PointerProperty(type=SAM3D_PG_retarget))


def unregister() -> None:
    delattr(bpy.types.Scene, "sam3d_retarget")
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)


