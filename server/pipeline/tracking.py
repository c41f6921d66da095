"""People across the frames of a clip: one track id per person (tracking by association).

Each live track predicts where its person is at the new frame with a constant-velocity model
(from its last two observations, over the gap), and detections are matched to predictions by a
Hungarian assignment on cost = iou_weight * (1 - IoU) + keypoint_weight * (mean 2D keypoint
distance / box diagonal, capped at 1). Prediction is what keeps two people apart while they cross:
at the crossing their boxes overlap, but their predicted boxes keep moving in opposite directions.
A track missing for up to `max_gap` frames keeps its id when the person comes back near the
prediction; after that it ends, and the person gets a new id.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass
class TrackerConfig:
    iou_weight: float = 1.0
    keypoint_weight: float = 1.0
    max_cost: float = 1.5  # gate: a pair costing more is not the same person
    max_gap: int = 10
    max_tracks: int | None = None


@dataclass
class _Track:
    id: int
    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    keypoints: list[np.ndarray | None] = field(default_factory=list)

    def predict(self, frame: int) -> tuple[np.ndarray, np.ndarray | None]:
        box, kp = self.boxes[-1], self.keypoints[-1]
        if len(self.frames) < 2:
            return box, kp
        dt = self.frames[-1] - self.frames[-2]
        ahead = (frame - self.frames[-1]) / dt
        # The box centre moves; its size follows too (people walking towards the camera grow).
        velocity = self.boxes[-1] - self.boxes[-2]
        moved = box + ahead * velocity
        if moved[2] <= moved[0] or moved[3] <= moved[1]:
            moved = box
        if kp is not None and self.keypoints[-2] is not None:
            shift = (moved[:2] + moved[2:]) / 2 - (box[:2] + box[2:]) / 2
            kp = kp + shift
        return moved, kp


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes -> (N, M)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=-1)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _keypoint_cost(kp: np.ndarray | None, pred: np.ndarray | None, box: np.ndarray) -> float:
    if kp is None or pred is None or kp.shape != pred.shape:
        return 0.0
    dist = np.linalg.norm(kp - pred, axis=-1)
    dist = dist[np.isfinite(dist)]
    if dist.size == 0:
        return 0.0
    diagonal = float(np.hypot(box[2] - box[0], box[3] - box[1]))
    return min(float(dist.mean()) / max(diagonal, 1e-6), 1.0)


class Tracker:
    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self.tracks: list[_Track] = []
        self._ended: set[int] = set()
        self._last_frame: int | None = None

    def _live(self, frame: int) -> list[_Track]:
        return [t for t in self.tracks if t.id not in self._ended and frame - t.frames[-1] <= self.config.max_gap]

    def update(self, frame: int, boxes: np.ndarray, keypoints: np.ndarray | None = None) -> np.ndarray:
        """Track ids (N,) of this frame's detections; -1 for one beyond `max_tracks`."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if np.size(boxes) else np.zeros((0, 4))
        if not np.all(np.isfinite(boxes)) or np.any(boxes[:, 2:] <= boxes[:, :2]):
            raise ValueError("tracker boxes must be finite (N, 4) x1,y1,x2,y2 with x2>x1, y2>y1")
        if keypoints is not None:
            keypoints = np.asarray(keypoints, dtype=np.float64)
            if keypoints.ndim != 3 or keypoints.shape[0] != len(boxes) or keypoints.shape[2] != 2:
                raise ValueError(f"tracker keypoints must be (N, K, 2) with N={len(boxes)}, got {keypoints.shape}")
        if self._last_frame is not None and frame <= self._last_frame:
            raise ValueError(f"tracker frames must increase: {frame} after {self._last_frame}")
        self._last_frame = frame
        for t in self.tracks:
            if frame - t.frames[-1] > self.config.max_gap:
                self._ended.add(t.id)
        live = self._live(frame)
        ids = np.full(len(boxes), -1, dtype=np.int64)
        if live and len(boxes):
            cost = np.empty((len(boxes), len(live)))
            for j, track in enumerate(live):
                pred_box, pred_kp = track.predict(frame)
                iou = box_iou(boxes, pred_box[None])[:, 0]
                for i in range(len(boxes)):
                    kp = None if keypoints is None else keypoints[i]
                    cost[i, j] = (self.config.iou_weight * (1.0 - iou[i])
                                  + self.config.keypoint_weight * _keypoint_cost(kp, pred_kp, pred_box))
            for i, j in zip(*linear_sum_assignment(cost)):
                if cost[i, j] <= self.config.max_cost:
                    ids[i] = live[j].id
        for i in range(len(boxes)):
            if ids[i] < 0:
                if self.config.max_tracks is not None and len(self.tracks) - len(self._ended) >= self.config.max_tracks:
                    continue
                self.tracks.append(_Track(len(self.tracks)))
                ids[i] = self.tracks[-1].id
            track = self.tracks[int(ids[i])]
            track.frames.append(frame)
            track.boxes.append(boxes[i].copy())
            track.keypoints.append(None if keypoints is None else keypoints[i].copy())
        return ids

    def predicted_boxes(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(track ids (K,), boxes (K, 4)) of the live tracks, predicted at `frame`."""
        live = self._live(frame)
        return (np.asarray([t.id for t in live], dtype=np.int64),
                np.asarray([t.predict(frame)[0] for t in live], dtype=np.float64).reshape(-1, 4))
