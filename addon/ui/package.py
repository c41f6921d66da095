"""The name Blender knows this add-on by, for the UI modules (preferences key, extension paths).

The same answer as `addon.root_package()`, computed here from `addon.ui` so that the UI modules
need not import the package `__init__` that registers them (which would be an import cycle).
"""
from __future__ import annotations

from typing import Any


def root_package() -> str:
    addon_package = (__package__ or __name__).rpartition(".")[0]  # `<...>.addon.ui` -> `<...>.addon`
    return addon_package.rpartition(".")[0] or addon_package


def addon_preferences(context: Any) -> Any:
    """This add-on's preferences; raises KeyError when the add-on is not enabled."""
    preferences = context.preferences
    if preferences is None:
        raise KeyError(root_package())
    return preferences.addons[root_package()].preferences
