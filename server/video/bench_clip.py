"""`python -m server bench --video N`: person-frames per second of the clip job on a synthetic clip
(the bench image panned over N frames, its boxes given as a tracker would), warm model."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np


@dataclass
class MemoryClip:
    """A FrameSource over frames already in memory (the bench's synthetic clip)."""
    frames: list[np.ndarray]
    fps: float = 30.0
    path: str = "<bench clip>"
    frame_numbers: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.frame_numbers = list(range(len(self.frames)))
        self.size = (int(self.frames[0].shape[1]), int(self.frames[0].shape[0]))

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        return iter(enumerate(self.frames))


def synthetic_clip(image: np.ndarray, boxes: np.ndarray, n_frames: int, step_px: int = 4
                   ) -> tuple[MemoryClip, dict[int, np.ndarray]]:
    """The image shifted right by `step_px` per frame (wrapping), with the boxes following."""
    frames, frame_boxes = [], {}
    for t in range(n_frames):
        frames.append(np.ascontiguousarray(np.roll(image, step_px * t, axis=1)))
        moved = boxes.copy()
        moved[:, [0, 2]] = np.minimum(moved[:, [0, 2]] + step_px * t, image.shape[1] - 1)
        frame_boxes[t] = moved
    return MemoryClip(frames), frame_boxes


def run_video_bench(engine: Any, image: np.ndarray, boxes: np.ndarray, mode: str, n_frames: int,
                    batch_frames: int | None = None) -> dict[str, float]:
    """Time the clip job (inference, tracking, shape lock, corrective compression) after a warm-up
    batch. The boxes are given per frame, as a detector or a studio's tracker gives them, so body
    mode batches ``batch_frames`` frames per model pass."""
    from .clip import ClipJob, ClipRequest, default_batch_frames

    if n_frames < 2:
        raise ValueError(f"--video needs at least 2 frames, got {n_frames}")
    batch = default_batch_frames(engine.device) if batch_frames is None else batch_frames
    warm, warm_boxes = synthetic_clip(image, boxes, min(batch, n_frames))
    ClipJob(engine, warm, ClipRequest(mode=mode, frame_boxes=warm_boxes, batch_frames=batch)).run()
    reads = _reads_per_pass(engine, warm, warm_boxes) if mode == "body" else float("nan")
    clip, frame_boxes = synthetic_clip(image, boxes, n_frames)
    job = ClipJob(engine, clip, ClipRequest(mode=mode, frame_boxes=frame_boxes, batch_frames=batch))
    t0 = time.perf_counter()
    result = job.run()
    seconds = time.perf_counter() - t0
    person_frames = len(result["frame"])
    return {"frames": float(n_frames), "person_frames": float(person_frames), "seconds": seconds,
            "person_frames_per_s": person_frames / seconds, "tracks": float(len(result["track_ids"])),
            "batch_frames": float(batch), "host_reads_per_pass": reads,
            "crops_overlapped": float(job.overlapped)}


def _reads_per_pass(engine: Any, clip: MemoryClip, frame_boxes: dict[int, np.ndarray]) -> float:
    """Device -> host reads in one batched pass of the warm-up frames (server/host_syncs.py):
    the GPU waits on each, so the number must not grow with the frames of a pass."""
    from ..engine import ReconstructRequest
    from ..host_syncs import HostSyncCounter

    requests = [ReconstructRequest(image=f, boxes=frame_boxes[t], mode="body") for t, f in clip]
    with HostSyncCounter(engine.device) as syncs:
        engine.reconstruct_frames(requests)
    return float(syncs.total)
