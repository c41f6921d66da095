"""Start-up stages of `python -m server serve`, reported before the ready line.

Loading can take minutes (a 3.6 GB download, the model build, moving it to the GPU); the add-on
shows each stage in the panel and the status bar instead of a silent wait. The serve command
points `set_sink` at its ready stream; elsewhere (tests, `reconstruct`) stages go to the log only.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Callable

from addon.protocol.wire import STAGE_PREFIX

log = logging.getLogger("server")
_sink: Callable[[str], None] | None = None
_lock = threading.Lock()


def set_sink(stream: Any) -> None:
    """Write stage lines to `stream` (the serve command's ready stream); None: log only."""
    global _sink
    if stream is None:
        _sink = None
        return

    def write(message: str) -> None:
        with _lock:
            if not stream.closed:
                stream.write(STAGE_PREFIX + json.dumps({"message": message}) + "\n")
                stream.flush()

    _sink = write


def stage(message: str) -> None:
    log.info("%s", message)
    sink = _sink
    if sink is not None:
        try:
            sink(message)
        except (OSError, ValueError):  # the parent stopped reading: loading goes on regardless
            pass


def hub_progress_class(what: str) -> Any:
    """A tqdm class for huggingface_hub's `tqdm_class` that reports the download as stages
    (at most twice a second) and draws nothing itself."""
    from tqdm.auto import tqdm

    class HubProgress(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = False
            kwargs["file"] = open(__import__("os").devnull, "w")
            super().__init__(*args, **kwargs)
            self._last = 0.0

        def update(self, n: float | None = 1) -> bool | None:
            out = super().update(n)
            now = time.monotonic()
            if now - self._last >= 0.5 or (self.total and self.n >= self.total):
                self._last = now
                if self.total and self.unit == "B":
                    stage(f"downloading {what}: {self.n / 2**30:.2f} of {self.total / 2**30:.2f} GB")
                elif self.total:
                    stage(f"downloading {what}: {self.n:.0f} of {self.total:.0f} files")
            return out

        def close(self) -> None:
            fp = getattr(self, "fp", None)
            super().close()
            if fp is not None and not fp.closed:
                fp.close()

    return HubProgress
