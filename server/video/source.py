"""Frames of a clip: a movie file (OpenCV's FFmpeg backend), a folder of numbered images, or one
image sequence of a folder named by a pattern (`walk_####.png`, addon/protocol/sequence.py).

Frames are decoded one at a time and handed out as RGB uint8, so a long clip is never held in
memory; frames outside the range or between steps are skipped with `grab()` (no colour
conversion).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from addon.protocol.clip_result import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from addon.protocol.sequence import is_sequence_pattern, natural_key, sequence_files

from ..errors import BAD_INPUT, ServerError

DEFAULT_SEQUENCE_FPS = 24.0


@dataclass
class FrameSource:
    path: str
    fps: float
    frame_numbers: list[int]  # source frame numbers that will be yielded, in order
    size: tuple[int, int]  # width, height
    _files: list[Path] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.frame_numbers)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray | ServerError]]:
        """(frame number, RGB uint8) per frame; an image file that cannot be read gives its
        ServerError in place of the pixels."""
        if self._files:
            yield from self._iter_images()
        else:
            yield from self._iter_movie()

    def _iter_images(self) -> Iterator[tuple[int, np.ndarray | ServerError]]:
        from ..imageio import load_image

        for number in self.frame_numbers:
            try:
                image = load_image(str(self._files[number]))
            except ServerError as exc:  # one unreadable file is one skipped frame, not a failed clip
                yield number, ServerError(exc.code, f"{self._files[number].name}: {exc.message}")
                continue
            rgb = image[0] if isinstance(image, tuple) else image
            mismatch = _size_mismatch(self._files[number].name, rgb, self.size)
            yield number, mismatch if mismatch is not None else np.ascontiguousarray(rgb)

    def _iter_movie(self) -> Iterator[tuple[int, np.ndarray]]:
        import cv2

        wanted = set(self.frame_numbers)
        last = self.frame_numbers[-1] if self.frame_numbers else -1
        cap = cv2.VideoCapture(self.path)
        try:
            for number in range(last + 1):
                if not cap.grab():
                    return  # the container promised more frames than it holds
                if number in wanted:
                    ok, bgr = cap.retrieve()
                    if ok and bgr is not None:
                        mismatch = _size_mismatch(f"frame {number}", bgr, self.size)
                        yield number, mismatch if mismatch is not None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            cap.release()


def _size_mismatch(name: str, pixels: np.ndarray, size: tuple[int, int]) -> ServerError | None:
    """A frame of another size than the clip's is skipped: the clip has one camera, and its
    boxes and intrinsics are in the first frame's pixels."""
    height, width = pixels.shape[:2]
    if (width, height) == tuple(size):
        return None
    return ServerError(BAD_INPUT, f"{name} is {width}x{height} but the clip's frames are "
                       f"{size[0]}x{size[1]}: every frame of a clip needs the same size")


def _first_size(files: list[Path], numbers: list[int], path: str) -> tuple[int, int]:
    """(width, height) of the first selected image that can be read: one unreadable file is a
    skipped frame, not a failed clip."""
    from ..imageio import load_image

    first_error: ServerError | None = None
    for number in numbers:
        try:
            image = load_image(str(files[number]))
        except ServerError as exc:
            first_error = first_error or exc
            continue
        rgb = image[0] if isinstance(image, tuple) else image
        return int(rgb.shape[1]), int(rgb.shape[0])
    reason = f" ({files[numbers[0]].name}: {first_error.message})" if first_error else ""
    raise ServerError(BAD_INPUT, f"no image of the folder {path} could be read{reason}")


def _frame_numbers(count: int, start: int, stop: int | None, step: int, path: str) -> list[int]:
    if start < 0 or step < 1 or (stop is not None and stop <= start):
        raise ServerError(BAD_INPUT, f"bad frame range start={start} stop={stop} step={step}: need "
                          "0 <= start < stop and step >= 1")
    end = count if stop is None else min(stop, count)
    numbers = list(range(start, end, step))
    if not numbers:
        raise ServerError(BAD_INPUT, f"{path} has {count} frames; the range start={start} stop={stop} "
                          "selects none")
    return numbers


def open_clip(path: str | os.PathLike, start: int = 0, stop: int | None = None, step: int = 1,
              fps: float | None = None) -> FrameSource:
    """The frames `start, start+step, ...` (< `stop`) of a movie file or an image folder.
    `fps` overrides the container's rate (and names the rate of an image sequence)."""
    path = str(path)
    if fps is not None and not (np.isfinite(fps) and fps > 0):
        raise ServerError(BAD_INPUT, f"the frame rate must be a number above 0, not {fps!r}")
    files: list[Path] = []
    if os.path.isdir(path):
        files = sorted((p for p in Path(path).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                       key=natural_key)
        if not files:
            raise ServerError(BAD_INPUT, f"the folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    elif is_sequence_pattern(path) and not os.path.exists(path):
        try:
            files = sequence_files(path)
        except ValueError as exc:
            raise ServerError(BAD_INPUT, str(exc)) from None
    if files:
        numbers = _frame_numbers(len(files), start, stop, step, path)
        return FrameSource(path, float(fps or DEFAULT_SEQUENCE_FPS), numbers,
                           _first_size(files, numbers, path), files)
    if not os.path.isfile(path):
        raise ServerError(BAD_INPUT, f"clip not found: {path}")
    if os.path.splitext(path)[1].lower() not in VIDEO_SUFFIXES:
        raise ServerError(BAD_INPUT, f"{path} is not a movie file ({', '.join(VIDEO_SUFFIXES)}) nor an "
                          "image folder")
    import cv2

    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise ServerError(BAD_INPUT, f"cannot open the movie {path}: OpenCV's FFmpeg backend does not "
                              "read it (unsupported codec or a damaged file); convert it to H.264 MP4 "
                              "or export an image sequence")
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        rate = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        # The size of a decoded frame, not the container's: a phone clip's rotation metadata
        # turns the frames, and the container may give the size before the turn.
        ok, frame = cap.read()
        if not ok or frame is None:
            raise ServerError(BAD_INPUT, f"the movie {path} has no readable frame")
        height, width = frame.shape[:2]
        if count <= 0:
            count = 1
            while cap.grab():  # the container does not say its length: count the frames
                count += 1
    finally:
        cap.release()
    numbers = _frame_numbers(count, start, stop, step, path)
    if not np.isfinite(rate) or rate <= 0:
        rate = DEFAULT_SEQUENCE_FPS
    return FrameSource(path, float(fps or rate), numbers, (width, height))
