"""addon/protocol/masks.py: mask files keep the values Meta's code would get, and unusable ones are refused."""
from __future__ import annotations

import numpy as np
import pytest

from addon.protocol.masks import MaskError, gray_levels, mask_values


def _mask(values) -> np.ndarray:
    m = np.zeros((8, 8), np.uint8)
    for i, v in enumerate(values):
        m[i, :] = v
    return m


@pytest.mark.parametrize("values", [(0, 1), (0, 255), (1,), (255,)])
def test_binary_values_pass_unchanged(values) -> None:
    m = _mask(values) if 0 in values else np.full((4, 4), values[0], np.uint8)
    out = mask_values(m, "m.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, m)


@pytest.mark.parametrize(("values", "message"), [((0,), "is empty"), ((0, 128, 255), "such as 128"),
                                                 ((0, 1, 255), "not binary"), ((0, 2), "such as 2")])
def test_unusable_masks_are_refused(values, message) -> None:
    with pytest.raises(MaskError, match=message):
        mask_values(_mask(values), "m.png")


def test_float_levels_are_whole_numbers_only() -> None:
    np.testing.assert_array_equal(mask_values(_mask((0, 255)).astype(np.float32), "m"), _mask((0, 255)))
    with pytest.raises(MaskError, match="whole grey levels"):
        mask_values(np.full((2, 2), 0.5), "m")


def test_gray_levels_read_like_pillow() -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(gray_levels(rgb), np.asarray(Image.fromarray(rgb).convert("L")))
    grey = np.repeat(_mask((0, 1))[..., None], 4, axis=2)  # RGBA of a grey mask: the level itself
    np.testing.assert_array_equal(gray_levels(grey), _mask((0, 1)))
