"""A clip -> one identity per person, one body shape per identity, a pose per frame.

Per frame the engine reconstructs the people (the photo pipeline, unchanged); the tracker
(server/pipeline/tracking.py) gives each person-frame a track id; a frame that fails is skipped
with a warning, never the whole clip. At the end each track's body shape is locked to the median
over its frames (identity blend shapes and the 68 bone scales) and every frame is re-posed with
it, so bones keep one length for the whole clip. Only small per-frame arrays are made (skeleton
states, parameters, keypoints): no per-frame mesh; the pose correctives travel as a few basis
shapes per track and weights per frame (server/video/correctives.py).

The rows leave the job in parts as they are made (`sink`, addon/protocol/clip_rows.py: on the
server, `clip_rows` messages), so a long clip is held whole only once, by the receiver: while
the clip runs the job keeps only what the shape lock needs (track ids and parameters), and the
skeleton states are made after the lock, a part at a time.

Where the boxes of a frame come from, in order: the caller's boxes for that frame
(`frame_boxes`, e.g. from a studio's own tracker); the first frame's `boxes`; the person
detector, run on every frame when it is available (tracking by detection); without a detector,
each track's box from its previous frame's 2D keypoints (padded), and the whole image when no
track is alive.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from addon.protocol.clip_result import KIND
from addon.protocol.clip_rows import RowAssembler

from ..errors import BAD_INPUT, CANCELLED, ServerError
from .prefetch import prefetch
from .source import FrameSource

log = logging.getLogger("server.video")

# Per person-frame arrays of each frame's result that the shape lock leaves as they are: they
# leave the job while the clip runs (addon/protocol/clip_result.py has the layout).
_EARLY_ROWS = ("frame", "track", "pred_cam_t", "expr_params", "pred_keypoints_2d",
               "pred_keypoints_3d", "bbox", "focal_length")
# What the shape lock needs of every row; the job keeps these until the end.
_LOCK_INPUTS = ("track", "mhr_model_params", "shape_params", "expr_params")
N_POSE_PARAMS = 136  # mhr_model_params[:136] pose, [136:204] bone scales (reference/mhr.md)
KEYPOINT_BOX_PAD = 0.15  # of the keypoints' extent on each side: keypoints sit inside the body
SHAPE_LOCK_BATCH = 64
ROWS_PER_PART = 256  # person-frames per part handed to the sink (~0.4 MB of per-frame arrays)

# sink(start, arrays, total): rows start.. of some row arrays; total (the clip's row count) once
# it is known, i.e. for the arrays made after the shape lock.
RowSink = Callable[[int, Mapping[str, np.ndarray], int | None], None]


# Frames per model pass when their boxes are known up front. On a GPU a pass of one frame
# leaves it idle; on a CPU the full-size model is compute-bound (measured: 80 s for 4 frames
# either way) and each batched frame costs ~0.3 GB more, so CPUs go one frame at a time.
GPU_BATCH_FRAMES = 8
CPU_BATCH_FRAMES = 1
# Frames decoded ahead of the model (server/video/prefetch.py), in batches: 2 keeps the next
# batch ready while one runs (8 1080p frames are 50 MB).
PREFETCH_BATCHES = 2


def on_accelerator(device: Any) -> bool:
    return getattr(device, "type", str(device)) in ("cuda", "mps")


def default_batch_frames(device: Any) -> int:
    return GPU_BATCH_FRAMES if on_accelerator(device) else CPU_BATCH_FRAMES


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
    """Runs one clip through an engine. `run()` returns the clip result arrays; with a `sink`,
    the row arrays went to it and the result holds the rest (`n_rows` says how many rows)."""

    # Whether the next batch's crops are made while the model runs (None: on an accelerator).
    # On a CPU the model already uses every core, and the overlap measured 0 to -5%; with the
    # model on one thread of two (a core left free, as a GPU leaves them all) it measured +15-17%.
    overlap_crops: bool | None = None

    def __init__(self, engine: Any, source: FrameSource, request: ClipRequest,
                 progress: Callable[[float, str], None] = lambda f, m: None,
                 cancelled: Callable[[], bool] = lambda: False, sink: RowSink | None = None) -> None:
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
        self._assembler = RowAssembler() if sink is None else None
        self.sink: RowSink = sink if sink is not None else self._assembler.add  # type: ignore[union-attr]
        self._early: dict[str, list[np.ndarray]] = {k: [] for k in _EARLY_ROWS}
        self._early_rows = 0
        self._lock_inputs: dict[str, list[np.ndarray]] = {k: [] for k in _LOCK_INPUTS}
        self.n_rows = 0
        self.failed: list[tuple[int, str]] = []
        self.overlapped = False  # whether run() made crops beside the model passes
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
        row = {key: np.asarray(out[key])[keep] for key in _EARLY_ROWS[2:]}
        row["frame"] = np.full(len(keep), number, dtype=np.int32)
        row["track"] = np.asarray(ids, dtype=np.int32)[keep]
        row["mhr_model_params"] = np.asarray(out["mhr_model_params"])[keep]
        row["shape_params"] = np.asarray(out["shape_params"])[keep]
        for key in _EARLY_ROWS:
            self._early[key].append(row[key])
        for key in _LOCK_INPUTS:
            self._lock_inputs[key].append(row[key])
        self._early_rows += len(keep)
        if self._early_rows >= ROWS_PER_PART:
            self._send_early()
        self._last_keypoints = np.asarray(out["pred_keypoints_2d"])[keep]
        if not self.shared:
            for key in ("cam_int", "image_size", "intrinsics_source", "mode", "faces"):
                self.shared[key] = np.asarray(out[key])

    def _send_early(self) -> None:
        if self._early_rows:
            part = {key: np.concatenate(self._early[key]) for key in _EARLY_ROWS}
            self.sink(self.n_rows, part, None)
            self.n_rows += self._early_rows
        self._early = {k: [] for k in _EARLY_ROWS}
        self._early_rows = 0

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

        def record(numbers: list[int], outs: list[Any]) -> None:
            for number, out in zip(numbers, outs):
                if isinstance(out, ServerError):
                    finished(number, out)
                    continue
                self._record(number, out)
                finished(number, None)

        # The crops of the next batch are made on `crops` while the model runs this one: the
        # host work of a pass (crops, detection) would otherwise leave a GPU idle.
        overlap = (self.overlap_crops if self.overlap_crops is not None
                   else on_accelerator(getattr(self.engine, "device", "cpu")))
        crops = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="clip-crops")
                 if overlap and hasattr(self.engine, "prepare_frames") else None)
        self.overlapped = crops is not None
        in_flight: list[tuple[list[int], Future]] = []  # at most one batch

        def run_in_flight() -> None:
            while in_flight:
                numbers, future = in_flight.pop(0)
                record(numbers, self.engine.run_prepared(future.result(), cancelled=self.cancelled))

        def submit() -> None:
            """The pending frames become a batch; with `crops`, its crops start and the batch
            before it runs meanwhile."""
            if not pending:
                return
            numbers = [number for number, _, _ in pending]
            requests = [self._request(img, b) for _, img, b in pending]
            pending.clear()
            if crops is None:
                record(numbers, self.engine.reconstruct_frames(requests, cancelled=self.cancelled))
                return
            future = crops.submit(self.engine.prepare_frames, requests)
            run_in_flight()
            in_flight.append((numbers, future))

        def flush() -> None:
            """Every frame so far reconstructed (before a frame that needs their results)."""
            submit()
            run_in_flight()

        first = True  # the first frame that decoded gets the request's boxes
        # Closed on every way out, so a cancel or failure stops the reader (and releases the
        # movie) at once rather than when the traceback is collected.
        frames = prefetch(self.source, PREFETCH_BATCHES * self.batch_frames)
        try:
            for number, image in frames:
                if self.cancelled():
                    raise ServerError(CANCELLED, "The clip reconstruction was cancelled.")
                if isinstance(image, ServerError):
                    finished(number, image)
                    continue
                boxes = self._boxes_for(number, first, has_detector)
                if self._batchable(number, first, has_detector):
                    pending.append((number, image, boxes))
                    first = False
                    if len(pending) >= self.batch_frames:
                        submit()
                    continue
                flush()  # this frame's boxes come from the frames before it
                boxes = self._boxes_for(number, first, has_detector)
                first = False
                try:
                    self._frame(number, image, boxes)
                    finished(number, None)
                except ServerError as exc:
                    finished(number, exc)
            flush()
        finally:
            frames.close()
            if crops is not None:
                crops.shutdown(wait=True, cancel_futures=True)
        if done == 0:
            reasons = "; ".join(sorted({m for _, m in self.failed}))[:300]
            raise ServerError(BAD_INPUT, f"no frame of the clip could be reconstructed ({reasons})")
        self.progress(0.92, "locking body shapes")
        result = self._assemble()
        self.progress(1.0, "done")
        return result

    def _assemble(self) -> dict[str, np.ndarray]:
        self._send_early()
        if self.n_rows == 0:
            raise ServerError(BAD_INPUT, "no person was found on any frame of the clip")
        lock = {}
        for key in _LOCK_INPUTS:  # joined one at a time, each list released as it is joined
            lock[key] = np.concatenate(self._lock_inputs.pop(key))
        result: dict[str, np.ndarray] = lock_shapes(self.engine.mhr, lock, self._send_locked)
        self.progress(0.96, "compressing pose correctives")
        from .correctives import track_correctives

        try:
            correctives = track_correctives(self.engine.mhr, lock["mhr_model_params"], lock["track"],
                                            result["track_ids"])
        except (ValueError, AttributeError) as exc:  # an MHR without readable correctives layers
            log.warning("pose correctives left out of the clip: %s", exc)
        else:
            weights = correctives.pop("corrective_weights")
            for start in range(0, self.n_rows, ROWS_PER_PART):
                self.sink(start, {"corrective_weights": weights[start:start + ROWS_PER_PART]}, self.n_rows)
            result.update(correctives)
        del lock
        if self._assembler is not None:
            result.update(self._assembler.finish(self.n_rows))
        result.update(self.shared)
        result["kind"] = np.array(KIND)
        result["fps"] = np.array(self.source.fps, dtype=np.float64)
        result["frames"] = np.asarray(self.source.frame_numbers, dtype=np.int32)
        result["source_path"] = np.array(self.source.path)
        result["failed_frames"] = np.asarray(sorted(f for f, _ in self.failed), dtype=np.int32)
        return result

    def _send_locked(self, start: int, arrays: Mapping[str, np.ndarray]) -> None:
        if self.cancelled():
            raise ServerError(CANCELLED, "The clip reconstruction was cancelled.")
        self.sink(start, arrays, self.n_rows)


def lock_shapes(mhr: Any, rows: dict[str, np.ndarray],
                send: Callable[[int, Mapping[str, np.ndarray]], None]) -> dict[str, np.ndarray]:
    """One body shape per track (the per-coefficient median over its frames, robust to a few
    bad frames), every row re-posed with it. `rows` holds `track`, `mhr_model_params`,
    `shape_params` and `expr_params`; the locked parameters are written into its arrays. The
    locked rows go to `send(start, arrays)` a part at a time (`mhr_skel_state`,
    `mhr_model_params`, `shape_params`); returns the `track_*` arrays."""
    from ..mhr.rig_data import person_rig_state

    track = np.asarray(rows["track"])
    ids = np.unique(track)
    params = rows["mhr_model_params"] = np.asarray(rows["mhr_model_params"], dtype=np.float32)
    shape = rows["shape_params"] = np.asarray(rows["shape_params"], dtype=np.float32)
    expr = np.asarray(rows["expr_params"], dtype=np.float32)
    shapes, scales = [], []
    for tid in ids:
        sel = track == tid
        shapes.append(np.median(shape[sel], axis=0))
        scales.append(np.median(params[sel, N_POSE_PARAMS:], axis=0))
        shape[sel] = shapes[-1]
        params[sel, N_POSE_PARAMS:] = scales[-1]
    for start in range(0, len(track), ROWS_PER_PART):
        stop = min(start + ROWS_PER_PART, len(track))
        skel = np.empty((stop - start, 127, 8), dtype=np.float32)
        for lo in range(start, stop, SHAPE_LOCK_BATCH):
            hi = min(lo + SHAPE_LOCK_BATCH, stop)
            skel[lo - start:hi - start] = person_rig_state(mhr, params[lo:hi], shape[lo:hi],
                                                           expr[lo:hi])["mhr_skel_state"]
        send(start, {"mhr_skel_state": skel, "mhr_model_params": params[start:stop],
                     "shape_params": shape[start:stop]})
    # The rest skeleton and mesh of each track: its locked shape at zero pose.
    first = np.array([np.flatnonzero(track == tid)[0] for tid in ids])
    rest = person_rig_state(mhr, params[first], shape[first], expr[first])
    return {
        "track_ids": ids.astype(np.int32),
        "track_shape_params": np.asarray(shapes, dtype=np.float32).reshape(len(ids), -1),
        "track_scales": np.asarray(scales, dtype=np.float32).reshape(len(ids), -1),
        "track_rest_vertices": rest["mhr_rest_vertices"],
        "track_rest_skel_state": rest["mhr_rest_skel_state"],
    }
