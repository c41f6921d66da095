# SPDX-License-Identifier: GPL-3.0-or-later
"""Refine with keypoints: 2D markers on the photo, re-run with keypoint prompts, pose in place.

Add Markers puts one empty per MHR-70 keypoint (`keypoints.MARKER_KEYPOINTS`) at the predicted
2D keypoint, parented to the photo camera on a plane in front of it, so in the camera view each
marker sits on its joint in the photo. The user drags markers (G in the camera view moves them
in the view plane); Refine sends the moved ones (or all) as prompts with the same photo, box
and intrinsics, and the result poses the same armature in place: pose bones only (and the
corrective shape key when there is one); rest pose, location and other objects stay.
With Pin to Markers (the default) the server also fits the pose after the model's prompted run
so the moved joints land on their markers (server/pipeline/keypoint_fit.py); without it the
markers are only the model's hints.

`builder.py` has no "update pose" entry point beyond `set_pose`, so the few bpy writes that are
not the character's construction (marker empties, the corrective key's coordinates) are here.
"""
from __future__ import annotations

import os
from typing import Any, Literal, Mapping, cast

import bpy
import numpy as np

from ..scene import keypoints
from .operators import JobOperator, submit_job
from .properties import scene_settings, status
from ..scene.tags import (PROP_BBOX, PROP_CAM_INT, PROP_IMAGE, PROP_IMAGE_SIZE, PROP_KEYPOINTS,
                          PROP_MODE, get_prop as _get, has_prop as _has)
from .session import InputError

OperatorResult = set[
    Literal["RUNNING_MODAL", "CANCELLED", "FINISHED", "PASS_THROUGH", "INTERFACE"]
]
MARKER_INDEX = "sam3d_keypoint"       # MHR-70 label of a marker empty
MARKER_PIXEL = "sam3d_pixel"          # where the marker was created (image pixels)
MARKER_ARMATURE = "sam3d_armature"    # the armature it belongs to
MARKER_SIZE = 0.012                   # empty display size per metre of marker distance


def target_armature(context: bpy.types.Context) -> bpy.types.Object:
    """The armature to refine: the active object, or the armature of the active marker."""
    obj = context.active_object
    if _has(obj, MARKER_ARMATURE):
        obj = bpy.data.objects.get(str(_get(obj, MARKER_ARMATURE)))
    if obj is None or obj.type != "ARMATURE" or not _has(obj, PROP_KEYPOINTS):
        raise InputError("Select a reconstructed armature (or one of its markers) first")
    return obj


def photo_camera(context: bpy.types.Context, arm: bpy.types.Object) -> bpy.types.Object:
    """The camera built with the armature (same collection), else the scene camera."""
    for coll in arm.users_collection:
        for obj in coll.objects:
            if obj.type == "CAMERA":
                return obj
    camera = context.scene.camera if context.scene is not None else None
    if camera is None:
        raise InputError(f"No camera for {arm.name}: Refine needs the photo camera "
                         "(enable Camera when reconstructing)")
    return camera


def markers_of(arm: bpy.types.Object) -> list[bpy.types.Object]:
    found = [obj for obj in bpy.data.objects
             if _get(obj, MARKER_ARMATURE) == arm.name and _has(obj, MARKER_INDEX)]
    return sorted(found, key=lambda o: int(o[MARKER_INDEX]))


def cam_int_of(arm: bpy.types.Object) -> np.ndarray:
    values = np.asarray(list(arm[PROP_CAM_INT]), dtype=np.float64)
    if values.shape != (4,):
        raise InputError(f"{arm.name} carries no intrinsics: reconstruct it again")
    return values


def create_markers(context: bpy.types.Context, arm: bpy.types.Object,
                   distance: float) -> list[bpy.types.Object]:
    """One empty per marker keypoint at its predicted pixel, parented to the photo camera;
    existing markers of this armature are replaced."""
    camera = photo_camera(context, arm)
    remove_markers(arm)
    kp = np.asarray(list(arm[PROP_KEYPOINTS]), dtype=np.float64).reshape(-1, 2)
    labels = list(keypoints.MARKER_KEYPOINTS)
    local = keypoints.pixels_to_camera_local(kp[labels], cam_int_of(arm), distance)
    name = f"{arm.name} markers"
    scene = context.scene
    if scene is None:
        raise InputError("No active scene")
    coll = bpy.data.collections.get(name) or bpy.data.collections.new(name)
    if coll.name not in scene.collection.children:
        scene.collection.children.link(coll)
    created = []
    for label, pixel, position in zip(labels, kp[labels], local):
        empty = bpy.data.objects.new(f"{arm.name}:{keypoints.MHR70_NAMES[label]}", None)
        empty.empty_display_type = "SPHERE"
        empty.empty_display_size = MARKER_SIZE * distance
        empty.show_name = True
        empty.show_in_front = True
        empty.parent = camera
        empty.matrix_parent_inverse.identity()
        empty.location = position.tolist()
        empty[MARKER_INDEX] = int(label)
        empty[MARKER_PIXEL] = [float(pixel[0]), float(pixel[1])]
        empty[MARKER_ARMATURE] = arm.name
        coll.objects.link(empty)
        created.append(empty)
    if context.view_layer is not None:
        context.view_layer.update()
    return created


def remove_markers(arm: bpy.types.Object) -> int:
    markers = markers_of(arm)
    for obj in markers:
        bpy.data.objects.remove(obj, do_unlink=True)
    return len(markers)


def marker_pixels(marker_objs: list[bpy.types.Object], camera: bpy.types.Object,
                  cam_int: np.ndarray) -> np.ndarray:
    """Current image pixels of the markers, wherever the user dragged them."""
    inverse = np.asarray(camera.matrix_world.inverted())
    world = np.array([[*obj.matrix_world.translation[:3], 1.0] for obj in marker_objs])
    local = (inverse @ world.T).T[:, :3]
    return keypoints.camera_local_to_pixels(local, cam_int)


def refine_request(context: bpy.types.Context, arm: bpy.types.Object,
                   send_all: bool, pin: bool = True) -> dict[str, Any]:
    """The reconstruct request for Refine; InputError says what is missing."""
    path = str(_get(arm, PROP_IMAGE, ""))
    if not path or not os.path.isfile(path):
        raise InputError(f"The photo of {arm.name} is gone ({path or 'not recorded'}): "
                         "reconstruct again")
    markers = markers_of(arm)
    if not markers:
        raise InputError(f"{arm.name} has no markers: press Add Markers first")
    camera = markers[0].parent or photo_camera(context, arm)
    cam_int = cam_int_of(arm)
    labels = [int(m[MARKER_INDEX]) for m in markers]
    original = np.array([list(m[MARKER_PIXEL]) for m in markers], dtype=np.float64)
    try:
        current = marker_pixels(markers, camera, cam_int)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    prompts = keypoints.moved_prompts(labels, original, current, send_all=send_all)
    if not prompts:
        raise InputError("No marker was moved: drag a marker onto its joint in the camera "
                         "view (or enable Send All Markers)")
    request: dict[str, Any] = {
        "image_path": path,
        "mode": str(_get(arm, PROP_MODE, "full")),
        "intrinsics": cam_int.tolist(),
        "prompts": prompts,
        "fit_prompts": bool(pin),
    }
    if _has(arm, PROP_BBOX):
        request["boxes"] = np.asarray([list(arm[PROP_BBOX])], dtype=np.float32)
    return request


# --- operators ---------------------------------------------------------------------------------


class SAM3D_OT_add_markers(bpy.types.Operator):
    """Add draggable keypoint markers on the photo at the predicted joints of the selected
    character (look through its camera to drag them)"""

    bl_idname = "sam3d_body.add_markers"
    bl_label = "Add Markers"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        try:
            arm = target_armature(context)
            created = create_markers(context, arm, float(scene_settings(context).marker_distance))
        except (InputError, ValueError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Added {len(created)} markers for {arm.name}")
        return {"FINISHED"}


class SAM3D_OT_remove_markers(bpy.types.Operator):
    """Delete the keypoint markers of the selected character"""

    bl_idname = "sam3d_body.remove_markers"
    bl_label = "Remove Markers"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        try:
            arm = target_armature(context)
        except InputError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Removed {remove_markers(arm)} markers")
        return {"FINISHED"}


class SAM3D_OT_refine(JobOperator, bpy.types.Operator):
    """Re-run the model with the moved markers as keypoint prompts and update the pose in
    place (Esc cancels)"""

    bl_idname = "sam3d_body.refine"
    bl_label = "Refine"
    # The pose changes when the result arrives; the session pushes one undo step then.
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        try:
            arm = target_armature(context)
            settings = scene_settings(context)
            request = refine_request(context, arm, settings.refine_all_markers, settings.refine_pin)
            submit_job(context, request, request["image_path"], {}, kind="refine",
                       target=arm.name)
        except InputError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        status(context).message = f"Refining {arm.name} ({len(request['prompts'])} prompts)"
        return {"FINISHED"}



CLASSES = (SAM3D_OT_add_markers, SAM3D_OT_remove_markers, SAM3D_OT_refine)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)

