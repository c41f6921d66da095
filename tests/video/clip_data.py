"""Synthetic clips made in the tests from the parity photos: a person panned and scaled over the
frames, and two people crossing. Each clip comes with its true per-frame boxes."""
from __future__ import annotations

from pathlib import Path

import numpy as np

ASTRONAUT_BOX = np.array([40.0, 20.0, 470.0, 500.0])  # the person in astronaut.png (512 x 512)
TWO_PERSON_BOXES = np.array([[20.0, 10.0, 370.0, 512.0], [424.0, 150.0, 684.0, 480.0]])


def _warp_box(box: np.ndarray, m: np.ndarray) -> np.ndarray:
    corners = np.array([[box[0], box[1], 1], [box[2], box[1], 1], [box[0], box[3], 1], [box[2], box[3], 1]])
    pts = corners @ m.T
    return np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])


def write_movie(path: Path, frames: list[np.ndarray], fps: float = 12.0) -> Path:
    import cv2

    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened(), "OpenCV cannot write mp4v here"
    for rgb in frames:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def panned_clip(images: Path, n_frames: int = 6) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(frames RGB, boxes (1, 4) per frame): the astronaut moving right and growing."""
    import cv2
    from PIL import Image

    photo = np.asarray(Image.open(images / "astronaut.png").convert("RGB"))
    frames, boxes = [], []
    for t in range(n_frames):
        scale = 1.0 + 0.03 * t
        m = cv2.getRotationMatrix2D((256.0, 256.0), 0.0, scale)
        m[0, 2] += 6.0 * t
        frames.append(cv2.warpAffine(photo, m, (512, 512), borderMode=cv2.BORDER_REPLICATE))
        box = _warp_box(ASTRONAUT_BOX, m)
        boxes.append(np.clip(box, 0, 511)[None])
    return frames, boxes


def crossing_clip(images: Path, n_frames: int = 9, width: int = 768, height: int = 512
                  ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Two people (cut from two_person.png) walking past each other: A left -> right, B right ->
    left, overlapping in the middle frames. Boxes (2, 4) per frame, row 0 = A, row 1 = B."""
    from PIL import Image

    photo = np.asarray(Image.open(images / "two_person.png").convert("RGB"))
    patches = [photo[int(b[1]):int(b[3]), int(b[0]):int(b[2])] for b in TWO_PERSON_BOXES]
    background = np.full((height, width, 3), 90, np.uint8)
    frames, boxes = [], []
    for t in range(n_frames):
        u = t / (n_frames - 1)
        frame = background.copy()
        row = []
        for k, patch in enumerate(patches):
            h, w = patch.shape[:2]
            x = int(round((20 + u * (width - w - 40)) if k == 0 else (width - w - 20 - u * (width - w - 40))))
            y = height - h
            frame[y:y + h, x:x + w] = patch
            row.append([x, y, x + w - 1, y + h - 1])
        frames.append(frame)
        boxes.append(np.asarray(row, dtype=np.float64))
    return frames, boxes
