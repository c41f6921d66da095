"""Several frames of one clip through the model in one pass (body mode).

A clip's frames share their size and camera, and the model treats every person crop on its
own, so the crops of many frames form one batch: one backbone and decoder pass instead of one
per frame, and one MHR forward for all of them. Results equal one frame at a time but for float
rounding (measured in tests/video/test_frame_batch.py).

The work is split in two so that a clip can make the next batch's crops while the model runs
this one (server/video/clip.py): `prepare_frames` (checks, detection, crops: host work) and
`run_prepared` (the model pass, under the engine's lock). `reconstruct_frames` does both.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .errors import BAD_INPUT, CANCELLED, NO_PERSON, ServerError
from .profiling import stage

log = logging.getLogger("server.engine")


@dataclass
class PreparedFrames:
    """Frames ready for one model pass: per request an early ServerError (bad image or box,
    nobody found) or, in `prepared`, (index, work image, cam_int, intrinsics source, boxes
    source, crop batch)."""
    requests: Sequence[Any]
    errors: dict[int, ServerError] = field(default_factory=dict)
    prepared: list[tuple[int, Any, np.ndarray, str, str, Any]] = field(default_factory=list)


def reconstruct_frames(engine: Any, requests: Sequence[Any],
                       cancelled: Callable[[], bool] = lambda: False
                       ) -> list[dict[str, np.ndarray] | ServerError]:
    """Body mode for several images of one size (a clip's frames) in one model pass.

    Per request: what `Engine.reconstruct` returns, or the ServerError that request alone got
    (a bad image or box, nobody found): one bad frame never fails the others. Running out of
    memory falls back to one image at a time."""
    return run_prepared(engine, prepare_frames(engine, requests), cancelled)


def prepare_frames(engine: Any, requests: Sequence[Any]) -> PreparedFrames:
    """The host side of a pass: checks, intrinsics, downscale, detection, crops. Safe on
    another thread while `run_prepared` runs: it takes only the detector's lock."""
    from .engine import _downscale
    from .pipeline.crop import prepare_batch
    from .pipeline.estimator import validate_boxes, validate_cam_int
    from .pipeline.intrinsics import resolve_intrinsics

    frames = PreparedFrames(requests)
    framed: list[tuple[int, Any, np.ndarray, str, str, np.ndarray]] = []
    for i, request in enumerate(requests):
        try:
            if request.mode != "body" or request.prompts or request.masks is not None:
                raise ServerError(BAD_INPUT, "frames batch in body mode without prompts or masks")
            image = request.image
            if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3
                    and image.dtype == np.uint8):
                raise ServerError(BAD_INPUT, "image must be an RGB uint8 array of shape (H, W, 3)")
            height, width = image.shape[:2]
            cam_int, source = resolve_intrinsics(width, height, request.intrinsics,
                                                 request.exif_focal_35mm)
            work = _downscale(image, cam_int, request, engine.max_work_side)
            boxes, boxes_source = work.boxes, "user"
            if boxes is None and request.detect:
                with engine._detect_lock, torch.inference_mode():
                    detect = engine._detector()
                    if detect is not None:
                        boxes, boxes_source = np.asarray(detect(work.image), np.float32).reshape(-1, 4), "detector"
                if boxes is not None and len(boxes) == 0:
                    raise ServerError(NO_PERSON, "No person was found in the image; draw a box around "
                                      "the person and try again.")
            if boxes is None:
                h, w = work.image.shape[:2]
                boxes, boxes_source = np.array([[0, 0, w, h]]), "full_image"
            framed.append((i, work, cam_int, source, boxes_source,
                           validate_boxes(boxes, *work.image.shape[1::-1])))
        except ServerError as exc:
            frames.errors[i] = exc

    def crop(item: tuple[int, Any, np.ndarray, str, str, np.ndarray]) -> Any:
        try:
            return prepare_batch(item[1].image, item[5], cam_int=validate_cam_int(item[1].cam_int))
        except ServerError as exc:
            return exc

    # Cropping is numpy (it releases the GIL): crop the frames side by side.
    with ThreadPoolExecutor(max_workers=max(1, min(len(framed), os.cpu_count() or 1))) as pool:
        crops = list(pool.map(crop, framed))
    for item, batch in zip(framed, crops):
        if isinstance(batch, ServerError):
            frames.errors[item[0]] = batch
        else:
            frames.prepared.append((*item[:5], batch))
    return frames


def run_prepared(engine: Any, frames: PreparedFrames, cancelled: Callable[[], bool] = lambda: False
                 ) -> list[dict[str, np.ndarray] | ServerError]:
    """The model pass of `prepare_frames`'s output, in request order (see reconstruct_frames)."""
    from .engine import _upscale_outputs
    from .mhr.rig_data import person_rig_state
    from .pipeline.crop import concat_batches
    from .pipeline.estimator import _stack_outputs
    from .pipeline.inference import run_inference, to_device

    requests, prepared = frames.requests, frames.prepared
    results: list[dict[str, np.ndarray] | ServerError | None] = [frames.errors.get(i) for i in range(len(requests))]
    if cancelled():
        raise ServerError(CANCELLED, "The reconstruction was cancelled.")
    with engine._lock, torch.inference_mode():
        if prepared:
            try:
                with stage("body"):
                    batch = to_device(concat_batches([p[5] for p in prepared]), engine.device)
                    engine.model._initialize_batch(batch)
                    out = _stack_outputs(run_inference(engine.model, prepared[0][1].image, batch, "body")["mhr"],
                                         batch, None)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory errors fall back
                from .oom import is_out_of_memory, release_cached_memory

                if not is_out_of_memory(exc) or len(prepared) < 2:
                    raise
                release_cached_memory()
                log.warning("out of memory with %d frames in one batch: one at a time", len(prepared))
                out = None
            if out is not None:
                with stage("skeleton"):
                    state = person_rig_state(engine.mhr, out["mhr_model_params"], out["shape_params"],
                                             out["expr_params"])
                faces = np.asarray(engine.model.head_pose.faces.detach().cpu().numpy(), dtype=np.int32)
                start = 0
                for i, work, cam_int, source, boxes_source, batch in prepared:
                    part = slice(start, start + batch["img"].shape[1])
                    start = part.stop
                    one = {k: v[part] for k, v in out.items()}
                    one["cam_int"] = np.asarray(work.cam_int, np.float32).reshape(3, 3)
                    one = _upscale_outputs(one, work.scale, cam_int, None)
                    one.update({k: v[part] for k, v in state.items()})
                    height, width = requests[i].image.shape[:2]
                    one.update(faces=faces, cam_int=np.asarray(cam_int, np.float32).reshape(3, 3),
                               image_size=np.array([width, height], np.int32),
                               intrinsics_source=np.array(source), mode=np.array("body"),
                               boxes_source=np.array(boxes_source))
                    results[i] = one
    for i, request in enumerate(requests):
        if results[i] is None:  # the out-of-memory fallback
            try:
                results[i] = engine.reconstruct(request, cancelled=cancelled)
            except ServerError as exc:
                if exc.code == CANCELLED:
                    raise
                results[i] = exc
    return [r for r in results if r is not None]
