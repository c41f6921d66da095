# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared helpers for the add-on tests: enable the add-on as a plain package, write photos."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

PACKAGE = "addon"


def _raise(exc: BaseException) -> None:
    raise exc


def enabled_addon() -> Iterator[Any]:
    """Fresh factory scene with the add-on enabled as the plain package `addon`; disabled after.

    Yields bpy.context. read_factory_settings also disables add-ons, so it comes first."""
    import addon_utils
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    module = addon_utils.enable(PACKAGE, default_set=True, handle_error=_raise)
    assert module is not None
    try:
        yield bpy.context
    finally:
        addon_utils.disable(PACKAGE, default_set=True, handle_error=_raise)


def write_photo(path: Path, width: int = 64, height: int = 48) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path
