"""A clip -> one identity per person, one body shape per identity, a pose per frame.

Per frame the engine reconstructs the people (the photo pipeline, unchanged); the tracker
(server/pipeline/tracking.py) gives each person-frame a track id; a frame that fails is skipped
with a warning, never the whole clip. At the end each track's body shape is locked to the median
over its frames (identity blend shapes and the 68 bone scales) and every frame is re-posed with
it, so bones keep one length for the whole clip. Only small per-frame arrays are kept (skeleton
states, parameters, keypoints): no per-frame mesh; the pose correctives travel as a few basis
shapes per track and weights per frame (server/video/correctives.py).

Where the boxes of a frame come from, in order: the caller's boxes for that frame
(`frame_boxes`, e.g. from a studio's own tracker); the first frame's `boxes`; the person
detector, run on every frame when it is available (tracking by detection); without a detector,
each track's box from its previous frame's 2D keypoints (padded), and the whole image when no
track is alive.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from addon.protocol.clip_result import KIND

from ..errors import BAD_INPUT, CANCELLED, ServerError
from .source import FrameSource

log = logging.getLogger("server.video")

# Per person-frame arrays kept from each frame's result (addon/protocol/clip_result.py).
_ROW_KEYS = ("pred_cam_t", "mhr_skel_state", "mhr_model_params", "shape_params", "expr_params",
             "pred_keypoints_2d", "pred_keypoints_3d", "bbox", "focal_length")
N_POSE_PARAMS = 136  # mhr_model_params[:136] pose, [136:204] bone scales (reference/mhr.md)
KEYPOINT_BOX_PAD = 0.15  # of the keypoints' extent on each side: keypoints sit inside the body
SHAPE_LOCK_BATCH = 64


# Frames per model pass when their boxes are known up front. On a GPU a pass of one frame
# leaves it idle; on a CPU the full-size model is compute-bound (measured: 80 s for 4 frames
# either way) and each batched frame costs ~0.3 GB more, so CPUs go one frame at a time.
GPU_BATCH_FRAMES = 8
CPU_BATCH_FRAMES = 1


def default_batch_frames(device: Any) -> int:
    return GPU_BATCH_FRAMES if getattr(device, "type", str(device)) in ("cuda", "mps") else CPU_BATCH_FRAMES


@dataclass
class ClipRequest:
    mode: str = "body"
    boxes: np.ndarray | None = None  # (N, 4) xyxy on the first processed frame
    frame_boxes: Mapping[int, np.ndarray] | None = None  # source frame number -> (N, 4)
    intrinsics: tuple[float, float, float, float] | None = None
    max_people: int | None = None
    batch_frames: int | None = None  # None: default_batch_frames(the engine's device); 1: no batching


def _keypoint_boxes(keypoints: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes around each person's 2D keypoints, padded and clipped to the image."""
    out = []
    for kp in np.asarray(keypoints, dtype=np.float64):
        kp = kp[np.all(np.isfinite(kp), axis=1)]
        if len(kp) < 2:
            continue
        lo, hi = kp.min(axis=0), kp.max(axis=0)
        pad = KEYPOINT_BOX_PAD * np.maximum(hi - lo, 8.0)
        lo, hi = np.maximum(lo - pad, 0.0), np.minimum(hi + pad, [width - 1.0, height - 1.0])
        if np.all(hi - lo >= 4.0):
            out.append([lo[0], lo[1], hi[0], hi[1]])
    return np.asarray(out, dtype=np.float32).reshape(-1, 4)


class ClipJob:
    """Runs one clip through an engine; `run()` returns the clip result arrays."""

    def __init__(self, engine: Any, source: FrameSource, request: ClipRequest,
                 progress: Callable[[float, str], None] = lambda f, m: None,
                 cancelled: Callable[[], bool] = lambda: False) -> None:
        from ..pipeline.tracking import Tracker, TrackerConfig

        if request.mode not in ("body", "full"):
            raise ServerError(BAD_INPUT, f"mode must be 'body' or 'full', not {request.mode!r}")
        if request.max_people is not None and request.max_people < 1:
            raise ServerError(BAD_INPUT, "max_people must be at least 1")
        if request.batch_frames is not None and request.batch_frames < 1:
            raise ServerError(BAD_INPUT, "batch_frames must be at least 1")
        self.batch_frames = (request.batch_frames if request.batch_frames is not None
                             else default_batch_frames(getattr(engine, "device", "cpu")))
        self.engine, self.source, self.request = engine, source, request
        self.progress, self.cancelled = progress, cancelled
        self.tracker = Tracker(TrackerConfig(max_tracks=request.max_people))
        self.rows: dict[str, list[np.ndarray]] = {k: [] for k in (*_ROW_KEYS, "frame", "track")}
        self.failed: list[tuple[int, str]] = []
        self.shared: dict[str, np.ndarray] = {}
        self._last_keypoints: np.ndarray | None = None

    def _boxes_for(self, number: int, first: bool, has_detector: bool) -> np.ndarray | None:
        req = self.request
        if req.frame_boxes is not None and number in req.frame_boxes:
            return np.asarray(req.frame_boxes[number], dtype=np.float32).reshape(-1, 4)
        if first and req.boxes is not None:
            return np.asarray(req.boxes, dtype=np.float32).reshape(-1, 4)
        if has_detector or self._last_keypoints is None:
            return None  # the detector (or the whole image)
        width, height = self.source.size
        boxes = _keypoint_boxes(self._last_keypoints, width, height)
        return boxes if len(boxes) else None

    def _request(self, image: np.ndarray, boxes: np.ndarray | None) -> Any:
        from ..engine import ReconstructRequest

        return ReconstructRequest(image=image, boxes=boxes, mode=self.request.mode,
                                  intrinsics=self.request.intrinsics)

    def _frame(self, number: int, image: np.ndarray, boxes: np.ndarray | None) -> None:
        self._record(number, self.engine.reconstruct(self._request(image, boxes)))

    def _batchable(self, number: int, first: bool, has_detector: bool) -> bool:
        """Whether this frame's boxes are known without the previous frame's result (given, or
        the detector's), so it can share a model pass with its neighbours."""
        req = self.request
        if self.batch_frames < 2 or req.mode != "body" or not hasattr(self.engine, "reconstruct_frames"):
            return False
        return ((req.frame_boxes is not None and number in req.frame_boxes)
                or (first and req.boxes is not None) or has_detector)

    def _record(self, number: int, out: Mapping[str, Any]) -> None:
        ids = self.tracker.update(number, np.asarray(out["bbox"], dtype=np.float64).reshape(-1, 4),
                                  np.asarray(out["pred_keypoints_2d"], dtype=np.float64))
        keep = np.flatnonzero(np.asarray(ids) >= 0)
        for key in _ROW_KEYS:
            self.rows[key].append(np.asarray(out[key])[keep])
        self.rows["frame"].append(np.full(len(keep), number, dtype=np.int32))
        self.rows["track"].append(np.asarray(ids, dtype=np.int32)[keep])
        self._last_keypoints = np.asarray(out["pred_keypoints_2d"])[keep]
        if not self.shared:
            for key in ("cam_int", "image_size", "intrinsics_source", "mode", "faces"):
                self.shared[key] = np.asarray(out[key])

    def run(self) -> dict[str, np.ndarray]:
        has_detector = self.engine._detector() is not None if self.request.frame_boxes is None else False
        n = len(self.source)
        t0 = time.perf_counter()
        done = 0
        self.progress(0.0, f"frame 0/{n}")
        pending: list[tuple[int, np.ndarray, np.ndarray | None]] = []
        seen = 0

        def finished(number: int, error: ServerError | None) -> None:
            nonlocal done, seen
            seen += 1
            if error is None:
                done += 1
            elif error.code == CANCELLED:
                raise error
            else:
                self.failed.append((number, error.message))
                log.warning("frame %d skipped: %s", number, error.message)
            rate = seen / max(time.perf_counter() - t0, 1e-9)
            left = (n - seen) / rate
            self.progress(0.9 * seen / n, f"frame {seen}/{n} ({rate:.2f} frames/s, {left:.0f} s left)")

        def flush() -> None:
            if not pending:
                return
            outs = self.engine.reconstruct_frames([self._request(img, b) for _, img, b in pending],
                                                  cancelled=self.cancelled)
            for (number, _, _), out in zip(pending, outs):
                if isinstance(out, ServerError):
                    finished(number, out)
                    continue
                self._record(number, out)
                finished(number, None)
            pending.clear()

        for k, (number, image) in enumerate(self.source):
            if self.cancelled():
                raise ServerError(CANCELLED, "The clip reconstruction was cancelled.")
            boxes = self._boxes_for(number, k == 0, has_detector)
            if self._batchable(number, k == 0, has_detector):
                pending.append((number, image, boxes))
                if len(pending) >= self.batch_frames:
                    flush()
                continue
            flush()  # this frame's boxes come from the frames before it
            boxes = self._boxes_for(number, k == 0, has_detector)
            try:
                self._frame(number, image, boxes)
                finished(number, None)
            except ServerError as exc:
                finished(number, exc)
        flush()
        if done == 0:
            reasons = "; ".join(sorted({m for _, m in self.failed}))[:300]
            raise ServerError(BAD_INPUT, f"no frame of the clip could be reconstructed ({reasons})")
        self.progress(0.92, "locking body shapes")
        result = self._assemble()
        self.progress(1.0, "done")
        return result

    def _assemble(self) -> dict[str, np.ndarray]:
        rows = {k: np.concatenate(v) for k, v in self.rows.items()}
        if len(rows["frame"]) == 0:
            raise ServerError(BAD_INPUT, "no person was found on any frame of the clip")
        result: dict[str, np.ndarray] = dict(rows)
        result.update(lock_shapes(self.engine.mhr, rows))
        self.progress(0.96, "compressing pose correctives")
        from .correctives import track_correctives

        try:
            result.update(track_correctives(self.engine.mhr, result["mhr_model_params"], result["track"],
                                            result["track_ids"]))
        except (ValueError, AttributeError) as exc:  # an MHR without readable correctives layers
            log.warning("pose correctives left out of the clip: %s", exc)
        result.update(self.shared)
        result["kind"] = np.array(KIND)
        result["fps"] = np.array(self.source.fps, dtype=np.float64)
        result["frames"] = np.asarray(self.source.frame_numbers, dtype=np.int32)
        result["source_path"] = np.array(self.source.path)
        result["failed_frames"] = np.asarray([f for f, _ in self.failed], dtype=np.int32)
        return result


def lock_shapes(mhr: Any, rows: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One body shape per track (the per-coefficient median over its frames, robust to a few
    bad frames), every row re-posed with it. Returns the updated row arrays and `track_*`."""
    from ..mhr.rig_data import person_rig_state

    track = np.asarray(rows["track"])
    ids = np.unique(track)
    params = np.array(rows["mhr_model_params"], dtype=np.float32, copy=True)
    shape = np.array(rows["shape_params"], dtype=np.float32, copy=True)
    expr = np.asarray(rows["expr_params"], dtype=np.float32)
    shapes, scales = [], []
    for tid in ids:
        sel = track == tid
        shapes.append(np.median(shape[sel], axis=0))
        scales.append(np.median(params[sel, N_POSE_PARAMS:], axis=0))
        shape[sel] = shapes[-1]
        params[sel, N_POSE_PARAMS:] = scales[-1]
    skel = np.empty((len(track), 127, 8), dtype=np.float32)
    for start in range(0, len(track), SHAPE_LOCK_BATCH):
        part = slice(start, start + SHAPE_LOCK_BATCH)
        skel[part] = person_rig_state(mhr, params[part], shape[part], expr[part])["mhr_skel_state"]
    # The rest skeleton and mesh of each track: its locked shape at zero pose.
    first = np.array([np.flatnonzero(track == tid)[0] for tid in ids])
    rest = person_rig_state(mhr, params[first], shape[first], expr[first])
    return {
        "mhr_skel_state": skel,
        "mhr_model_params": params,
        "shape_params": shape,
        "track_ids": ids.astype(np.int32),
        "track_shape_params": np.asarray(shapes, dtype=np.float32).reshape(len(ids), -1),
        "track_scales": np.asarray(scales, dtype=np.float32).reshape(len(ids), -1),
        "track_rest_vertices": rest["mhr_rest_vertices"],
        "track_rest_skel_state": rest["mhr_rest_skel_state"],
    }
