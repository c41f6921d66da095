"""Decode a clip's next frames while the model runs on the current ones.

Movie decoding (FFmpeg through OpenCV) and image loading release the GIL, so a reader thread
filling a small bounded queue takes them off the model's critical path: on a GPU the model
otherwise waits for every frame's decode. The queue bounds the memory (`depth` frames), the
reader stops and closes its source (releasing the movie) when the consumer stops early, and an
exception in the reader comes out of the consumer's loop at the frame where it happened.
"""
from __future__ import annotations

import queue
import threading
from typing import Generator, Iterable, TypeVar

T = TypeVar("T")

_ITEM, _DONE, _ERROR = range(3)


def prefetch(items: Iterable[T], depth: int) -> Generator[T, None, None]:
    """`items` in order, read ahead by up to `depth` on a thread (depth < 1: no thread)."""
    if depth < 1:
        yield from items
        return
    ready: queue.Queue[tuple[int, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[int, object]) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        source = iter(items)
        try:
            for item in source:
                if not put((_ITEM, item)):
                    return
            put((_DONE, None))
        except BaseException as exc:  # handed to the consumer, raised there
            put((_ERROR, exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    reader = threading.Thread(target=read, name="clip-frames", daemon=True)
    reader.start()
    try:
        while True:
            kind, value = ready.get()
            if kind == _ITEM:
                yield value  # type: ignore[misc]
            elif kind == _DONE:
                return
            else:
                raise value  # type: ignore[misc]
    finally:
        stop.set()
        reader.join(timeout=10.0)
