"""Count the calls that make the host wait for the accelerator (device -> host reads).

On a GPU every `.item()`, `.cpu()`, `bool(tensor)` and every op whose output size depends on the
data (`nonzero`, `unique`, `masked_select`) stalls the host until the queued work is done, so
the next batch cannot be queued behind it. A batched clip pass must make a fixed number of
them, however many frames and people it holds: one per frame would cap the frame rate at the
host's round-trip rate. The counter sees the calls on any device (a CPU run counts the calls a
GPU run would wait on), so the property is tested without a GPU (tests/video/test_host_syncs.py)
and `python -m server bench --video` prints the count per pass.
"""
from __future__ import annotations

import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode

_READS: frozenset[Callable[..., Any]] = frozenset({
    torch.Tensor.item, torch.Tensor.cpu, torch.Tensor.tolist,
    torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__,
    torch.Tensor.nonzero, torch.nonzero, torch.Tensor.unique, torch.unique,
    torch.Tensor.masked_select, torch.masked_select, torch.Tensor.any, torch.Tensor.all,
})
_ROOT = Path(__file__).resolve().parent.parent  # call sites are named relative to the project
_OWN = ("server", "addon", "tests", "scripts")  # not a .venv inside the project


def _to_host(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """A `.to()` that copies a tensor off its accelerator (a no-op move to the CPU is none)."""
    if not (args and isinstance(args[0], torch.Tensor)) or args[0].device.type == "cpu":
        return False
    targets = [*args[1:], kwargs.get("device")]
    return any(str(t) == "cpu" for t in targets if isinstance(t, (str, torch.device)))


def _site() -> str:
    """The innermost frame of the project that made the call (not torch's own)."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = Path(frame.filename).resolve()
        if _ROOT in path.parents and path.relative_to(_ROOT).parts[0] in _OWN:
            return f"{path.relative_to(_ROOT)}:{frame.lineno}"
    return "<outside the project>"


class HostSyncCounter(TorchFunctionMode):
    """`with HostSyncCounter() as syncs: ...`; then `syncs.total` and `syncs.sites`
    (call site -> count). `any`/`all` count because their result is nearly always read on the
    host right away (`if x.any():`).

    With `device` (e.g. "cuda"), only reads of tensors on that device type count; without, every
    read counts, which on a CPU run is what the same code would wait on with its tensors on a GPU
    (an upper bound: a read of a tensor that stays on the host there counts too)."""

    def __init__(self, device: str | torch.device | None = None) -> None:
        super().__init__()
        self.device_type = None if device is None else torch.device(device).type
        self.sites: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.sites.values())

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _READS or (func is torch.Tensor.to and _to_host(args, kwargs)):
            first = args[0] if args else None
            if self.device_type is None or (isinstance(first, torch.Tensor)
                                            and first.device.type == self.device_type):
                self.sites[_site()] += 1
        return func(*args, **kwargs)
