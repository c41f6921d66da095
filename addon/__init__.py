# SPDX-License-Identifier: GPL-3.0-or-later
"""SAM 3D Body for Blender: the add-on package.

This module must stay importable without `bpy`: the inference server runs in a separate
Python and imports `addon.protocol` (and with it this package). Every module that needs `bpy` is
imported inside `register()` / `unregister()`.
"""
from __future__ import annotations

from types import ModuleType


def root_package() -> str:
    """The package name Blender knows this add-on by.

    Installed as an extension this sub-package is `bl_ext.<repo>.<id>.addon` and Blender's
    add-on key is the parent, `bl_ext.<repo>.<id>`. Enabled as a plain package in tests (or
    from a checkout on `sys.path`) the package is just `addon` and is its own key.
    """
    package = __package__ or __name__
    parent = package.rpartition(".")[0]
    return parent or package


def _modules() -> list[ModuleType]:
    # Registration order matters: property groups before the classes that point at them,
    # operators before the panels that draw their buttons.
    from .ui import installer, operators, panel, preferences, properties, refine, retarget

    return [properties, preferences, operators, installer, refine, panel, retarget]


def register() -> None:
    for module in _modules():
        module.register()


def unregister() -> None:
    for module in reversed(_modules()):
        module.unregister()
