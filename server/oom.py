# SPDX-License-Identifier: GPL-3.0-or-later
"""Recognise "out of memory" failures of the engine and give the memory back afterwards.

The service must keep serving after a request ran out of (GPU) memory: it answers the request
with the `out_of_memory` code, drops every reference to the failed request's tensors, and asks
PyTorch to return its cached blocks to the driver. torch is never imported here: when the
engine has not imported it there is no PyTorch memory to free.
"""
from __future__ import annotations

import gc
import logging
import sys
from typing import Any

log = logging.getLogger(__name__)

# Lower-case fragments of the messages PyTorch and its backends use for allocation failures
# ("CUDA out of memory", "MPS backend out of memory", "CUBLAS_STATUS_ALLOC_FAILED", ...).
# PyTorch's CPU allocator says "DefaultCPUAllocator: can't allocate memory".
_OOM_FRAGMENTS = ("out of memory", "cublas_status_alloc_failed", "cudnn_status_alloc_failed",
                  "failed to allocate memory", "can't allocate memory",
                  "cannot allocate memory")

OOM_MESSAGE = ("The {device} ran out of memory for this request. Try a smaller image, fewer "
               "people (boxes), body mode instead of full, or close other programs using the "
               "{device}; the server is still running.")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch.cuda.OutOfMemoryError (also its older name), MemoryError and the
    RuntimeErrors PyTorch raises when an allocation fails."""
    if isinstance(exc, MemoryError):
        return True
    for cls in type(exc).__mro__:
        if cls.__name__ == "OutOfMemoryError" and cls.__module__.startswith("torch"):
            return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return any(fragment in text for fragment in _OOM_FRAGMENTS)
    return False


def oom_device(exc: BaseException) -> str:
    """A word for the memory that ran out, for the user's message."""
    text = str(exc).lower()
    if "cuda" in text or "gpu" in text or type(exc).__name__ == "OutOfMemoryError":
        return "GPU"
    if "mps" in text:
        return "GPU (MPS)"
    return "computer"


def release_cached_memory(engine: Any = None) -> dict[str, Any]:
    """Free what a failed request left behind; returns what was done (for the log and tests).

    Calls the engine's own ``release_memory()`` hook when it has one, collects garbage (the
    failed request's tensors are only reachable from cycles through its traceback), then
    empties PyTorch's CUDA cache when torch is loaded and CUDA is available."""
    done: dict[str, Any] = {"engine_hook": False, "collected": 0, "cuda_empty_cache": False}
    hook = getattr(engine, "release_memory", None)
    if callable(hook):
        try:
            hook()
            done["engine_hook"] = True
        except Exception:  # freeing memory must never turn into a second failure
            log.exception("engine.release_memory() failed")
    done["collected"] = gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                done["cuda_empty_cache"] = True
        except Exception:
            log.exception("torch.cuda.empty_cache() failed")
    log.info("released memory after an out-of-memory failure: %s", done)
    return done
