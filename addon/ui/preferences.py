# SPDX-License-Identifier: GPL-3.0-or-later
"""Machine settings: where the server's Python lives, which checkpoint, which device.

These belong to the computer, not to a .blend, so they are add-on preferences.
"""
from __future__ import annotations

from typing import Any, Callable, cast

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from .package import addon_preferences, root_package

CHECKPOINT_SOURCES = [
    ("REPO", "Hugging Face", "Download (once) from a Hugging Face model repository"),
    ("FOLDER", "Folder", "A folder holding model.ckpt, model_config.yaml and assets/"),
]

DEVICES = [
    ("auto", "Automatic", "CUDA when available, else Apple MPS, else the CPU"),
    ("cuda", "CUDA", "The first NVIDIA GPU"),
    ("mps", "Apple MPS", "Apple silicon GPU"),
    ("cpu", "CPU", "Slow, but works everywhere"),
]

SERVER_MODES = [
    ("LOCAL", "Local", "Start the server on this computer with the Python below"),
    ("REMOTE", "Studio Server", "Use a server someone already runs (host, port and token)"),
]

PYTHON_SOURCES = [
    ("MANAGED", "Managed", "An environment the add-on installs and repairs for you"),
    ("CUSTOM", "Custom Python", "The Python of an environment you set up yourself"),
]

PRECISIONS = [
    ("auto", "Automatic", "The server's default (Fast)"),
    ("official", "Official", "The released model's semantics: backbone weights in float16"),
    ("fp32", "FP32", "Everything in float32"),
    ("fast", "Fast", "float16 autocast for the backbone and decoder on CUDA; float32 "
     "elsewhere"),
]

DEFAULT_REPO = "facebook/sam-3d-body-dinov3"


class SAM3D_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = root_package()

    server_mode: EnumProperty(name="Server", items=SERVER_MODES, default="LOCAL")
    remote_host: StringProperty(
        name="Host",
        default="127.0.0.1",
        description="Address of the studio server (needs Online Access unless it is this "
        "computer)",
    )
    remote_port: IntProperty(name="Port", default=8765, min=1, max=65535)
    remote_token: StringProperty(
        name="Token",
        subtype="PASSWORD",
        description="The token the studio server was started with",
    )
    remote_ca_file: StringProperty(
        name="CA Certificate",
        subtype="FILE_PATH",
        description="PEM file to verify the studio server's TLS certificate against (a "
        "self-signed certificate can be its own CA file)",
    )
    remote_pin: StringProperty(
        name="Certificate Fingerprint",
        description="SHA-256 fingerprint of the studio server's TLS certificate (64 hex "
        "digits, colons allowed); accepts exactly that certificate",
    )
    remote_allow_plain: BoolProperty(
        name="Allow Unencrypted",
        default=False,
        description="Talk to a studio server on another machine without TLS: the token and "
        "the photos cross the network readable by anyone on the way",
    )
    python_source: EnumProperty(name="Backend", items=PYTHON_SOURCES, default="CUSTOM")
    install_base_python: StringProperty(
        name="Base Python",
        subtype="FILE_PATH",
        description="Python 3.10-3.12 to create the managed environment from (empty: "
        "Blender's own Python when it suits)",
    )
    install_wheels: StringProperty(
        name="Wheel Folder",
        subtype="DIR_PATH",
        description="Install offline from this folder of wheels instead of the internet",
    )
    precision: EnumProperty(
        name="Precision",
        items=PRECISIONS,
        default="auto",
        description="Numeric precision of the model on the server",
    )
    server_python: StringProperty(
        name="Server Python",
        subtype="FILE_PATH",
        description="Python executable of the environment where the server's requirements "
        "(torch, ...) are installed",
    )
    checkpoint_source: EnumProperty(
        name="Checkpoint",
        items=CHECKPOINT_SOURCES,
        default="REPO",
    )
    checkpoint_repo: StringProperty(
        name="Repository",
        default=DEFAULT_REPO,
        description="Hugging Face repository id of the SAM 3D Body checkpoint",
    )
    checkpoint_dir: StringProperty(
        name="Folder",
        subtype="DIR_PATH",
        description="Local checkpoint folder (model.ckpt, model_config.yaml, assets/)",
    )
    mhr_path: StringProperty(
        name="MHR Model",
        subtype="FILE_PATH",
        description="Override for assets/mhr_model.pt (empty: the checkpoint's own)",
    )
    device: EnumProperty(name="Device", items=DEVICES, default="auto")
    auto_start: BoolProperty(
        name="Start Server Automatically",
        default=True,
        description="Reconstruct starts the server when it is not running",
    )
    start_timeout: FloatProperty(
        name="Start Timeout",
        default=600.0,
        min=5.0,
        subtype="TIME_ABSOLUTE",
        unit="TIME_ABSOLUTE",
        description="Seconds to wait for the server to load the model",
    )

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False

        status = getattr(context.window_manager, "sam3d_body_status", None)
        if status is not None:
            row = layout.row()
            row.label(text=f"Server: {status.server_state.title()}")
            row.operator("sam3d_body.server_start", text="Start")
            row.operator("sam3d_body.server_stop", text="Stop")
            row.operator("sam3d_body.test_connection", text="Test Connection")
            if status.connection_info:
                layout.label(text=status.connection_info, icon="INFO")

        layout.prop(self, "server_mode", expand=True)
        if self.server_mode == "REMOTE":
            layout.prop(self, "remote_host")
            layout.prop(self, "remote_port")
            layout.prop(self, "remote_token")
            layout.prop(self, "remote_ca_file")
            layout.prop(self, "remote_pin")
            layout.prop(self, "remote_allow_plain")
            return
        layout.prop(self, "python_source", expand=True)
        if self.python_source == "MANAGED":
            for draw in MANAGED_SECTION:
                draw(layout, context, self, status)
        else:
            layout.prop(self, "server_python")
            if not self.server_python:
                box = layout.box()
                col = box.column(align=True)
                col.label(text="The server runs in its own Python environment:", icon="INFO")
                col.label(text="create one with Python 3.11, install torch and the server's "
                          "requirements,")
                col.label(text="then pick its python executable above.")
        layout.prop(self, "checkpoint_source")
        if self.checkpoint_source == "REPO":
            row = layout.row(align=True)
            row.prop(self, "checkpoint_repo")
            row.operator("sam3d_body.check_hf_access", text="", icon="CHECKMARK")
            if status is not None and status.hf_access:
                layout.label(text=status.hf_access, icon="INFO")
            if not bpy.app.online_access:
                layout.label(
                    text="Online access is off: only an already downloaded copy is used",
                    icon="ERROR",
                )
        else:
            layout.prop(self, "checkpoint_dir")
        layout.prop(self, "device")
        layout.prop(self, "precision")
        # (The 4.2 API stubs do not know that UILayout.panel returns (header, body).)
        header, body = cast(Any, layout).panel("sam3d_body_prefs_advanced",
                                               default_closed=True)
        header.label(text="Advanced")
        if body is not None:
            body.prop(self, "mhr_path")
            body.prop(self, "auto_start")
            body.prop(self, "start_timeout")


# Rows drawn under "Managed": the installer's (ui/installer.py adds them when it registers, so
# the preferences need not import the installer, which reads the preferences).
MANAGED_SECTION: list[Callable[..., None]] = []


def get(context: bpy.types.Context) -> SAM3D_AP_preferences:
    """This add-on's preferences; raises KeyError when the add-on is not enabled."""
    return cast(SAM3D_AP_preferences, addon_preferences(context))


CLASSES = (SAM3D_AP_preferences,)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
