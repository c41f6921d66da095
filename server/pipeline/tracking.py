"""People across the frames of a clip: one track id per person (tracking by association).

Each live track predicts where its person is at the new frame with a constant-velocity model of
its box centre (velocity from its last two observations, extrapolated over any gap). Detections
are matched to the predictions by a Hungarian assignment on

    cost = iou_weight * (1 - IoU) + keypoint_weight * min(mean keypoint distance / diagonal, 1)

(IoU and distances against the track's *predicted* box and keypoints; the diagonal is that of the
predicted box; without usable keypoints the box centres stand in for them). A pair is matched
only when its cost is below `max_cost`. Prediction is what keeps two people apart while they
cross: for a few frames their boxes overlap, but the predictions keep moving in opposite
directions, whereas each person's last box would sit on the other person one frame later.

A track unmatched for up to `max_gap` frames keeps its id when the person comes back near the
prediction; after that it ends and a returning person gets a new id.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["Tracker", "TrackerConfig", "box_iou"]


@dataclass
class TrackerConfig:
    """Weights of the matching cost, its gate, how long a track survives unseen, and a cap on people.

    With the default weights and `max_cost=1.0` a detection must overlap a track's predicted box
    noticeably: IoU = 0 alone already costs 1, so people side by side are never merged, while a
    person who moved half a box width from the prediction (cost about 0.85) is still matched.
    `max_tracks` caps the tracks alive at once; detections beyond it get id -1 until a track ends.
    """

    iou_weight: float = 1.0
    keypoint_weight: float = 1.0
    max_cost: float = 1.0
    max_gap: int = 10
    max_tracks: int | None = None

    def __post_init__(self) -> None:
        if not (self.iou_weight >= 0 and self.keypoint_weight >= 0 and self.iou_weight + self.keypoint_weight > 0):
            raise ValueError("TrackerConfig: iou_weight and keypoint_weight must be >= 0, not both 0")
        if not self.max_cost > 0:
            raise ValueError(f"TrackerConfig: max_cost must be > 0, got {self.max_cost}")
        if self.max_gap < 0:
            raise ValueError(f"TrackerConfig: max_gap must be >= 0 frames, got {self.max_gap}")
        if self.max_tracks is not None and self.max_tracks < 1:
            raise ValueError(f"TrackerConfig: max_tracks must be None or >= 1, got {self.max_tracks}")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) x0, y0, x1, y1 boxes -> (N, M)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=-1)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    # Degenerate (zero-area) boxes overlap nothing rather than dividing by zero.
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _centre(box: np.ndarray) -> np.ndarray:
    return (box[..., :2] + box[..., 2:]) / 2


class _Track:
    __slots__ = ("id", "frame", "box", "keypoints", "velocity")

    def __init__(self, track_id: int, frame: int, box: np.ndarray, keypoints: np.ndarray | None) -> None:
        self.id, self.frame, self.box, self.keypoints = track_id, frame, box, keypoints
        self.velocity = np.zeros(2)  # of the box centre, pixels per frame

    def observe(self, frame: int, box: np.ndarray, keypoints: np.ndarray | None) -> None:
        # Dividing by the frame step keeps the velocity per frame when the last match bridged a gap.
        self.velocity = (_centre(box) - _centre(self.box)) / (frame - self.frame)
        self.frame, self.box, self.keypoints = frame, box, keypoints

    def predict(self, frame: int) -> tuple[np.ndarray, np.ndarray | None]:
        # Only the centre moves: frame-to-frame size changes are mostly detector jitter, which
        # extrapolating over a gap would amplify, and a person's size changes slowly anyway.
        shift = self.velocity * (frame - self.frame)
        return self.box + np.tile(shift, 2), None if self.keypoints is None else self.keypoints + shift


def _position_cost(boxes: np.ndarray, keypoints: np.ndarray | None,
                   pred_box: np.ndarray, pred_kp: np.ndarray | None) -> np.ndarray:
    """(N,) mean keypoint distance of each detection to one prediction, in predicted diagonals, capped at 1."""
    dist = np.linalg.norm(_centre(boxes) - _centre(pred_box), axis=1)
    if keypoints is not None and pred_kp is not None and keypoints.shape[1] == pred_kp.shape[0]:
        d = np.linalg.norm(keypoints - pred_kp[None], axis=-1)  # NaN where either side is missing
        seen = np.isfinite(d)
        count = seen.sum(axis=1)
        mean = np.where(seen, d, 0.0).sum(axis=1) / np.maximum(count, 1)
        dist = np.where(count > 0, mean, dist)
    diagonal = max(float(np.hypot(*(pred_box[2:] - pred_box[:2]))), 1e-6)
    return np.minimum(dist / diagonal, 1.0)


def _frame_number(frame: int) -> int:
    try:
        return operator.index(frame)
    except TypeError:
        raise ValueError(f"tracker frame must be an integer, got {frame!r}") from None


class Tracker:
    """Gives each detection of each frame a track id; call `update` once per frame, in order."""

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self._tracks: list[_Track] = []  # live ones only, in order of creation
        self._next_id = 0
        self._last_frame: int | None = None

    def update(self, frame: int, boxes: np.ndarray, keypoints: np.ndarray | None = None) -> np.ndarray:
        """Track ids (N,) of this frame's N detections; -1 for one dropped because of `max_tracks`.

        boxes: (N, 4) x0, y0, x1, y1 pixels; keypoints: optional (N, K, 2) pixels, NaN where missing.
        Detections are taken in the given order when new tracks compete for `max_tracks` slots,
        so pass them best first.
        """
        frame = _frame_number(frame)
        boxes, keypoints = _checked(boxes, keypoints)
        if self._last_frame is not None and frame <= self._last_frame:
            raise ValueError(f"tracker frames must increase strictly: got {frame} after {self._last_frame}")
        self._last_frame = frame
        cfg = self.config
        self._tracks = [t for t in self._tracks if frame - t.frame <= cfg.max_gap]

        ids = np.full(len(boxes), -1, dtype=np.int64)
        if self._tracks and len(boxes):
            cost = np.empty((len(boxes), len(self._tracks)))
            for j, track in enumerate(self._tracks):
                pred_box, pred_kp = track.predict(frame)
                cost[:, j] = (cfg.iou_weight * (1.0 - box_iou(boxes, pred_box)[:, 0])
                              + cfg.keypoint_weight * _position_cost(boxes, keypoints, pred_box, pred_kp))
            # Maximising the gain below the gate is the optimal *partial* matching: a pair is only
            # taken when it beats leaving both the detection and the track unmatched, so one good
            # match is never traded for two poor ones just to match more.
            gain = np.maximum(cfg.max_cost - cost, 0.0)
            matched = [(i, j) for i, j in zip(*linear_sum_assignment(gain, maximize=True)) if gain[i, j] > 0]
            for i, j in matched:
                ids[i] = self._tracks[j].id
                self._tracks[j].observe(frame, boxes[i], None if keypoints is None else keypoints[i])

        for i in np.flatnonzero(ids < 0):
            if cfg.max_tracks is not None and len(self._tracks) >= cfg.max_tracks:
                break
            self._tracks.append(_Track(self._next_id, frame, boxes[i], None if keypoints is None else keypoints[i]))
            ids[i] = self._next_id
            self._next_id += 1
        return ids

    def predicted_boxes(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(track ids (K,), boxes (K, 4)) of the tracks still alive at `frame`, predicted there."""
        live = self._live(frame)
        return (np.asarray([t.id for t in live], dtype=np.int64),
                np.asarray([t.predict(frame)[0] for t in live], dtype=np.float64).reshape(-1, 4))

    def lost(self, frame: int) -> list[int]:
        """Ids of the tracks alive at `frame` but not seen there (worth re-detecting)."""
        return [t.id for t in self._live(frame) if t.frame < frame]

    def _live(self, frame: int) -> list[_Track]:
        frame = _frame_number(frame)
        if self._last_frame is not None and frame < self._last_frame:
            raise ValueError(f"tracker cannot look back: frame {frame} is before the last update {self._last_frame}")
        return [t for t in self._tracks if frame - t.frame <= self.config.max_gap]


def _checked(boxes: np.ndarray, keypoints: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)  # an empty frame may come as [] or (0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"tracker boxes must be (N, 4) x0, y0, x1, y1, got shape {boxes.shape}")
    if not np.all(np.isfinite(boxes)):
        raise ValueError("tracker boxes must be finite (no NaN or inf)")
    if np.any(boxes[:, 2:] <= boxes[:, :2]):
        raise ValueError("tracker boxes must have x1 > x0 and y1 > y0")
    if keypoints is None:
        return boxes.copy(), None
    keypoints = np.array(keypoints, dtype=np.float64)  # a copy: the tracks keep it
    if keypoints.size == 0 and len(boxes) == 0:
        return boxes.copy(), None
    if keypoints.ndim != 3 or keypoints.shape[0] != len(boxes) or keypoints.shape[2] != 2:
        raise ValueError(f"tracker keypoints must be (N, K, 2) with N={len(boxes)}, got shape {keypoints.shape}")
    # inf would make inf - inf warnings downstream; every non-finite keypoint just means "missing".
    keypoints[~np.isfinite(keypoints)] = np.nan
    return boxes.copy(), keypoints
