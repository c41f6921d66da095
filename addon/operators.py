# SPDX-License-Identifier: GPL-3.0-or-later
"""Operators (Reconstruct, Cancel, Start/Stop server, Export FBX) and the main-thread drain.

Reconstruct never blocks: it validates the inputs, hands the request to a `JobRunner`
(addon/client.py; it starts the server on a background thread when needed) and returns. A
`bpy.app.timers` callback calls `drain_events()` on the main thread, which updates the status
shown by the panel and, on a result, builds the scene with `apply_result`. Timers do not run
in background mode, so tests call `drain_events()` themselves.
"""
from __future__ import annotations

import ipaddress
import os
import queue
import tempfile
import traceback
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import bpy
from bpy.props import StringProperty

from . import preferences, root_package
from .client import Job, JobEvent, JobRunner, ServerProcess
from .properties import scene_settings, status
from .tls import TlsError, TlsSettings

UNDO_MESSAGE = "SAM 3D Body Reconstruct"
POLL_BUSY_S = 0.1   # timer interval while a job runs
POLL_IDLE_S = 1.0   # while the server idles (notices a crash between jobs)
# Appended to `python -m server serve` (development: e.g. ["--engine", "module:factory"]).
EXTRA_SERVER_ARGS: list[str] = []


# What Operator.execute returns.
OperatorResult = set[
    Literal["RUNNING_MODAL", "CANCELLED", "FINISHED", "PASS_THROUGH", "INTERFACE"]
]


class InputError(Exception):
    """Something the user can fix in the panel or the preferences; the text says what."""


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
    else a copy in the cache folder (packed, generated or painted-on images)."""
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
    image = editor_image(context)
    if image is None:
        raise InputError("No image: open the photo in an Image Editor, or choose Image: File "
                         "in the Input panel")
    return image_file_for(image)


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
    if settings.use_focal_length:
        width, height = image_size(image_path)
        focal = float(settings.focal_length_px)
        request["intrinsics"] = [focal, focal, width / 2.0, height / 2.0]
    return request


def apply_options(context: bpy.types.Context) -> dict[str, Any]:
    """Options for `apply_result` from the scene's settings."""
    settings = scene_settings(context)
    return {
        "correctives": bool(settings.corrective_shape_key),
        "pose": bool(settings.pose),
        "camera": bool(settings.create_camera),
        "scene_camera": bool(settings.create_camera and settings.scene_camera),
    }


# ---------------------------------------------------------------------------------------------
# Server configuration


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tls_settings(prefs: Any, host: str) -> TlsSettings | None:
    """TLS for a studio server; required off this machine unless explicitly waived."""
    ca_file = bpy.path.abspath(prefs.remote_ca_file.strip()) if prefs.remote_ca_file else ""
    pin = prefs.remote_pin.strip()
    if ca_file and not os.path.isfile(ca_file):
        raise InputError(f"CA certificate not found: {ca_file}")
    if not ca_file and not pin:
        if _is_loopback(host) or prefs.remote_allow_plain:
            return None
        raise InputError(f"Set a CA certificate or certificate fingerprint for {host} in the "
                         "add-on preferences (or allow unencrypted connections)")
    try:
        return TlsSettings(ca_file=ca_file or None, pin_sha256=pin or None)
    except TlsError as exc:
        raise InputError(f"Studio server TLS: {exc}") from None


def server_config(context: bpy.types.Context) -> dict[str, Any]:
    """The runner settings from the preferences, validated; InputError says what to fix."""
    try:
        prefs = preferences.get(context)
    except KeyError:
        raise InputError("The SAM 3D Body add-on is not enabled") from None
    if prefs.server_mode == "REMOTE":
        host = prefs.remote_host.strip()
        if not host:
            raise InputError("Set the studio server's host in the add-on preferences")
        if not _is_loopback(host) and not bpy.app.online_access:
            raise InputError(f"Online access is off (Preferences > System): cannot reach the "
                             f"studio server {host}")
        if not prefs.remote_token:
            raise InputError("Set the studio server's token in the add-on preferences")
        return {"address": (host, int(prefs.remote_port), prefs.remote_token),
                "tls": _tls_settings(prefs, host)}

    python = bpy.path.abspath(prefs.server_python.strip()) if prefs.server_python.strip() else ""
    if not python:
        raise InputError("Set 'Server Python' in the add-on preferences (the Python of the "
                         "environment with the server installed)")
    if not os.path.isfile(python):
        raise InputError(f"Server Python not found: {python}")
    config: dict[str, Any] = {"python": python, "device": prefs.device}
    if prefs.checkpoint_source == "FOLDER":
        folder = bpy.path.abspath(prefs.checkpoint_dir.strip()) if prefs.checkpoint_dir else ""
        if not folder or not os.path.isdir(folder):
            raise InputError(f"Checkpoint folder not found: {folder or '(not set)'}; set it in "
                             "the add-on preferences")
        config["checkpoint"] = os.path.normpath(folder)
    else:
        repo = prefs.checkpoint_repo.strip()
        if not repo or repo.count("/") != 1:
            raise InputError(f"Checkpoint repository must look like 'owner/name', got "
                             f"'{repo}'")
        config["repo"] = repo
    if prefs.mhr_path.strip():
        mhr = os.path.normpath(bpy.path.abspath(prefs.mhr_path.strip()))
        if not os.path.isfile(mhr):
            raise InputError(f"MHR model not found: {mhr}")
        config["mhr"] = mhr
    # Blender's Online Access switch also governs the server we launch: offline, it may only
    # use an already downloaded checkpoint.
    config["env"] = {} if bpy.app.online_access else {"HF_HUB_OFFLINE": "1"}
    config["ready_timeout"] = float(prefs.start_timeout)
    return config


def make_runner(config: dict[str, Any]) -> JobRunner:
    if "address" in config:
        return JobRunner(address=config["address"], tls=config.get("tls"))
    server = ServerProcess(
        config["python"], checkpoint=config.get("checkpoint"), repo=config.get("repo"),
        mhr=config.get("mhr"), device=config["device"], env=config["env"],
        ready_timeout=config["ready_timeout"], extra_args=list(EXTRA_SERVER_ARGS))
    return JobRunner(server)


# ---------------------------------------------------------------------------------------------
# Session state (this Blender process; not saved)


@dataclass
class PendingReconstruct:
    job: Job
    image_path: str | None  # the photo (camera background); None builds without it
    options: dict[str, Any]
    result: dict[str, Any] | None = None


@dataclass
class Session:
    runner: JobRunner | None = None
    config: dict[str, Any] = field(default_factory=dict)
    rig: dict[str, Any] | None = None
    rig_job: Job | None = None
    pending: PendingReconstruct | None = None

    def busy(self) -> bool:
        return self.pending is not None or self.rig_job is not None

    def server_alive(self) -> bool:
        runner = self.runner
        if runner is None:
            return False
        if runner.server is None:
            return True  # a studio server someone else runs
        return runner.server.alive()

    def ensure_runner(self, config: dict[str, Any]) -> JobRunner:
        """The runner for these settings; a changed configuration replaces an idle server."""
        if self.runner is not None and config != self.config:
            if self.busy():
                raise InputError("The server is busy; cancel the running job before changing "
                                 "server settings")
            self.stop()
        if self.runner is None:
            self.runner = make_runner(config)
            self.config = dict(config)
        return self.runner

    def request_rig(self) -> None:
        if self.rig is None and self.rig_job is None and self.runner is not None:
            self.rig_job = self.runner.submit_rig()

    def stop(self) -> None:
        runner, self.runner = self.runner, None
        if runner is not None:
            runner.stop(timeout=3.0)
        self.rig = None
        self.rig_job = None
        self.pending = None
        self.config = {}


SESSION = Session()


# ---------------------------------------------------------------------------------------------
# Main-thread drain


def _fail(context: bpy.types.Context, message: str, log_tail: str = "") -> None:
    live = status(context)
    live.last_error = message
    live.log_tail = log_tail
    live.message = ""
    print(f"SAM 3D Body: {message}" + (f"\n{log_tail}" if log_tail else ""))


def _finish_job(context: bpy.types.Context) -> None:
    live = status(context)
    live.job_running = False
    live.progress = 0.0
    SESSION.pending = None


def _event_error(event: JobEvent) -> str:
    if event.kind == "died":
        return f"The server stopped: {event.message}"
    return event.message + (f" [{event.code}]" if event.code else "")


def _handle_rig_event(context: bpy.types.Context, event: JobEvent) -> None:
    live = status(context)
    if event.kind == "progress":
        if SESSION.pending is None:
            live.message = event.message
        return
    SESSION.rig_job = None
    if event.kind == "result" and event.data is not None:
        SESSION.rig = dict(event.data)
        if SESSION.pending is None:
            live.message = "Server ready"
        return
    if SESSION.pending is not None:
        SESSION.pending.job.cancel()
        _finish_job(context)
    _fail(context, _event_error(event), event.log_tail)


def _handle_job_event(context: bpy.types.Context, event: JobEvent) -> None:
    live = status(context)
    pending = SESSION.pending
    assert pending is not None
    if event.kind == "progress":
        live.progress = min(max(event.fraction, 0.0), 1.0)
        live.message = event.message
    elif event.kind == "result":
        pending.result = dict(event.data or {})
        live.progress = 1.0
        live.message = "Building the character"
    elif event.code == "cancelled":
        _finish_job(context)
        live.message = "Cancelled"
    else:
        _finish_job(context)
        _fail(context, _event_error(event), event.log_tail)


def _apply_pending(context: bpy.types.Context) -> None:
    from .apply import apply_result  # numpy-heavy; loaded on first use

    pending = SESSION.pending
    assert pending is not None and pending.result is not None and SESSION.rig is not None
    live = status(context)
    _finish_job(context)
    try:
        created = apply_result(context, pending.result, SESSION.rig,
                               image_path=pending.image_path, options=pending.options)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as exc:
        _fail(context, f"Could not build the character: {exc}")
        return
    except Exception as exc:  # a bug, not bad data: keep the traceback for the report
        traceback.print_exc()
        _fail(context, f"Could not build the character ({type(exc).__name__}): {exc}")
        return
    names = [obj.name for obj in created]
    if created and created[0].users_collection:
        scene_settings(context).last_collection = created[0].users_collection[0].name
    live.message = f"Built {len(names)} objects"
    try:
        bpy.ops.ed.undo_push(message=UNDO_MESSAGE)
    except RuntimeError:
        pass  # no context to push an undo step in; the scene is built all the same


def drain_events(context: bpy.types.Context) -> bool:
    """Handle every event the background jobs queued; build the result when it is complete.

    Runs on the main thread (timer or test). Returns True while a job is still running."""
    runner = SESSION.runner
    live = status(context)
    if runner is not None:
        while True:
            try:
                event = runner.events.get_nowait()
            except queue.Empty:
                break
            if SESSION.rig_job is not None and event.job_id == SESSION.rig_job.id:
                _handle_rig_event(context, event)
            elif SESSION.pending is not None and event.job_id == SESSION.pending.job.id:
                _handle_job_event(context, event)
            # else: a late event of a job that was already given up on
    pending = SESSION.pending
    if pending is not None and pending.result is not None and SESSION.rig is not None:
        _apply_pending(context)
    update_server_state(context)
    live.job_running = SESSION.pending is not None
    return SESSION.busy()


def update_server_state(context: bpy.types.Context) -> None:
    live = status(context)
    alive = SESSION.server_alive()
    if SESSION.busy():
        live.server_state = "BUSY" if alive and SESSION.rig is not None else "STARTING"
    elif alive:
        live.server_state = "READY"
    else:
        live.server_state = "ERROR" if live.last_error and SESSION.runner else "STOPPED"


def _tag_redraw() -> None:
    wm = bpy.context.window_manager
    if wm is None:
        return
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


def _drain_timer() -> float | None:
    try:
        busy = drain_events(bpy.context)
    except Exception:  # a timer that raises is dropped silently by Blender: say why
        traceback.print_exc()
        return None
    _tag_redraw()
    if busy:
        return POLL_BUSY_S
    return POLL_IDLE_S if SESSION.server_alive() else None


def ensure_timer() -> None:
    if not bpy.app.timers.is_registered(_drain_timer):
        bpy.app.timers.register(_drain_timer, first_interval=POLL_BUSY_S, persistent=True)


# ---------------------------------------------------------------------------------------------
# Operators


class SAM3D_OT_reconstruct(bpy.types.Operator):
    """Reconstruct the people in the photo as rigged MHR characters"""

    bl_idname = "sam3d_body.reconstruct"
    bl_label = "Reconstruct"
    # No UNDO here: the scene changes later, when the result arrives; drain_events pushes
    # exactly one undo step for it.
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return SESSION.pending is None

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        try:
            image_path = resolve_image_path(context)
            config = server_config(context)
            request = reconstruct_request(context, image_path, send_bytes="address" in config)
            options = apply_options(context)
            if SESSION.runner is None and not preferences.get(context).auto_start:
                raise InputError("The server is not running: press Start in the Server panel "
                                 "(or enable Start Server Automatically)")
            runner = SESSION.ensure_runner(config)
        except InputError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        live = status(context)
        live.last_error = ""
        live.log_tail = ""
        SESSION.request_rig()
        SESSION.pending = PendingReconstruct(runner.submit_reconstruct(**request), image_path,
                                             options)
        live.job_running = True
        live.progress = 0.0
        live.message = "Submitted"
        update_server_state(context)
        ensure_timer()
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


class SAM3D_OT_export_fbx(bpy.types.Operator):
    """Export the character (selected armatures, else the last reconstruction) as FBX"""

    bl_idname = "sam3d_body.export_fbx"
    bl_label = "Export FBX"
    bl_options = {"REGISTER"}

    filepath: StringProperty(subtype="FILE_PATH", options={"SKIP_SAVE"})

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        from .export import export_fbx

        settings = scene_settings(context)
        raw = self.filepath or settings.export_path
        if not raw.strip():
            self.report({"ERROR"}, "No FBX file: set one in the Export panel")
            return {"CANCELLED"}
        if raw.startswith("//") and not bpy.data.filepath:
            self.report({"ERROR"}, "Save the .blend first, or use an absolute FBX path")
            return {"CANCELLED"}
        path = os.path.normpath(bpy.path.abspath(raw))
        if not path.lower().endswith(".fbx"):
            path += ".fbx"
        objects = export_objects(context)
        if not objects:
            self.report({"ERROR"}, "Nothing to export: select an armature or run Reconstruct")
            return {"CANCELLED"}
        folder = os.path.dirname(path)
        if folder and not os.path.isdir(folder):
            self.report({"ERROR"}, f"Folder does not exist: {folder}")
            return {"CANCELLED"}
        try:
            export_fbx(path, objects, settings.export_preset, context=context)
        except (ValueError, OSError, RuntimeError) as exc:
            self.report({"ERROR"}, f"FBX export failed: {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Exported {path}")
        return {"FINISHED"}


CLASSES = (
    SAM3D_OT_reconstruct,
    SAM3D_OT_cancel,
    SAM3D_OT_server_start,
    SAM3D_OT_server_stop,
    SAM3D_OT_export_fbx,
)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    if bpy.app.timers.is_registered(_drain_timer):
        bpy.app.timers.unregister(_drain_timer)
    SESSION.stop()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
