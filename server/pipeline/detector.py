"""Person detector: RT-DETR through Hugging Face `transformers` (replaces the official ViTDet).

The official demo runs detectron2's ViTDet-H (heavy to install, not on PyPI). Any COCO-style
detector works here as long as it gives xyxy person boxes; the default is RT-DETR R50-vd
(`PekingU/rtdetr_r50vd`, Apache-2.0, COCO classes). As in the official helper, boxes of the
class "person" above a score threshold are kept and sorted with `np.lexsort` on (x1, y1, x2, y2)
(primary key x1) so the person order is stable.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from server.errors import BAD_INPUT, CHECKPOINT_INVALID, CHECKPOINT_MISSING, OFFLINE, ServerError

DEFAULT_DETECTOR_ID = "PekingU/rtdetr_r50vd"
DEFAULT_THRESHOLD = 0.5  # official estimator default `bbox_thr`
PERSON_LABEL = "person"


def sort_boxes(boxes: np.ndarray) -> np.ndarray:
    """Official order: `np.lexsort((y2, x2, y1, x1))`, i.e. by x1, then y1, x2, y2."""
    if len(boxes) == 0:
        return boxes
    order = np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0]))
    return boxes[order]


def find_person_label(id2label: dict[Any, str]) -> int:
    for idx, name in id2label.items():
        if str(name).strip().lower() == PERSON_LABEL:
            return int(idx)
    raise ServerError(CHECKPOINT_INVALID, "The detector has no 'person' class "
                      f"(classes: {sorted(set(map(str, id2label.values())))[:10]}...); use a COCO detector.")


class PersonDetector:
    """Callable RGB uint8 image -> (K, 4) float32 xyxy person boxes (sorted, clipped to the image)."""

    def __init__(self, model: torch.nn.Module, processor: Any, threshold: float = DEFAULT_THRESHOLD,
                 device: torch.device | str = "cpu") -> None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise ServerError(BAD_INPUT, f"Detection threshold must be in [0, 1], got {threshold}.")
        self.model = model.to(device).eval()
        self.processor = processor
        self.threshold = float(threshold)
        self.device = torch.device(device)
        self.person_label = find_person_label(getattr(model.config, "id2label", {}) or {})

    @classmethod
    def from_pretrained(cls, model_id: str | os.PathLike = DEFAULT_DETECTOR_ID, device: torch.device | str = "cpu",
                        threshold: float = DEFAULT_THRESHOLD, cache_dir: str | None = None,
                        local_files_only: bool | None = None) -> "PersonDetector":
        """Load an RT-DETR checkpoint (hub id or local directory); failures become ServerError."""
        try:
            from transformers import AutoImageProcessor, RTDetrForObjectDetection
        except ImportError as exc:  # pragma: no cover - transformers is a declared dependency
            raise ServerError(CHECKPOINT_MISSING, f"The person detector needs the 'transformers' package ({exc}).") from None
        name = str(model_id)
        if local_files_only is None:
            from server.hub import reachable

            # A hub id offline: the cache or nothing, at once (no retry loop).
            local_files_only = not Path(name).exists() and not reachable()
        kwargs = {"cache_dir": cache_dir, "local_files_only": local_files_only}
        try:
            model = RTDetrForObjectDetection.from_pretrained(name, **kwargs)
            processor = AutoImageProcessor.from_pretrained(name, **kwargs)
        except (OSError, ValueError, EnvironmentError) as exc:
            local = Path(name).exists()
            if not local and local_files_only:
                raise ServerError(OFFLINE, f"The person detector '{name}' is not in the local cache and the "
                                  "hub is offline; download it once with network access, point to a local "
                                  "copy, or draw person boxes.") from None
            code = CHECKPOINT_INVALID if local else CHECKPOINT_MISSING
            raise ServerError(code, f"Could not load the person detector '{name}': {exc}. Check the model id "
                              "or directory, or draw person boxes instead.") from None
        return cls(model, processor, threshold=threshold, device=device)

    @torch.no_grad()
    def detect(self, img_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(boxes (K, 4) float32 xyxy, scores (K,) float32) of persons above the threshold, sorted."""
        if not isinstance(img_rgb, np.ndarray) or img_rgb.dtype != np.uint8 or img_rgb.ndim != 3 \
                or img_rgb.shape[2] != 3:
            raise ServerError(BAD_INPUT, "The detector needs an RGB uint8 image of shape (H, W, 3).")
        height, width = img_rgb.shape[:2]
        inputs = self.processor(images=img_rgb, return_tensors="pt")
        inputs = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
        outputs = self.model(**inputs)
        result = self.processor.post_process_object_detection(
            outputs, threshold=self.threshold, target_sizes=[(height, width)])[0]
        labels = result["labels"].cpu().numpy()
        scores = result["scores"].float().cpu().numpy()
        boxes = result["boxes"].float().cpu().numpy()
        keep = (labels == self.person_label) & (scores > self.threshold)
        boxes, scores = boxes[keep], scores[keep]
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height)
        size_ok = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        boxes, scores = boxes[size_ok], scores[size_ok]
        if len(boxes) == 0:
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
        order = np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0]))
        return boxes[order].astype(np.float32), scores[order].astype(np.float32)

    def __call__(self, img_rgb: np.ndarray) -> np.ndarray:
        return self.detect(img_rgb)[0]
