# SPDX-License-Identifier: GPL-3.0-or-later
"""The "SAM 3D Body" tab in the 3D View sidebar.

Draw code only reads: it never writes properties or data and never calls operators.
"""
from __future__ import annotations

import os
from typing import Any, cast

import bpy

from ..protocol.clip_result import is_video_file
from ..protocol.sequence import is_sequence_pattern
from .operators import camera_background_image, editor_image
from .properties import scene_settings, status

CATEGORY = "SAM 3D Body"

_STATE_ICONS: dict[str, Any] = {
    "STOPPED": "RADIOBUT_OFF",
    "STARTING": "SORTTIME",
    "READY": "CHECKMARK",
    "BUSY": "SORTTIME",
    "ERROR": "ERROR",
}


def sub_panel(layout: bpy.types.UILayout, idname: str) -> tuple[Any, Any]:
    """A collapsible section, closed by default: (header, body); body is None when closed.
    (The 4.2 API stubs do not know that UILayout.panel returns the pair.)"""
    return cast(Any, layout).panel(idname, default_closed=True)


class _SidebarPanel(bpy.types.Panel):
    """Shared placement; never registered itself."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = CATEGORY

    def draw(self, context: bpy.types.Context) -> None:
        if self.layout is not None:
            self.draw_layout(context, self.layout)

    def draw_layout(self, context: bpy.types.Context, layout: bpy.types.UILayout) -> None:
        raise NotImplementedError


class _SettingsPanel(_SidebarPanel):
    """A sub-panel of property rows in the split (label | value) style."""

    bl_parent_id = "SAM3D_PT_main"

    def draw_layout(self, context: bpy.types.Context, layout: bpy.types.UILayout) -> None:
        layout.use_property_split = True
        layout.use_property_decorate = False
        self.draw_settings(context, layout, scene_settings(context))

    def draw_settings(
        self, context: bpy.types.Context, layout: bpy.types.UILayout, settings: Any
    ) -> None:
        raise NotImplementedError


class SAM3D_PT_main(_SidebarPanel):
    bl_idname = "SAM3D_PT_main"
    bl_label = "SAM 3D Body"

    def draw_layout(self, context: bpy.types.Context, layout: bpy.types.UILayout) -> None:
        live = status(context)
        row = layout.row()
        row.scale_y = 1.4
        if live.job_running:
            row.operator("sam3d_body.cancel", text="Cancel", icon="CANCEL")
        else:
            row.operator("sam3d_body.reconstruct", text="Reconstruct", icon="ARMATURE_DATA")


class SAM3D_PT_server(_SidebarPanel):
    bl_idname = "SAM3D_PT_server"
    bl_label = "Server"
    bl_parent_id = "SAM3D_PT_main"

    def draw_layout(self, context: bpy.types.Context, layout: bpy.types.UILayout) -> None:
        live = status(context)
        state = live.server_state
        layout.label(text=state.title(), icon=_STATE_ICONS.get(state, "NONE"))
        row = layout.row(align=True)
        if state in {"STOPPED", "ERROR"}:
            row.operator("sam3d_body.server_start", text="Start", icon="PLAY")
        else:
            row.operator("sam3d_body.server_stop", text="Stop", icon="SNAP_FACE")
        if live.job_running:
            layout.progress(
                factor=live.progress,
                type="BAR",
                text=live.message or f"{live.progress * 100:.0f}%",
            )
            layout.operator("sam3d_body.cancel", text="Cancel", icon="CANCEL")
        elif live.message:
            layout.label(text=live.message)
        row = layout.row()
        row.operator("sam3d_body.test_connection", icon="LINKED")
        if live.connection_info:
            layout.label(text=live.connection_info, icon="INFO")
        if live.last_error:
            box = layout.box()
            col = box.column(align=True)
            col.label(text=live.last_error, icon="ERROR")
            for line in live.log_tail.splitlines()[-6:]:
                col.label(text=line)
            box.operator("sam3d_body.copy_log", icon="COPYDOWN")


class SAM3D_PT_input(_SettingsPanel):
    bl_idname = "SAM3D_PT_input"
    bl_label = "Input"

    def draw_settings(
        self, context: bpy.types.Context, layout: bpy.types.UILayout, settings: Any
    ) -> None:
        layout.prop(settings, "image_source")
        if settings.image_source == "FILE":
            layout.prop(settings, "image_path")
        elif settings.image_source == "CLIP":
            layout.template_ID(settings, "movie_clip", open="clip.open")
        else:
            camera = settings.image_source == "CAMERA"
            image = camera_background_image(context) if camera else editor_image(context)
            missing = "No camera background image" if camera else "No image in an Image Editor"
            layout.label(
                text=image.name if image is not None else missing,
                icon="IMAGE_DATA" if image is not None else "ERROR",
            )
        layout.prop(settings, "mode")
        if _takes_a_clip(context, settings):
            clip = layout.box()
            clip.label(text="Video clip: one animated character per person", icon="SEQUENCE")
            row = clip.row(align=True)
            row.prop(settings, "clip_start")
            row.prop(settings, "clip_end")
            clip.prop(settings, "clip_step")
            clip.prop(settings, "clip_max_people")
            clip.prop(settings, "clip_smoothing")
            clip.prop(settings, "clip_foot_lock")
            clip.prop(settings, "clip_replace")
        layout.prop(settings, "person_mode")
        if settings.person_mode == "INDEX":
            layout.prop(settings, "person_index")
        elif settings.person_mode == "BOX":
            layout.prop(settings, "person_box")
        layout.prop(settings, "use_alpha_mask")
        layout.separator()
        layout.operator("sam3d_body.import_result", icon="IMPORT")


def _takes_a_clip(context: bpy.types.Context, settings: Any) -> bool:
    """Whether Reconstruct will send a clip: a Movie Clip, a movie file, or an image sequence
    or movie as the editor's or camera's image."""
    if settings.image_source == "CLIP":
        return True
    if settings.image_source == "FILE":
        path = bpy.path.abspath(settings.image_path.strip())
        return is_video_file(path) or (is_sequence_pattern(path) and not os.path.exists(path))
    image = camera_background_image(context) if settings.image_source == "CAMERA" else editor_image(context)
    return image is not None and image.source in {"SEQUENCE", "MOVIE"}


class SAM3D_PT_character(_SettingsPanel):
    bl_idname = "SAM3D_PT_character"
    bl_label = "Character"

    def draw_settings(
        self, context: bpy.types.Context, layout: bpy.types.UILayout, settings: Any
    ) -> None:
        layout.prop(settings, "proportions")
        layout.prop(settings, "build_mesh")
        layout.prop(settings, "pose")
        sub = layout.column()
        sub.active = settings.pose and settings.build_mesh
        sub.prop(settings, "corrective_shape_key")
        header, body = sub_panel(layout, "sam3d_body_character_advanced")
        header.label(text="Advanced")
        if body is not None:
            body.prop(settings, "naming_preset")


class SAM3D_PT_refine(_SettingsPanel):
    bl_idname = "SAM3D_PT_refine"
    bl_label = "Refine with Keypoints"
    bl_options = {"DEFAULT_CLOSED"}

    def draw_settings(
        self, context: bpy.types.Context, layout: bpy.types.UILayout, settings: Any
    ) -> None:
        col = layout.column(align=True)
        col.label(text="Select the character, add markers, look through", icon="INFO")
        col.label(text="its camera and drag markers onto the joints.")
        row = layout.row(align=True)
        row.operator("sam3d_body.add_markers", icon="EMPTY_AXIS")
        row.operator("sam3d_body.remove_markers", text="", icon="X")
        layout.prop(settings, "refine_pin")
        layout.prop(settings, "refine_all_markers")
        header, body = sub_panel(layout, "sam3d_body_refine_advanced")
        header.label(text="Advanced")
        if body is not None:
            body.prop(settings, "marker_distance")
        row = layout.row()
        row.scale_y = 1.3
        row.enabled = not status(context).job_running
        row.operator("sam3d_body.refine", icon="CON_KINEMATIC")


class SAM3D_PT_camera(_SettingsPanel):
    bl_idname = "SAM3D_PT_camera"
    bl_label = "Camera"
    bl_options = {"DEFAULT_CLOSED"}

    def draw_settings(
        self, context: bpy.types.Context, layout: bpy.types.UILayout, settings: Any
    ) -> None:
        layout.prop(settings, "create_camera")
        sub = layout.column()
        sub.active = settings.create_camera
        sub.prop(settings, "scene_camera")
        layout.prop(settings, "use_focal_length")
        sub = layout.column()
        sub.active = settings.use_focal_length
        sub.prop(settings, "focal_length_px")


class SAM3D_PT_export(_SettingsPanel):
    bl_idname = "SAM3D_PT_export"
    bl_label = "Export"
    bl_options = {"DEFAULT_CLOSED"}

    def draw_settings(
        self, context: bpy.types.Context, layout: bpy.types.UILayout, settings: Any
    ) -> None:
        layout.prop(settings, "export_preset")
        layout.prop(settings, "export_path")
        layout.operator("sam3d_body.export_fbx", icon="EXPORT")
        layout.separator()
        layout.prop(settings, "glb_path")
        layout.operator("sam3d_body.export_glb", icon="EXPORT")


CLASSES = (
    SAM3D_PT_main,
    SAM3D_PT_server,
    SAM3D_PT_input,
    SAM3D_PT_character,
    SAM3D_PT_camera,
    SAM3D_PT_refine,
    SAM3D_PT_export,
)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
