# SPDX-License-Identifier: GPL-3.0-or-later
"""Per-scene settings (saved in the .blend) and the live server/job status (never saved).

Scene settings live in `Scene.sam3d_body`; status lives in `WindowManager.sam3d_body_status`
because it describes this Blender session, not the file.
"""
from __future__ import annotations

from typing import Any

import bpy
from bpy.props import (
    BoolProperty,
    EnumProperty,
    FloatProperty,
    FloatVectorProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from ..scene.export import FBX_PRESETS

# Blender 4.5+ wants file paths to opt in to "//" (relative to the .blend); 4.2 has no such
# flag and accepts them anyway.
BLEND_RELATIVE: Any = (
    {"PATH_SUPPORTS_BLEND_RELATIVE"} if bpy.app.version >= (4, 5, 0) else set()
)

IMAGE_SOURCES = [
    ("EDITOR", "Image Editor", "The image shown in an Image Editor of this window"),
    ("FILE", "File", "An image file on disk"),
    ("CAMERA", "Camera Background", "The background image of the scene's active camera"),
    ("CLIP", "Movie Clip", "A Movie Clip (a video file or an image sequence): one animated "
     "character per person"),
]

PERSON_MODES = [
    ("ALL", "All People", "Every person the detector finds"),
    ("INDEX", "Person Index", "The box of person N of the last reconstruction of this photo"),
    ("BOX", "Box", "One person inside a box given in image pixels"),
]

NAMING_PRESETS = [
    ("mhr", "MHR", "MHR's own joint names, every joint a bone"),
    ("unreal", "Unreal", "Unreal Engine mannequin names (helpers merged)"),
    ("mixamo", "Mixamo", "Mixamo names (helpers merged)"),
]

PROPORTIONS = [
    ("baked", "Baked", "Rest pose = the person's A-pose with their proportions: Clear Pose "
     "(Alt+G/R/S) gives that A-pose and every pose tool keeps the proportions. New poses "
     "deform slightly differently from MHR's own skinning (within about a centimetre)"),
    ("exact", "Exact", "Rest pose = MHR's template skeleton, the person's proportions held as "
     "pose-bone scale: skinning matches MHR exactly in every pose, but Clear Pose (Alt+S) "
     "also clears the proportions; clear only location and rotation to keep them"),
]

MODES = [
    ("body", "Body", "Body decoder only: fastest"),
    ("full", "Full", "Body plus both hand crops and the keypoint-prompted refinement"),
]

_PRESET_HELP = {
    "blender": "Round trip into Blender: metres kept on the objects",
    "unity": "Unity: unit scale applied to the data, no x100 object scales",
    "unreal": "Unreal: unit scale applied to the data, no x100 object scales",
}
EXPORT_PRESETS = [
    (name, name.title(), _PRESET_HELP.get(name, f"FBX preset '{name}'"))
    for name in FBX_PRESETS
]

SERVER_STATES = [
    ("STOPPED", "Stopped", "No server process"),
    ("STARTING", "Starting", "The server process is loading"),
    ("READY", "Ready", "The server is running and idle"),
    ("BUSY", "Busy", "The server is working on a request"),
    ("ERROR", "Error", "The last request or the server failed"),
]


class SAM3D_PG_scene(bpy.types.PropertyGroup):
    """What to reconstruct and how to build it; stored per scene."""

    # Input
    image_source: EnumProperty(
        name="Image",
        items=IMAGE_SOURCES,
        default="EDITOR",
        description="Where the reference photo comes from",
    )
    image_path: StringProperty(
        name="Image File",
        subtype="FILE_PATH",
        options=BLEND_RELATIVE,
        description="Reference photo (PNG, JPEG, ...) or video clip (MP4, MOV, MKV, WebM, AVI: one "
        "animated character per person); // paths are relative to the .blend",
    )
    movie_clip: PointerProperty(
        name="Movie Clip",
        type=bpy.types.MovieClip,
        description="The clip to reconstruct (its file or image sequence is read from disk)",
    )
    clip_start: IntProperty(
        name="First Frame",
        default=1,
        min=1,
        description="First frame of the clip to reconstruct (1 = its first frame)",
    )
    clip_end: IntProperty(
        name="Last Frame",
        default=0,
        min=0,
        description="Last frame of the clip to reconstruct (0 = to its end)",
    )
    clip_max_people: IntProperty(
        name="Max People",
        default=0,
        min=0,
        soft_max=10,
        description="Track at most this many people (0 = everyone found)",
    )
    clip_step: IntProperty(
        name="Every Nth Frame",
        default=1,
        min=1,
        soft_max=10,
        description="Reconstruct every Nth frame of a clip (the animation is keyed on those frames)",
    )
    clip_smoothing: FloatProperty(
        name="Smoothing",
        default=2.0,
        min=0.0,
        soft_max=8.0,
        description="Zero-lag motion smoothing of a clip, in frames (0: the raw per-frame poses)",
    )
    clip_foot_lock: BoolProperty(
        name="Foot Lock",
        default=True,
        description="Pin the feet while they touch the ground, so they do not skate",
    )
    clip_replace: BoolProperty(
        name="Update Previous Run",
        default=True,
        description="Running the same clip again rebuilds its characters in place (same objects, "
        "new action) instead of adding new ones",
    )
    mode: EnumProperty(
        name="Mode",
        items=MODES,
        default="full",
        description="How much of the model to run",
    )

    person_mode: EnumProperty(
        name="People",
        items=PERSON_MODES,
        default="ALL",
        description="Reconstruct everyone detected, or one person",
    )
    person_index: IntProperty(
        name="Person",
        default=0,
        min=0,
        description="Index of the person in the last reconstruction (its armature's number)",
    )
    person_box: FloatVectorProperty(
        name="Box",
        size=4,
        default=(0.0, 0.0, 0.0, 0.0),
        min=0.0,
        description="x1, y1, x2, y2 in image pixels (origin at the top-left corner)",
    )
    use_alpha_mask: BoolProperty(
        name="Alpha as Mask",
        default=False,
        description="Use the photo's alpha channel as the person's mask (one person)",
    )

    # Character
    naming_preset: EnumProperty(
        name="Bone Names",
        items=NAMING_PRESETS,
        default="mhr",
        description="Bone-naming preset of the armature",
    )
    proportions: EnumProperty(
        name="Proportions",
        items=PROPORTIONS,
        default="baked",
        description="Where the person's proportions live, and so what Clear Pose returns to "
        "(docs/RIG.md)",
    )
    build_mesh: BoolProperty(
        name="Mesh",
        default=True,
        description="Build the skinned body mesh (off: the armature only, e.g. to retarget "
        "the pose onto another character)",
    )
    pose: BoolProperty(
        name="Pose",
        default=True,
        description="Pose the bones as in the photo (off: leave the rest pose)",
    )
    corrective_shape_key: BoolProperty(
        name="Pose Corrective",
        default=True,
        description="Add MHR's pose correctives as shape keys so the posed mesh matches the "
        "prediction: one key for a photo (it only fits that pose), a few keyed ones for a clip",
    )

    # Camera
    create_camera: BoolProperty(
        name="Camera",
        default=True,
        description="Create a camera from the focal length the model used",
    )
    scene_camera: BoolProperty(
        name="Scene Camera",
        default=True,
        description="Make it the scene camera and set the render size to the photo's",
    )
    use_focal_length: BoolProperty(
        name="Known Focal Length",
        default=False,
        description="Use this focal length instead of EXIF or the model's default",
    )
    focal_length_px: FloatProperty(
        name="Focal Length (px)",
        default=1000.0,
        min=1.0,
        soft_max=20000.0,
        description="Focal length in pixels of the full image; the principal point is "
        "the image centre",
    )

    # Export
    export_preset: EnumProperty(
        name="Preset",
        items=EXPORT_PRESETS,
        default="blender",
        description="FBX axes and options for the target application",
    )
    export_path: StringProperty(
        name="FBX File",
        subtype="FILE_PATH",
        options=BLEND_RELATIVE,
        default="//sam3d_body.fbx",
        description="Where Export FBX writes",
    )
    glb_path: StringProperty(
        name="glTF File",
        subtype="FILE_PATH",
        options=BLEND_RELATIVE,
        default="//sam3d_body.glb",
        description="Where Export glTF writes (binary .glb)",
    )
    # Refine
    refine_all_markers: BoolProperty(
        name="Send All Markers",
        default=False,
        description="Send every marker as a prompt, not only the ones you moved",
    )
    refine_pin: BoolProperty(
        name="Pin to Markers",
        default=True,
        description="After the model's prompted re-run, adjust the pose so each moved joint "
        "lands on its marker while the other body joints stay where they are (off: the "
        "model's answer only, which treats the markers as hints)",
    )
    marker_distance: FloatProperty(
        name="Marker Distance",
        default=1.0,
        min=0.01,
        soft_max=10.0,
        unit="LENGTH",
        description="How far in front of the camera the keypoint markers sit",
    )
    last_collection: StringProperty(
        name="Last Result",
        description="Collection built by the last Reconstruct (exported when no armature "
        "is selected)",
    )


class SAM3D_PG_status(bpy.types.PropertyGroup):
    """Live state of the server and the running job, shown by the panel."""

    server_state: EnumProperty(
        name="Server",
        items=SERVER_STATES,
        default="STOPPED",
    )
    message: StringProperty(name="Status")
    progress: FloatProperty(
        name="Progress", default=0.0, min=0.0, max=1.0, subtype="FACTOR"
    )
    job_running: BoolProperty(name="Job Running", default=False)
    last_error: StringProperty(name="Last Error")
    log_tail: StringProperty(name="Server Log")
    connection_info: StringProperty(name="Connection")
    hf_access: StringProperty(name="Hugging Face Access")
    install_state: StringProperty(name="Installer", default="idle")
    install_progress: FloatProperty(
        name="Install Progress", default=0.0, min=0.0, max=1.0, subtype="FACTOR"
    )
    install_message: StringProperty(name="Install Step")
    install_log_tail: StringProperty(name="Install Log")


def scene_settings(context: bpy.types.Context) -> SAM3D_PG_scene:
    """The add-on's settings of the context's scene; raises RuntimeError without a scene."""
    scene = context.scene
    if scene is None:
        raise RuntimeError("no active scene")
    return scene.sam3d_body  # type: ignore[attr-defined]


def status(context: bpy.types.Context) -> SAM3D_PG_status:
    """The live status of this Blender session (window manager); RuntimeError without one."""
    wm = context.window_manager
    if wm is None:
        raise RuntimeError("no window manager")
    return wm.sam3d_body_status  # type: ignore[attr-defined]


CLASSES = (SAM3D_PG_scene, SAM3D_PG_status)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    # setattr: the stubs know neither attribute.
    setattr(bpy.types.Scene, "sam3d_body", PointerProperty(type=SAM3D_PG_scene))
    setattr(bpy.types.WindowManager, "sam3d_body_status", PointerProperty(type=SAM3D_PG_status))


def unregister() -> None:
    delattr(bpy.types.WindowManager, "sam3d_body_status")
    delattr(bpy.types.Scene, "sam3d_body")
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
