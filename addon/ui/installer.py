# SPDX-License-Identifier: GPL-3.0-or-later
"""Blender side of the managed backend (addon/backend_install.py): Install, Repair, Remove,
Cancel and Check Access operators, a timer that streams the installer's progress into the
status shown by the preferences and the panel, and the preferences' installer section.

Online installs are offered only while Blender's Online Access is on; offline, a folder of
wheels is required (`install_wheels`).
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
from typing import Any, Literal, cast

import bpy

from ..backend import install as bi
from .package import addon_preferences
from .paths import managed_env_dir
from .properties import status

OperatorResult = set[
    Literal["RUNNING_MODAL", "CANCELLED", "FINISHED", "PASS_THROUGH", "INTERFACE"]
]
POLL_S = 0.2
# Test and development hooks: keyword arguments for plan_install (e.g. requirements,
# torch_variant, check_modules) and a different environment folder.
PLAN_OVERRIDES: dict[str, Any] = {}


class _State:
    installer: bi.Installer | None = None


STATE = _State()


def requirements_file() -> str:
    here = os.path.dirname(os.path.abspath(__file__))  # addon/ui
    return os.path.join(os.path.dirname(os.path.dirname(here)), "server", "requirements.txt")


def base_python(prefs: Any) -> str:
    chosen = prefs.install_base_python.strip()
    if chosen:
        return bpy.path.abspath(chosen)
    candidates = bi.candidate_base_pythons()
    if not candidates:
        raise bi.InstallError("No Python found to create the environment from: set Base "
                              "Python (3.10-3.12)")
    return candidates[0]


def install_plan(context: bpy.types.Context) -> bi.InstallPlan:
    """The plan for the preferences' settings; InstallError says what is wrong."""
    prefs = addon_preferences(context)
    wheels = bpy.path.abspath(prefs.install_wheels.strip()) if prefs.install_wheels.strip() else ""
    if wheels and not os.path.isdir(wheels):
        raise bi.InstallError(f"Wheel folder not found: {wheels}")
    if not wheels and not bpy.app.online_access:
        raise bi.InstallError("Online Access is off (Preferences > System): turn it on to "
                              "download the server's packages, or set a Wheel Folder")
    kwargs: dict[str, Any] = {"requirements": requirements_file()}
    if wheels:
        kwargs.update(find_links=wheels, offline=True)
    kwargs.update(PLAN_OVERRIDES)
    platform = kwargs.pop("platform", None)
    if platform is None and kwargs.get("torch_variant", "auto") != "none":
        platform = bi.detect_platform()
    return bi.plan_install(managed_env_dir(), base_python(prefs), platform, **kwargs)


def start(context: bpy.types.Context, installer: bi.Installer) -> None:
    live = status(context)
    live.install_state = "running"
    live.install_progress = 0.0
    live.install_message = "Starting"
    live.install_log_tail = ""
    STATE.installer = installer.start()
    if not bpy.app.timers.is_registered(_timer):
        bpy.app.timers.register(_timer, first_interval=POLL_S, persistent=True)


def drain_installer(context: bpy.types.Context) -> bool:
    """Move the installer's events into the status; True while it still runs."""
    installer = STATE.installer
    if installer is None:
        return False
    live = status(context)
    for event in installer.poll():
        if event.kind == "progress":
            live.install_progress = event.fraction
            live.install_message = event.message
        elif event.kind == "stage":
            live.install_message = event.message
        elif event.kind == "log":
            lines = (live.install_log_tail + "\n" + event.message).splitlines()[-8:]
            live.install_log_tail = "\n".join(lines)
        elif event.kind in bi.TERMINAL_EVENTS:
            live.install_state = event.kind
            if event.kind == "done":
                live.install_progress = 1.0
                live.install_message = event.report.summary() if event.report else "Done"
            elif event.kind == "error":
                live.install_message = event.message
                live.install_log_tail = event.log_tail
            else:
                live.install_message = "Cancelled: Repair finishes the installation"
            STATE.installer = None
            return False
    return True


def _timer() -> float | None:
    running = drain_installer(bpy.context)
    for window in bpy.context.window_manager.windows if bpy.context.window_manager else []:
        for area in window.screen.areas:
            area.tag_redraw()
    return POLL_S if running else None


def _busy_report(op: bpy.types.Operator) -> bool:
    if STATE.installer is not None:
        op.report({"ERROR"}, "The installer is already running: wait, or press Cancel")
        return True
    return False


class SAM3D_OT_backend_install(bpy.types.Operator):
    """Create the managed server environment (PyTorch and the server's packages)"""

    bl_idname = "sam3d_body.backend_install"
    bl_label = "Install"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        if _busy_report(self):
            return {"CANCELLED"}
        try:
            start(context, bi.Installer(install_plan(context)))
        except bi.InstallError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        return {"FINISHED"}


class SAM3D_OT_backend_repair(bpy.types.Operator):
    """Re-run the recorded installation over the managed environment (keeps what is there)"""

    bl_idname = "sam3d_body.backend_repair"
    bl_label = "Repair"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        if _busy_report(self):
            return {"CANCELLED"}
        try:
            start(context, bi.Installer(bi.plan_repair(managed_env_dir())))
        except bi.InstallError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        return {"FINISHED"}


class SAM3D_OT_backend_remove(bpy.types.Operator):
    """Delete the managed server environment"""

    bl_idname = "sam3d_body.backend_remove"
    bl_label = "Remove"
    bl_options = {"REGISTER"}

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> OperatorResult:
        wm = context.window_manager
        if wm is None:
            return self.execute(context)
        return wm.invoke_confirm(self, event)

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        if _busy_report(self):
            return {"CANCELLED"}
        from .session import SESSION

        if SESSION.runner is not None and SESSION.runner.server is not None:
            SESSION.stop()  # its Python lives in the environment
        try:
            bi.remove(managed_env_dir(), background=True)
        except (bi.InstallError, OSError) as exc:
            self.report({"ERROR"}, f"Could not remove the environment: {exc}")
            return {"CANCELLED"}
        live = status(context)
        live.install_state = "idle"
        live.install_progress = 0.0
        live.install_message = "Removed"
        return {"FINISHED"}


class SAM3D_OT_backend_cancel(bpy.types.Operator):
    """Stop the installer (nothing is deleted; Repair finishes later)"""

    bl_idname = "sam3d_body.backend_cancel"
    bl_label = "Cancel Install"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        if STATE.installer is None:
            self.report({"WARNING"}, "No installation is running")
            return {"CANCELLED"}
        STATE.installer.cancel()
        status(context).install_message = "Cancelling"
        return {"FINISHED"}


# --- Hugging Face access check (runs in the server's Python) ---------------------------------

_HF_RESULTS: "queue.Queue[str]" = queue.Queue()
HF_MESSAGES = {
    "ok": "OK: the checkpoint can be downloaded",
    "not_logged_in": "Not logged in: run `hf auth login` in the server's Python, or set "
                     "HF_TOKEN",
    "no_access": "No access to the gated repository: request access on its Hugging Face page",
    "not_found": "Repository not found: check the id",
    "offline": "Offline: cannot reach huggingface.co (or Online Access / HF_HUB_OFFLINE)",
}


def hf_check_command(python: str, repo: str) -> list[str]:
    return [python, "-m", "server.hf_access", repo]


def describe_hf_access(stdout: str, stderr: str = "") -> str:
    """The user-facing sentence for `python -m server.hf_access`'s JSON line."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            answer = json.loads(line)
        except ValueError:
            continue
        status_code = str(answer.get("status", ""))
        text = HF_MESSAGES.get(status_code, status_code or "unknown answer")
        detail = str(answer.get("detail", "")).strip()
        return text + (f" ({detail})" if detail and status_code != "ok" else "")
    tail = (stderr.strip().splitlines() or ["no output"])[-1]
    return f"The check could not run in the server's Python: {tail}"


def run_hf_check(python: str, repo: str, env: dict[str, str]) -> str:
    """Blocking: run the check in the server's Python and describe its answer."""
    from ..protocol.client import project_root

    child_env = dict(os.environ)
    child_env.update(env)
    root = str(project_root())
    child_env["PYTHONPATH"] = root + os.pathsep + child_env.get("PYTHONPATH", "")
    try:
        done = subprocess.run(hf_check_command(python, repo), capture_output=True, text=True,
                              timeout=60, env=child_env, cwd=root)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"The check could not run in the server's Python: {exc}"
    return describe_hf_access(done.stdout, done.stderr)


class SAM3D_OT_check_hf_access(bpy.types.Operator):
    """Check that the server can download the checkpoint (login, gated access, network)"""

    bl_idname = "sam3d_body.check_hf_access"
    bl_label = "Check Access"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> OperatorResult:
        from .session import InputError, server_python

        prefs = addon_preferences(context)
        repo = prefs.checkpoint_repo.strip()
        live = status(context)
        try:
            python = server_python(prefs)
        except InputError as exc:
            live.hf_access = str(exc)
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        env = {} if bpy.app.online_access else {"HF_HUB_OFFLINE": "1"}
        live.hf_access = "Checking..."
        threading.Thread(target=lambda: _HF_RESULTS.put(run_hf_check(python, repo, env)),
                         name="sam3d-hf-check", daemon=True).start()
        if not bpy.app.timers.is_registered(_hf_timer):
            bpy.app.timers.register(_hf_timer, first_interval=POLL_S)
        return {"FINISHED"}


def drain_hf_check(context: bpy.types.Context) -> bool:
    try:
        text = _HF_RESULTS.get_nowait()
    except queue.Empty:
        return False
    status(context).hf_access = text
    return True


def _hf_timer() -> float | None:
    return None if drain_hf_check(bpy.context) else POLL_S


# --- preferences section ---------------------------------------------------------------------


def draw_installer(layout: bpy.types.UILayout, context: bpy.types.Context, prefs: Any,
                   live: Any) -> None:
    """The managed-environment rows of the preferences (reads only)."""
    env_dir = managed_env_dir()
    state = bi.env_status(env_dir)
    layout.label(text=f"Environment: {state} ({env_dir})",
                 icon="CHECKMARK" if state == "ready" else "INFO")
    layout.prop(prefs, "install_base_python")
    layout.prop(prefs, "install_wheels")
    running = STATE.installer is not None
    if live is not None and (running or live.install_message):
        if running:
            layout.progress(factor=live.install_progress, type="BAR",
                            text=live.install_message or "Installing")
        else:
            layout.label(text=live.install_message)
        if live.install_state == "error":
            col = layout.box().column(align=True)
            for line in live.install_log_tail.splitlines()[-6:]:
                col.label(text=line)
    row = layout.row(align=True)
    if running:
        row.operator("sam3d_body.backend_cancel", icon="CANCEL")
        return
    online_ok = bool(bpy.app.online_access) or bool(prefs.install_wheels.strip())
    sub = row.row(align=True)
    sub.enabled = online_ok and state in {"missing", "incomplete"}
    sub.operator("sam3d_body.backend_install", icon="IMPORT")
    sub = row.row(align=True)
    sub.enabled = online_ok and state in {"incomplete", "ready"}
    sub.operator("sam3d_body.backend_repair", icon="TOOL_SETTINGS")
    sub = row.row(align=True)
    sub.enabled = state in {"incomplete", "ready"}
    sub.operator("sam3d_body.backend_remove", icon="TRASH")
    if not online_ok:
        layout.label(text="Online Access is off: installs need it, or a Wheel Folder",
                     icon="ERROR")


CLASSES = (
    SAM3D_OT_backend_install,
    SAM3D_OT_backend_repair,
    SAM3D_OT_backend_remove,
    SAM3D_OT_backend_cancel,
    SAM3D_OT_check_hf_access,
)


def register() -> None:
    from .preferences import MANAGED_SECTION

    for cls in CLASSES:
        bpy.utils.register_class(cls)
    if draw_installer not in MANAGED_SECTION:
        MANAGED_SECTION.append(draw_installer)


def unregister() -> None:
    from .preferences import MANAGED_SECTION

    if draw_installer in MANAGED_SECTION:
        MANAGED_SECTION.remove(draw_installer)
    if STATE.installer is not None:
        STATE.installer.cancel()  # pip is not a daemon: do not leave it running
        STATE.installer = None
    for timer in (_timer, _hf_timer):
        if bpy.app.timers.is_registered(timer):
            bpy.app.timers.unregister(timer)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
