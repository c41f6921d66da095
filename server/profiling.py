"""Stage timing hooks for `python -m server bench`.

The pipeline marks its stage boundaries with `with stage("backbone"): ...`. Outside a
`StageRecorder` block that is a no-op (one global read), so production runs pay nothing and the
numbers the stages compute are never touched: timing only reads the clock (and, on CUDA,
synchronises the device so that the wall time belongs to the stage that queued the work).

Stages nest: a stage opened inside another is recorded under the joined path
("hands/backbone"), so a parent's time includes its children's.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Iterator

_local = threading.local()  # the recorder of the current thread (the engine runs one worker)


class StageRecorder:
    """Collects wall times per stage path while active (`with StageRecorder() as rec:`).

    `sync` is called before every clock read (pass `torch.cuda.synchronize` on CUDA)."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.sync = sync
        self.times: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self._stack: list[str] = []
        self._previous: StageRecorder | None = None

    def __enter__(self) -> "StageRecorder":
        self._previous = getattr(_local, "recorder", None)
        _local.recorder = self
        return self

    def __exit__(self, *exc: object) -> None:
        _local.recorder = self._previous

    def clock(self) -> float:
        if self.sync is not None:
            self.sync()
        return time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        path = "/".join([*self._stack, name])
        self._stack.append(name)
        start = self.clock()
        try:
            yield
        finally:
            self.times[path] += self.clock() - start
            self.counts[path] += 1
            self._stack.pop()


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def active_recorder() -> StageRecorder | None:
    return getattr(_local, "recorder", None)


def stage(name: str):
    """Context manager timing `name` under the active recorder; a no-op without one. A stage
    listener of this thread (`listening`) hears the name of every stage that starts."""
    listener = getattr(_local, "listener", None)
    if listener is not None:
        listener(name)
    recorder = getattr(_local, "recorder", None)
    if recorder is None:
        return _nothing()
    return recorder.stage(name)


@contextmanager
def listening(listener: Callable[[str], None]) -> Iterator[None]:
    """Call `listener(stage name)` as each pipeline stage starts in this thread (the engine
    turns them into progress messages: a request's long steps are never silent)."""
    previous = getattr(_local, "listener", None)
    _local.listener = listener
    try:
        yield
    finally:
        _local.listener = previous
