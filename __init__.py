# SPDX-License-Identifier: GPL-3.0-or-later
"""Blender extension entry point: the add-on lives in the `addon` sub-package."""
from .addon import register, unregister

__all__ = ["register", "unregister"]
