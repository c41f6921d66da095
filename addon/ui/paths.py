"""Where the add-on keeps its managed server environment (bpy; no other add-on module)."""
from __future__ import annotations

import os
import tempfile

import bpy

from .package import root_package

ENV_DIR_OVERRIDE: str | None = None  # tests point the managed environment elsewhere


def managed_env_dir() -> str:
    """<extension user dir>/server-env (a temp folder when enabled as a plain package)."""
    if ENV_DIR_OVERRIDE:
        return ENV_DIR_OVERRIDE
    try:
        return bpy.utils.extension_path_user(root_package(), path="server-env", create=True)
    except ValueError:  # not installed as an extension (tests, development checkout)
        return os.path.join(tempfile.gettempdir(), "sam3d_body_server_env")
