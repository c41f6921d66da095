# SPDX-License-Identifier: GPL-3.0-or-later
"""Operators: Reconstruct, Cancel, Start/Stop server, Test Connection, Export FBX / glTF,
Import Result (a saved .npz, also in File > Import).

Reconstruct never blocks: it validates the inputs, hands the request to the session's
`JobRunner` (addon/session.py) and returns; invoked from the UI it stays modal, passing every
event through, so Esc cancels the job. The session's timer applies the result.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Literal, cast

import bpy
import numpy as np
from bpy.props import StringProperty

from ..protocol.clip_result import VIDEO_SUFFIXES, is_video_file
from ..protocol.sequence import is_clip_source, pattern_of, sequence_files
from . import preferences
from .package import root_package
from .properties import scene_settings, status
from .session import (SESSION, InputError, PendingReconstruct, _tls_settings, drain_events,
                      ensure_timer, finish_job, server_config, status_bar, update_server_state)

__all__ = ["SESSION", "InputError", "PendingReconstruct", "_tls_settings", "drain_events",
           "server_config"]
BUSY_MESSAGE = "A reconstruction is already running: wait for it, or press Cancel (Esc)"


# What Operator.execute returns.
OperatorResult = set[
    Literal["RUNNING_MODAL", "CANCELLED", "FINISHED", "PASS_THROUGH", "INTERFACE"]
]


# ---------------------------------------------------------------------------------------------
# Inputs


def editor_image(context: bpy.types.Context) -> bpy.types.Image | None:
    """The image shown in the active Image Editor, else in any Image Editor of the window."""
    space = context.space_data
    if isinstance(space, bpy.types.SpaceImageEditor) and space.image is not None:
        return space.image
    screen = context.screen
    if screen is None:
        return None
    for area in screen.areas:
        if area.type == "IMAGE_EDITOR":
            editor = area.spaces.active
            if isinstance(editor, bpy.types.SpaceImageEditor) and editor.image is not None:
                return editor.image
    return None


def cache_dir() -> str:
    """A writable folder for temporary copies (never the add-on's own, possibly read-only dir)."""
    try:
        return bpy.utils.extension_path_user(root_package(), path="cache", create=True)
    except ValueError:  # enabled as a plain package (tests, development checkout)
        path = os.path.join(tempfile.gettempdir(), "sam3d_body_cache")
        os.makedirs(path, exist_ok=True)
        return path


def image_file_for(image: bpy.types.Image) -> str:
    """A file on disk with this image's pixels: its own file when it is saved and unchanged,
    else a copy in the cache folder (packed, generated or painted-on images). An image sequence
    or movie gives its clip (the folder of the sequence, or the movie file)."""
    if image.source in {"SEQUENCE", "MOVIE"}:
        return clip_path_of(image, "Image")
    if image.source not in {"FILE", "GENERATED"}:
        raise InputError(f"Image '{image.name}' is a {image.source.lower()}; use a still image")
    path = bpy.path.abspath(image.filepath, library=image.library) if image.filepath else ""
    if image.source == "FILE" and path and os.path.isfile(path) and not image.is_dirty \
            and image.packed_file is None:
        return os.path.normpath(path)
    safe = bpy.path.clean_name(image.name) or "image"
    if image.packed_file is not None and not image.is_dirty:
        ext = os.path.splitext(image.filepath)[1] or ".png"
        out = os.path.join(cache_dir(), safe + ext)
        with open(out, "wb") as f:
            # The stubs call it a str; Blender hands over the file's bytes.
            f.write(cast(bytes, image.packed_file.data))
        return out
    if image.size[0] == 0 or image.size[1] == 0:
        raise InputError(f"Image '{image.name}' has no pixels (missing file?)")
    out = os.path.join(cache_dir(), safe + ".png")
    image.save_render(out)
    return out


def resolve_image_path(context: bpy.types.Context) -> str:
    """The photo to reconstruct, as an absolute file path; InputError says what is wrong."""
    settings = scene_settings(context)
    if settings.image_source == "FILE":
        raw = settings.image_path.strip()
        if not raw:
            raise InputError("No image: choose an image file in the Input panel")
        path = os.path.normpath(bpy.path.abspath(raw))
        if not os.path.isfile(path):
            raise InputError(f"Image file not found: {path}")
        return path
    if settings.image_source == "CLIP":
        return movie_clip_path(settings.movie_clip)
    if settings.image_source == "CAMERA":
        image = camera_background_image(context)
        if image is None:
            raise InputError("No image: the scene camera has no background image (Camera "
                             "properties > Background Images)")
        return image_file_for(image)
    image = editor_image(context)
    if image is None:
        raise InputError("No image: open the photo in an Image Editor, or choose Image: File "
                         "in the Input panel")
    return image_file_for(image)


def movie_clip_path(clip: bpy.types.MovieClip | None) -> str:
    """What the server reads for a Movie Clip; InputError says what is wrong."""
    if clip is None:
        raise InputError("No clip: choose a Movie Clip in the Input panel (open one in the Movie "
                         "Clip Editor first)")
    return clip_path_of(clip, "Movie Clip")


def clip_path_of(datablock: Any, what: str) -> str:
    """A Movie Clip's or an Image's clip as the server reads it: the movie file, or the pattern
    of an image sequence (`walk_####.png`: its frames only, not the folder's other files)."""
    path = os.path.normpath(bpy.path.abspath(datablock.filepath, library=datablock.library))
    if datablock.source == "SEQUENCE":
        folder = os.path.dirname(path)
        if not os.path.isdir(folder):
            raise InputError(f"{what} '{datablock.name}': image-sequence folder not found: {folder}")
        try:
            pattern = pattern_of(path)
            sequence_files(pattern)
        except ValueError as exc:
            raise InputError(f"{what} '{datablock.name}': {exc}") from None
        return pattern
    if not is_video_file(path):
        raise InputError(f"{what} '{datablock.name}': movie file not found or not a video "
                         f"({', '.join(sorted(VIDEO_SUFFIXES))}): {path}")
    return path


def is_clip_path(path: str) -> bool:
    """A movie file, a folder or a sequence pattern: what goes to the server as a clip."""
    return is_clip_source(path)


def camera_background_image(context: bpy.types.Context) -> bpy.types.Image | None:
    """The first background image of the scene's active camera, if any."""
    scene = context.scene
    camera = scene.camera if scene is not None else None
    if camera is None or camera.type != "CAMERA":
        return None
    for bg in cast(bpy.types.Camera, camera.data).background_images:
        if bg.source == "IMAGE" and bg.image is not None:
            return bg.image
    return None


def alpha_mask(path: str) -> np.ndarray:
    """The photo's alpha channel as an HxW uint8 mask on the 0/255 scale it is stored in (255 =
    person), top row first. A binary alpha passes as read; soft (anti-aliased) edges are cut at
    50% coverage, deliberately: a cut-out photo nearly always has them, and 0/255 is what Meta's
    code gets from the same alpha saved as a mask file (docs/ARCHITECTURE.md, masks)."""
    image = bpy.data.images.load(path, check_existing=True)
    width, height = int(image.size[0]), int(image.size[1])
    if width <= 0 or height <= 0:
        raise InputError(f"Cannot read the image {path}")
    if image.channels < 4:
        raise InputError(f"'Use Alpha as Mask' is on, but {os.path.basename(path)} has no "
                         "alpha channel")
    pixels = np.empty(width * height * image.channels, dtype=np.float32)
    cast(Any, image.pixels).foreach_get(pixels)
    alpha = pixels.reshape(height, width, image.channels)[::-1, :, 3]
    mask = np.where(alpha >= 0.5, 255, 0).astype(np.uint8)
    if not mask.any():
        raise InputError(f"The alpha channel of {os.path.basename(path)} is empty: nothing to "
                         "use as a mask")
    if mask.all():
        raise InputError(f"The alpha channel of {os.path.basename(path)} is fully opaque: it "
                         "does not mask anyone out")
    return mask


def mask_box(mask: np.ndarray) -> list[float]:
    """The pixel box (x1, y1, x2, y2) around a mask's set pixels."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def person_box(context: bpy.types.Context, width: int, height: int) -> list[float] | None:
    """The box of the one person to reconstruct, or None for everyone detected."""
    settings = scene_settings(context)
    if settings.person_mode == "ALL":
        return None
    if settings.person_mode == "BOX":
        x1, y1, x2, y2 = (float(v) for v in settings.person_box)
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise InputError(f"Person box ({x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}) must have "
                             f"x1 < x2 <= {width} and y1 < y2 <= {height} (image pixels)")
        return [x1, y1, x2, y2]
    from ..scene.tags import PROP_BBOX

    index = int(settings.person_index)
    name = settings.last_collection
    if name and name in bpy.data.collections:
        for obj in bpy.data.collections[name].all_objects:
            if obj.type == "ARMATURE" and obj.get("sam3d_person") == index and PROP_BBOX in obj:
                return [float(v) for v in obj[PROP_BBOX]]
    raise InputError(f"No person {index} in the last reconstruction: run Reconstruct with "
                     "'All People' first, then pick the index of the person to keep")


def image_size(path: str) -> tuple[int, int]:
    """(width, height) read through Blender's image loader."""
    image = bpy.data.images.load(path, check_existing=True)
    width, height = int(image.size[0]), int(image.size[1])
    if width <= 0 or height <= 0:
        raise InputError(f"Cannot read the image {path}")
    return width, height


def reconstruct_request(context: bpy.types.Context, image_path: str,
                        send_bytes: bool = False) -> dict[str, Any]:
    """Keyword arguments for `JobRunner.submit_reconstruct`.

    A local server reads the photo from disk; a studio server does not share our disk, so it
    gets the file's bytes (`send_bytes`)."""
    settings = scene_settings(context)
    request: dict[str, Any] = {"mode": settings.mode}
    if send_bytes:
        try:
            with open(image_path, "rb") as f:
                request["image_bytes"] = f.read()
        except OSError as exc:
            raise InputError(f"Cannot read the image {image_path}: {exc}") from None
    else:
        request["image_path"] = image_path
    if settings.use_focal_length or settings.person_mode != "ALL" or settings.use_alpha_mask:
        width, height = image_size(image_path)
        if settings.use_focal_length:
            focal = float(settings.focal_length_px)
            request["intrinsics"] = [focal, focal, width / 2.0, height / 2.0]
        box = person_box(context, width, height)
        if settings.use_alpha_mask:
            mask = alpha_mask(image_path)
            request["masks"] = [mask]
            box = box if box is not None else mask_box(mask)
        if box is not None:
            request["boxes"] = np.asarray([box], dtype=np.float32)
    return request


def clip_request(context: bpy.types.Context, clip_path: str) -> dict[str, Any]:
    """Keyword arguments for `JobRunner.submit_clip`: the clip on this machine's disk."""
    settings = scene_settings(context)
    request: dict[str, Any] = {"clip_path": clip_path, "mode": settings.mode, "step": int(settings.clip_step),
                               "start": int(settings.clip_start) - 1}  # the panel counts from 1
    if settings.clip_end:
        if settings.clip_end < settings.clip_start:
            raise InputError(f"Last Frame ({settings.clip_end}) is before First Frame "
                             f"({settings.clip_start}); set it to 0 for the whole clip")
        request["stop"] = int(settings.clip_end)  # inclusive, 1-based = exclusive, 0-based
    if settings.clip_max_people:
        request["max_people"] = int(settings.clip_max_people)
    if settings.person_mode == "BOX":
        request["boxes"] = np.asarray([[float(v) for v in settings.person_box]], dtype=np.float32)
    elif settings.person_mode == "INDEX":
        raise InputError("'Person: Index' picks from a photo's last reconstruction; for a clip use All "
                         "People or a Box on its first frame")
    if settings.use_alpha_mask:
        raise InputError("'Use Alpha as Mask' applies to photos, not to clips")
    return request


def clip_options(context: bpy.types.Context) -> dict[str, Any]:
    """Options for `apply_clip` from the scene's settings."""
    settings = scene_settings(context)
    return {
        "smoothing": float(settings.clip_smoothing),
        "foot_lock": bool(settings.clip_foot_lock),
        "camera": bool(settings.create_camera),
        "naming": str(settings.naming_preset),
        "proportions": str(settings.proportions),
        "mesh": bool(settings.build_mesh),
        "replace": bool(settings.clip_replace),
        "correctives": bool(settings.corrective_shape_key),
    }


def apply_options(context: bpy.types.Context) -> dict[str, Any]:
    """Options for `apply_result` from the scene's settings."""
    settings = scene_settings(context)
    return {
        "correctives": bool(settings.corrective_shape_key),
        "pose": bool(settings.pose),
        "camera": bool(settings.create_camera),
        "scene_camera": bool(settings.create_camera and settings.scene_camera),
        "naming": str(settings.naming_preset),
        "proportions": str(settings.proportions),
        "mesh": bool(settings.build_mesh),
    }


# ---------------------------------------------------------------------------------------------
# Operators


def submit_job(context: bpy.types.Context, request: dict[str, Any], image_path: str | None,
               options: dict[str, Any], kind: str = "reconstruct", target: str = "") -> None:
    """Send one reconstruct request (Reconstruct or Refine); InputError says what is wrong."""
    if SESSION.pending is not None:
        raise InputError(BUSY_MESSAGE)
    config = server_config(context)
    if "address" in config and kind == "clip":
        request["upload"] = True  # a server on another machine gets the clip's files
    if "address" in config and "image_path" in request:
        path = request.pop("image_path")
        try:
            with open(path, "rb") as f:
                request["image_bytes"] = f.read()
        except OSError as exc:
            raise InputError(f"Cannot read the image {path}: {exc}") from None
    if SESSION.runner is None and not preferences.get(context).auto_start:
        raise InputError("The server is not running: press Start in the Server panel "
                         "(or enable Start Server Automatically)")
    runner = SESSION.ensure_runner(config)
    live = status(context)
    live.last_error = ""
    live.log_tail = ""
    SESSION.request_rig()
    job = runner.submit_clip(**request) if kind == "clip" else runner.submit_reconstruct(**request)
    SESSION.pending = PendingReconstruct(job, image_path, options, kind=kind, target=target)
    live.job_running = True
    live.progress = 0.0
    live.message = "Submitted"
    status_bar(context, "SAM 3D Body: submitted (Esc or Cancel stops it)")
    update_server_state(context)
    ensure_timer()


class JobOperator:
    """Invoked from the UI, the operator stays modal until its job ends so Esc cancels it;
    every other event passes through (the UI stays usable)."""

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> OperatorResult:
        result = self.execute(context)  # type: ignore[attr-defined]
        if "FINISHED" in result and SESSION.pending is not None and context.window_manager:
            context.window_manager.modal_handler_add(cast(bpy.types.Operator, self))
            return {"RUNNING_MODAL"}
        return result

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> OperatorResult:
        if SESSION.pending is None:
            error = status(context).last_error
            if error:  # the job failed after execute returned: say so where the user looks
                cast(bpy.types.Operator, self).report({"ERROR"}, error)
            return {"FINISHED"}
        if event.type == "ESC" and event.value == "PRESS":
            SESSION.pending.job.cancel()
            status(context).message = "Cancelling"
            return {"FINISHED"}
        return {"PASS_THROUGH"}


class SAM3D_OT_reconstruct(JobOperator, bpy.types.Operator):
    """Reconstruct the people in the photo as rigged MHR characters (Esc cancels)"""

    bl_idname = "sam3d_body.reconstruct"
    bl_label = "Reconstruct"
    # No UNDO here: the scene changes later, when the result arrives; drain_events pushes
    # exactly one undo step for it.
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        try:
            if SESSION.pending is not None:
                raise InputError(BUSY_MESSAGE)
            image_path = resolve_image_path(context)
            config = server_config(context)
            if is_clip_path(image_path):
                submit_job(context, clip_request(context, image_path), image_path, clip_options(context),
                           kind="clip")
            else:
                request = reconstruct_request(context, image_path, send_bytes="address" in config)
                submit_job(context, request, image_path, apply_options(context))
        except InputError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        return {"FINISHED"}


class SAM3D_OT_cancel(bpy.types.Operator):
    """Stop the running reconstruction"""

    bl_idname = "sam3d_body.cancel"
    bl_label = "Cancel"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return SESSION.pending is not None

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        if SESSION.pending is None:
            self.report({"WARNING"}, "Nothing is running")
            return {"CANCELLED"}
        if SESSION.pending.result is not None:
            # the server is done and nothing was built yet: drop the result, the scene stays
            finish_job(context)
            status(context).message = "Cancelled"
            return {"FINISHED"}
        SESSION.pending.job.cancel()
        status(context).message = "Cancelling"
        return {"FINISHED"}


class SAM3D_OT_server_start(bpy.types.Operator):
    """Start the inference server and load the model (in the background)"""

    bl_idname = "sam3d_body.server_start"
    bl_label = "Start Server"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        try:
            SESSION.ensure_runner(server_config(context))
        except InputError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        live = status(context)
        live.last_error = ""
        live.log_tail = ""
        # Fetching the rig starts the process and loads the model on the job's thread.
        SESSION.request_rig()
        live.message = "Starting the server"
        update_server_state(context)
        ensure_timer()
        return {"FINISHED"}


class SAM3D_OT_server_stop(bpy.types.Operator):
    """Stop the inference server (cancels a running reconstruction)"""

    bl_idname = "sam3d_body.server_stop"
    bl_label = "Stop Server"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        SESSION.stop()
        live = status(context)
        live.job_running = False
        live.progress = 0.0
        live.message = "Server stopped"
        update_server_state(context)
        return {"FINISHED"}


def export_objects(context: bpy.types.Context) -> list[bpy.types.Object]:
    """Selected armatures with their skinned meshes, else the last reconstruction's objects."""
    selected = [obj for obj in (context.selected_objects or []) if obj.type == "ARMATURE"]
    if not selected:
        name = scene_settings(context).last_collection
        if not name or name not in bpy.data.collections:
            return []
        return [obj for obj in bpy.data.collections[name].all_objects if obj.type in {"ARMATURE", "MESH"}]
    objects: list[bpy.types.Object] = []
    for arm in selected:
        objects.append(arm)
        objects += [child for child in arm.children if child.type == "MESH"]
    return objects


def export_path(raw: str, suffix: str, what: str) -> str:
    """An export setting as an absolute path ending in `suffix`; InputError says what is wrong."""
    if not raw.strip():
        raise InputError(f"No {what} file: set one in the Export panel")
    if raw.startswith("//") and not bpy.data.filepath:
        raise InputError(f"Save the .blend first, or use an absolute {what} path")
    path = os.path.normpath(bpy.path.abspath(raw))
    if not path.lower().endswith(suffix):
        path += suffix
    folder = os.path.dirname(path)
    if folder and not os.path.isdir(folder):
        raise InputError(f"Folder does not exist: {folder}")
    return path


class _ExportOperator:
    """Export the character (selected armatures, else the last reconstruction) to a file."""

    suffix = ""
    what = ""
    setting = ""  # the scene setting with the default path

    filepath: StringProperty(subtype="FILE_PATH", options={"SKIP_SAVE"})

    def write(self, context: bpy.types.Context, path: str, objects: list[Any]) -> None:
        raise NotImplementedError

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        op = cast(bpy.types.Operator, self)
        try:
            path = export_path(self.filepath or getattr(scene_settings(context), self.setting),
                               self.suffix, self.what)
        except InputError as exc:
            op.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        objects = export_objects(context)
        if not objects:
            op.report({"ERROR"}, "Nothing to export: select an armature or run Reconstruct")
            return {"CANCELLED"}
        # The writer holds the main thread: the window's progress cursor is what still moves.
        wm = context.window_manager
        if wm is not None:
            wm.progress_begin(0, 1)
        status_bar(context, f"SAM 3D Body: exporting {self.what} to {os.path.basename(path)}…")
        try:
            self.write(context, path, objects)
        except (ValueError, OSError, RuntimeError) as exc:
            op.report({"ERROR"}, f"{self.what} export failed: {exc}")
            return {"CANCELLED"}
        finally:
            if wm is not None:
                wm.progress_end()
            status_bar(context, None)
        op.report({"INFO"}, f"Exported {path}")
        return {"FINISHED"}


class SAM3D_OT_export_fbx(_ExportOperator, bpy.types.Operator):
    """Export the character (selected armatures, else the last reconstruction) as FBX"""

    bl_idname = "sam3d_body.export_fbx"
    bl_label = "Export FBX"
    bl_options = {"REGISTER"}
    suffix, what, setting = ".fbx", "FBX", "export_path"

    def write(self, context: bpy.types.Context, path: str, objects: list[Any]) -> None:
        from ..scene.export import export_fbx

        export_fbx(path, objects, scene_settings(context).export_preset, context=context)


class SAM3D_OT_export_glb(_ExportOperator, bpy.types.Operator):
    """Export the character (selected armatures, else the last reconstruction) as binary glTF"""

    bl_idname = "sam3d_body.export_glb"
    bl_label = "Export glTF"
    bl_options = {"REGISTER"}
    suffix, what, setting = ".glb", "glTF", "glb_path"

    def write(self, context: bpy.types.Context, path: str, objects: list[Any]) -> None:
        from ..scene.export import export_glb

        export_glb(path, objects, context=context)


class SAM3D_OT_import_result(bpy.types.Operator):
    """Build the characters of a saved SAM 3D Body result (.npz) without running the model"""

    bl_idname = "sam3d_body.import_result"
    bl_label = "Import Result"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(subtype="FILE_PATH", options={"SKIP_SAVE"})
    filter_glob: StringProperty(default="*.npz", options={"HIDDEN"})
    image_path: StringProperty(
        name="Photo",
        subtype="FILE_PATH",
        description="Optional: the photo, as the camera's background and for Refine",
    )
    rig_path: StringProperty(
        name="Rig File",
        subtype="FILE_PATH",
        description="Optional: a rig .npz, for a result file without embedded rig_ arrays",
    )

    def inputs(self) -> tuple[str, str | None, str | None]:
        """(result, photo or None, rig or None) as absolute paths; InputError when wrong."""
        path, image, rig = (os.path.normpath(bpy.path.abspath(raw.strip())) if raw.strip()
                            else None for raw in (self.filepath, self.image_path, self.rig_path))
        if path is None:
            raise InputError("Choose a result file (.npz)")
        if not path.lower().endswith(".npz"):
            raise InputError(f"A result file ends in .npz: {os.path.basename(path)}")
        if rig is not None and not rig.lower().endswith(".npz"):
            raise InputError(f"The rig file must be a rig .npz (MHR's .pt needs torch, which "
                             f"Blender does not have): {os.path.basename(rig)}")
        for what, file in (("Result file", path), ("Photo", image), ("Rig file", rig)):
            if file is not None and not os.path.isfile(file):
                raise InputError(f"{what} not found: {file}")
        return path, image, rig

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> OperatorResult:
        if context.window_manager is None:
            return self.execute(context)
        context.window_manager.fileselect_add(self)  # the file browser calls execute
        return {"RUNNING_MODAL"}

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        from ..scene.import_result import import_result

        try:
            path, image, rig = self.inputs()
            created = import_result(context, path, rig=rig, image_path=image,
                                    options=apply_options(context))
        except InputError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        except (ValueError, KeyError, OSError, RuntimeError) as exc:
            self.report({"ERROR"}, f"Could not import {os.path.basename(self.filepath)}: {exc}")
            return {"CANCELLED"}
        people = sum(1 for obj in created if obj.type == "ARMATURE")
        if created and created[0].users_collection:
            scene_settings(context).last_collection = created[0].users_collection[0].name
        self.report({"INFO"}, f"Imported {people} {'person' if people == 1 else 'people'} from "
                    f"{os.path.basename(path)}")
        return {"FINISHED"}


def menu_import(self: Any, context: bpy.types.Context) -> None:
    self.layout.operator(SAM3D_OT_import_result.bl_idname, text="SAM 3D Body result (.npz)")


class SAM3D_OT_test_connection(bpy.types.Operator):
    """Connect to the server and show its version, device, GPU and model"""

    bl_idname = "sam3d_body.test_connection"
    bl_label = "Test Connection"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        from .session import start_connection_check

        try:
            config = server_config(context)
        except InputError as exc:
            status(context).connection_info = str(exc)
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        start_connection_check(context, config)
        return {"FINISHED"}


class SAM3D_OT_copy_log(bpy.types.Operator):
    """Copy the last error and the server's log tail to the clipboard"""

    bl_idname = "sam3d_body.copy_log"
    bl_label = "Copy Log"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        live = status(context)
        text = "\n".join(part for part in (live.last_error, live.log_tail) if part)
        if not text or context.window_manager is None:
            self.report({"WARNING"}, "No error or server log to copy")
            return {"CANCELLED"}
        context.window_manager.clipboard = text
        self.report({"INFO"}, "Copied the error and the server log")
        return {"FINISHED"}


CLASSES = (
    SAM3D_OT_copy_log,
    SAM3D_OT_test_connection,
    SAM3D_OT_reconstruct,
    SAM3D_OT_cancel,
    SAM3D_OT_server_start,
    SAM3D_OT_server_stop,
    SAM3D_OT_export_fbx,
    SAM3D_OT_export_glb,
    SAM3D_OT_import_result,
)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.TOPBAR_MT_file_import.append(menu_import)


def unregister() -> None:
    from .session import stop_timer

    stop_timer()
    SESSION.stop()
    bpy.types.TOPBAR_MT_file_import.remove(menu_import)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
