"""Build a model without its random initialisation, when a checkpoint overwrites every weight.

Random init of the full-size model costs 14 s on a 2-core CPU (DINOv3-H+, 970 M values), for
numbers that the checkpoint replaces at once. Inside `no_weight_init()` the `torch.nn.init`
fillers and the `reset_parameters` of the standard layers do nothing, so parameters keep the
uninitialised memory `torch.empty` gives. Buffers computed in `__init__` by plain tensor maths
(RoPE periods, ImageNet mean/std, rig constants) are computed as usual. Use it only where a strict
key check then proves that the checkpoint covers every parameter (server/engine.py).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_",
                   "dirac_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_",
                   "kaiming_normal_", "orthogonal_", "sparse_")
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.LayerNorm, nn.Embedding, nn.GroupNorm,
           nn.BatchNorm1d, nn.BatchNorm2d)


def _keep(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return tensor


@contextlib.contextmanager
def no_weight_init() -> Iterator[None]:
    saved_init = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS if hasattr(nn.init, name)}
    saved_reset = {cls: cls.__dict__.get("reset_parameters") for cls in _LAYERS}
    try:
        for name in saved_init:
            setattr(nn.init, name, _keep)
        for cls, original in saved_reset.items():
            if original is not None:
                setattr(cls, "reset_parameters", lambda self: None)
        yield
    finally:
        for name, fn in saved_init.items():
            setattr(nn.init, name, fn)
        for cls, original in saved_reset.items():
            if original is not None:
                setattr(cls, "reset_parameters", original)
