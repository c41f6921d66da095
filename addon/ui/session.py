# SPDX-License-Identifier: GPL-3.0-or-later
"""The server session of this Blender process and the main-thread drain of its events.

Reconstruct and Refine never block: operators validate the inputs, hand the request to a
`JobRunner` (addon/client.py; it starts the server on a background thread when needed) and
return. A `bpy.app.timers` callback calls `drain_events()` on the main thread, which updates the
status shown by the panel and the status bar and, on a result, builds the scene with
`apply_result` (or poses the refined rig in place). Timers do not run in background mode, so
tests call `drain_events()` themselves.
"""
from __future__ import annotations

import ipaddress
import os
import queue
import traceback
from dataclasses import dataclass, field
from typing import Any, Mapping

import bpy

from . import preferences
from ..protocol.client import Job, JobEvent, JobRunner, ServerProcess
from .properties import scene_settings, status
from ..protocol.tls import TlsError, TlsSettings
from ..scene.tags import tag_armatures

UNDO_MESSAGE = "SAM 3D Body Reconstruct"
UNDO_REFINE = "SAM 3D Body Refine"
UNDO_CLIP = "SAM 3D Body Clip"
POLL_BUSY_S = 0.1   # timer interval while a job runs
POLL_IDLE_S = 1.0   # while the server idles (notices a crash between jobs)
# Appended to `python -m server serve` (development: e.g. ["--engine", "module:factory"]).
EXTRA_SERVER_ARGS: list[str] = []
class InputError(Exception):
    """Something the user can fix in the panel or the preferences; the text says what."""


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

    python = server_python(prefs)
    config: dict[str, Any] = {"python": python, "device": prefs.device,
                              "extra_args": precision_args(prefs.precision)}
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


def server_python(prefs: Any) -> str:
    """The interpreter that runs the server: the managed environment's or a custom one."""
    if prefs.python_source == "MANAGED":
        from .paths import managed_env_dir
        from ..backend.install import env_python, env_status

        env_dir = managed_env_dir()
        state = env_status(env_dir)
        if state != "ready":
            raise InputError(f"The managed server environment is {state}: press Install (or "
                             "Repair) in the add-on preferences, or choose Backend: Custom "
                             "Python")
        return os.fspath(env_python(env_dir))
    raw = prefs.server_python.strip()
    python = bpy.path.abspath(raw) if raw else ""
    if not python:
        raise InputError("Set 'Server Python' in the add-on preferences (the Python of the "
                         "environment with the server installed)")
    if not os.path.isfile(python):
        raise InputError(f"Server Python not found: {python}")
    if not os.access(python, os.X_OK):
        raise InputError(f"Server Python is not executable: {python}")
    return python


def precision_args(precision: str) -> list[str]:
    """`--precision` for the server; "auto" is the server's default and is never passed, so
    a server without the flag still starts."""
    return [] if precision == "auto" else ["--precision", precision]


def make_runner(config: dict[str, Any]) -> JobRunner:
    if "address" in config:
        return JobRunner(address=config["address"], tls=config.get("tls"))
    server = ServerProcess(
        config["python"], checkpoint=config.get("checkpoint"), repo=config.get("repo"),
        mhr=config.get("mhr"), device=config["device"], env=config["env"],
        ready_timeout=config["ready_timeout"],
        extra_args=[*config.get("extra_args", []), *EXTRA_SERVER_ARGS])
    return JobRunner(server)


# ---------------------------------------------------------------------------------------------
# Session state (this Blender process; not saved)


@dataclass
class PendingReconstruct:
    job: Job
    image_path: str | None  # the photo (camera background); None builds without it
    options: dict[str, Any]
    result: dict[str, Any] | None = None
    # "reconstruct" builds a new collection; "refine" poses the armature `target` in place.
    kind: str = "reconstruct"
    target: str = ""
    # The build stage was shown (panel + status bar) on an earlier tick: build on this one.
    announced: bool = False


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


def finish_job(context: bpy.types.Context) -> None:
    """End the job in the panel and the status bar (its result, if any, is dropped)."""
    live = status(context)
    live.job_running = False
    live.progress = 0.0
    SESSION.pending = None
    status_bar(context, None)


def status_bar(context: bpy.types.Context, text: str | None) -> None:
    """Mirror the job's progress in the status bar (None restores Blender's own text)."""
    workspace = getattr(context, "workspace", None)
    if workspace is None:
        return
    try:
        workspace.status_text_set(text)
    except (RuntimeError, TypeError, AttributeError):
        pass  # no window (background mode): the panel still shows the progress


def _event_error(event: JobEvent) -> str:
    if event.kind == "died":
        return f"The server stopped: {event.message}"
    return event.message + (f" [{event.code}]" if event.code else "")


def _handle_rig_event(context: bpy.types.Context, event: JobEvent) -> None:
    live = status(context)
    if event.kind == "progress":
        # Start-up stages (download, model load) arrive on the rig job; while the rig is
        # missing they are also what a waiting reconstruction is waiting for.
        if SESSION.pending is None or SESSION.rig is None:
            live.message = event.message
        if SESSION.pending is not None and SESSION.rig is None:
            status_bar(context, f"SAM 3D Body: {event.message} (Esc or Cancel stops it)")
        return
    SESSION.rig_job = None
    if event.kind == "result" and event.data is not None:
        SESSION.rig = dict(event.data)
        if SESSION.pending is None:
            live.message = "Server ready"
        return
    if SESSION.pending is not None:
        SESSION.pending.job.cancel()
        finish_job(context)
    _fail(context, _event_error(event), event.log_tail)


def _handle_job_event(context: bpy.types.Context, event: JobEvent) -> None:
    live = status(context)
    pending = SESSION.pending
    assert pending is not None
    if event.kind == "progress":
        live.progress = min(max(event.fraction, 0.0), 1.0)
        live.message = event.message
        status_bar(context, f"SAM 3D Body: {event.message} {live.progress * 100:.0f}% "
                   "(Esc or Cancel stops it)")
    elif event.kind == "result":
        pending.result = dict(event.data or {})
        live.progress = 1.0
    elif event.code == "cancelled":
        finish_job(context)
        live.message = "Cancelled"
    else:
        finish_job(context)
        _fail(context, _event_error(event), event.log_tail)


BUILD_STAGES = {"reconstruct": "Building the character", "clip": "Building the animation",
                "refine": "Posing the character"}


def _announce_build(context: bpy.types.Context, pending: PendingReconstruct) -> None:
    """Show the build stage and leave the build to the next tick: the build holds the main
    thread for a second or more, and Blender repaints the panel and status bar only between
    timer ticks, so without this pause the last thing shown would be the server's 100%."""
    live = status(context)
    live.progress = 1.0
    live.message = BUILD_STAGES.get(pending.kind, "Building")
    status_bar(context, f"SAM 3D Body: {live.message}…")
    pending.announced = True


def _apply_pending(context: bpy.types.Context) -> None:
    from ..scene.apply import apply_result  # numpy-heavy; loaded on first use

    pending = SESSION.pending
    assert pending is not None and pending.result is not None and SESSION.rig is not None
    live = status(context)
    finish_job(context)
    if pending.kind == "refine":
        _apply_refine(context, pending)
        return
    if pending.kind == "clip":
        _apply_clip(context, pending)
        return
    try:
        created = apply_result(context, pending.result, SESSION.rig,
                               image_path=pending.image_path, options=pending.options)
        tag_armatures(created, pending.result, pending.image_path)
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
    _undo_push(UNDO_MESSAGE)


def _apply_clip(context: bpy.types.Context, pending: PendingReconstruct) -> None:
    from ..scene.animation import apply_clip

    assert pending.result is not None and SESSION.rig is not None
    live = status(context)
    try:
        created = apply_clip(context, pending.result, SESSION.rig, movie_path=pending.image_path,
                             options=pending.options)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as exc:
        _fail(context, f"Could not build the animation: {exc}")
        return
    tracks = sum(1 for obj in created if obj.type == "ARMATURE")
    frames = len(pending.result.get("frames", ()))
    live.message = f"Animated {tracks} character(s) over {frames} frames"
    _undo_push(UNDO_CLIP)


def _undo_push(message: str) -> None:
    try:
        bpy.ops.ed.undo_push(message=message)
    except RuntimeError:
        pass  # no context to push an undo step in; the scene is built all the same


def _apply_refine(context: bpy.types.Context, pending: PendingReconstruct) -> None:
    from ..scene.refine_pose import apply_refined_pose

    assert pending.result is not None and SESSION.rig is not None
    live = status(context)
    try:
        arm = apply_refined_pose(context, pending.target, pending.result, SESSION.rig)
    except (ValueError, KeyError, RuntimeError) as exc:
        _fail(context, f"Could not refine the pose: {exc}")
        return
    live.message = f"Refined {arm.name}{refine_summary(pending.result)}"
    _undo_push(UNDO_REFINE)


def refine_summary(result: Mapping[str, Any]) -> str:
    """How far the pinned joints ended from their markers, for the status line ("" unpinned)."""
    after = result.get("fit_error_after_px")
    if after is None or len(after) == 0:
        return ""
    return f": {len(after)} joint(s) within {float(max(after)):.1f} px of their markers"


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
        if pending.announced:
            _apply_pending(context)
        else:
            _announce_build(context, pending)
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


def stop_timer() -> None:
    if bpy.app.timers.is_registered(_drain_timer):
        bpy.app.timers.unregister(_drain_timer)


def ensure_timer() -> None:
    if not bpy.app.timers.is_registered(_drain_timer):
        bpy.app.timers.register(_drain_timer, first_interval=POLL_BUSY_S, persistent=True)




# ---------------------------------------------------------------------------------------------
# Test Connection (a thread; the result is read back by the timer)

_CONNECTION_RESULTS: "queue.Queue[str]" = queue.Queue()


def describe_server(info: dict[str, Any]) -> str:
    """One line from a server's hello/load info: version, device, GPU and its memory, model."""
    parts = []
    for key, label in (("version", "version"), ("protocol", "protocol"), ("device", "device"),
                       ("gpu_name", "GPU"), ("gpu", "GPU"), ("model", "model")):
        value = info.get(key)
        if value not in (None, ""):
            parts.append(f"{label} {value}")
    memory = info.get("gpu_memory_gb") or info.get("gpu_memory")
    if memory:
        parts.append(f"{memory} GB")
    return "Connected: " + (", ".join(parts) if parts else "(the server sent no details)")


def check_connection(config: dict[str, Any], timeout: float = 10.0) -> str:
    """Blocking: connect with these settings and describe the server, or say what failed."""
    from ..protocol.client import Client, ClientError, RemoteError

    if "address" in config:
        host, port, token = config["address"]
    else:
        runner = SESSION.runner
        server = runner.server if runner is not None else None
        if server is None or not server.alive() or not server.port:
            return "The local server is not running: press Start first"
        host, port, token = server.host, server.port, server.token
    try:
        with Client(host, int(port), token, timeout=timeout, tls=config.get("tls")) as client:
            info = dict(client.info)
    except RemoteError as exc:
        if exc.code == "auth":
            return f"Wrong token: the server at {host}:{port} refused it"
        return f"The server at {host}:{port} answered: {exc}"
    except (ClientError, OSError) as exc:
        return f"Cannot reach {host}:{port}: {exc}"
    return describe_server(info)


def start_connection_check(context: bpy.types.Context, config: dict[str, Any]) -> None:
    import threading

    status(context).connection_info = "Connecting..."

    def work() -> None:
        _CONNECTION_RESULTS.put(check_connection(config))

    threading.Thread(target=work, name="sam3d-connection-check", daemon=True).start()
    if not bpy.app.timers.is_registered(_connection_timer):
        bpy.app.timers.register(_connection_timer, first_interval=0.2)


def drain_connection_check(context: bpy.types.Context) -> bool:
    """Show a finished check; True once one arrived."""
    try:
        text = _CONNECTION_RESULTS.get_nowait()
    except queue.Empty:
        return False
    status(context).connection_info = text
    return True


def _connection_timer() -> float | None:
    return None if drain_connection_check(bpy.context) else 0.2
