"""What one reconstruction is asked to do (numpy only, so that the service and the test
doubles that stand in for the engine share the one definition without importing torch)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


@dataclass
class ReconstructRequest:
    image: np.ndarray  # RGB uint8 (H, W, 3), already EXIF-rotated
    boxes: np.ndarray | None = None  # (N, 4) xyxy pixels
    masks: Sequence[np.ndarray] | None = None  # one (H, W) uint8 per box
    mode: str = "full"  # "body" | "full"
    intrinsics: tuple[float, float, float, float] | None = None  # fx, fy, cx, cy (pixels)
    prompts: Sequence[tuple[float, float, int]] = field(default_factory=list)  # x, y px, label
    exif_focal_35mm: float | None = None
    detect: bool = True  # run the person detector when no box is given (if one is configured)
    fit_prompts: bool = False  # fit the pose to the prompts after the prompted run (ours, not official)
