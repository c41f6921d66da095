"""Numeric precision modes of the engine (`load_engine(precision=...)`, `bench --precision`).

* `fp32`: every module in float32 (the fp16 conversion a config's `TRAIN.USE_FP16` asks for is
  undone; fp16-rounded weights stay fp16-rounded values, now stored in fp32).
* `official`: the official release's semantics whatever the config file says: DINOv3 entirely
  in fp16 (`USE_FP16: true, FP16_TYPE: float16` of the released config, LayerNorms included),
  ViT-H with fp16 Linear/Conv weights and fp32 LayerNorm (the official `convert_to_fp16`),
  decoders, heads and MHR in fp32.
* `fast`: weights stay fp32; the backbone and the decoder transformer layers run under
  `torch.autocast` (fp16 on CUDA; LayerNorm, softmax and reductions stay fp32 under autocast),
  and ViT-H attention uses fused `scaled_dot_product_attention` (flash kernels on CUDA).
  The pose/camera heads, the rotation maths, the keypoint update and MHR are never autocast:
  they decode small differences of large numbers (Euler angles, FK) where half precision would
  visibly move the mesh. On the CPU `fast` autocasts the backbone alone to bfloat16 where the
  CPU computes bf16 natively (AMX / AVX-512 BF16 / Arm BF16, server/cpu_features.py), and is
  `fp32` elsewhere (emulated half precision is slower than fp32); MPS is not measured (fp32).

Apply a mode once, after the checkpoint is loaded (converting after loading rounds exactly as
loading into converted parameters does: both are one fp32 -> fp16 round-to-nearest).
"""
from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

PRECISIONS = ("official", "fast", "fp32")
_AUTOCAST_ATTR = "_precision_autocast"  # marks a module whose forward we wrapped


def default_precision(device: torch.device | str) -> str:
    """`fast` everywhere (it means fp32 off CUDA)."""
    return "fast"


def check_precision(name: str | None, device: torch.device | str) -> str:
    """Validated mode name; None picks the device default."""
    if name is None or name == "auto":
        return default_precision(device)
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (or auto), got {name!r}")
    return name


def fast_autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype `fast` uses on `device`, None for plain fp32."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.float16
    if kind == "cpu":
        from server.cpu_features import native_bf16

        return torch.bfloat16 if native_bf16()[0] else None
    return None


def _wrap_autocast(module: nn.Module, device_type: str, dtype: torch.dtype) -> None:
    """Run `module.forward` under autocast and return float32 tensors (idempotent)."""
    if getattr(module, _AUTOCAST_ATTR, None) is not None:
        _unwrap_autocast(module)
    original = module.forward

    @functools.wraps(original)
    def forward(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type=device_type, dtype=dtype):
            out = original(*args, **kwargs)
        return out.float() if isinstance(out, torch.Tensor) and out.is_floating_point() else out

    module.forward = forward  # instance attribute: state_dict keys and hooks are unchanged
    setattr(module, _AUTOCAST_ATTR, (device_type, dtype))


def _unwrap_autocast(module: nn.Module) -> None:
    if getattr(module, _AUTOCAST_ATTR, None) is not None:
        del module.forward  # back to the class method
        setattr(module, _AUTOCAST_ATTR, None)


def backbone_linear_weight_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the backbone's nn.Linear weights (what `cast_backbone_linear_weights`
    stores in half precision)."""
    return [f"backbone.{name}.weight" for name, module in model.backbone.named_modules()
            if isinstance(module, nn.Linear)]


def cast_backbone_linear_weights(model: nn.Module, dtype: torch.dtype) -> None:
    """Store the backbone's Linear weights in `dtype`, for `fast` on a bf16 CPU.

    Autocast casts each fp32 weight to bf16 on every call (one round-to-nearest, the same as
    this cast), so the results are bit-identical (tests/bench/test_cpu_bf16.py) and the weights
    take half the memory (DINOv3: 1.7 GB less). The fp32 values are gone: such a model cannot
    switch to another precision (`apply_precision` refuses), it has to be loaded again."""
    with torch.no_grad():
        for module in model.backbone.modules():
            if isinstance(module, nn.Linear) and module.weight.dtype != dtype:
                module.weight = nn.Parameter(module.weight.to(dtype), requires_grad=module.weight.requires_grad)
    model.backbone_linear_dtype = dtype


def fast_linear_weight_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The dtype `load_engine` stores the backbone's Linear weights in for `precision` on
    `device` (None: fp32). Only `fast` on a bf16 CPU: on CUDA the fp32 weights stay, so that
    the precision can still be switched, and the GPU has the memory."""
    device = torch.device(device)
    if precision != "fast" or device.type != "cpu":
        return None
    return fast_autocast_dtype(device)


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    return [layer for dec in (model.decoder, model.decoder_hand) for layer in dec.layers]


def apply_precision(model: nn.Module, precision: str, device: torch.device | str,
                    fast_dtype: torch.dtype | None = None) -> dict[str, str]:
    """Put a loaded `SAM3DBody` into `precision` (in place) and describe the result.

    `fast_dtype` overrides the autocast dtype of `fast` (e.g. bfloat16 on the CPU, for
    measurements); None uses `fast_autocast_dtype(device)`.
    Returns {"precision", "backbone", "decoder", "mhr"}: the dtype each part computes in.
    """
    from server.models.backbones import set_official_precision

    precision = check_precision(precision, device)
    device = torch.device(device)
    autocast = None
    if precision == "fast":
        autocast = fast_dtype if fast_dtype is not None else fast_autocast_dtype(device)
    linear = getattr(model, "backbone_linear_dtype", torch.float32)
    if linear != torch.float32 and (autocast != linear or device.type != "cpu"):
        raise ValueError(
            f"this model holds the backbone's Linear weights in {str(linear).replace('torch.', '')} only "
            f"(loaded for precision fast on a bf16 CPU), so it cannot run precision {precision}"
            f"{' with ' + str(autocast).replace('torch.', '') + ' autocast' if autocast else ''}; "
            "load the engine again with that precision")
    modules = [model.backbone, *_decoder_layers(model)]
    for module in modules:
        _unwrap_autocast(module)
    if precision == "official":
        backbone_dtype = torch.float16
    else:
        backbone_dtype = torch.float32
    if linear == torch.float32:  # else built and kept fp32 apart from those weights
        set_official_precision(model.backbone, backbone_dtype)
    model.backbone_dtype = backbone_dtype
    if precision == "fast":
        if autocast is not None:
            # On the CPU the backbone alone: it is nearly all of the CPU time, and bf16 decoder
            # layers quadruple the deviation (fixtures: 0.06 mm -> 0.23-0.30 mm, docs/PRECISION.md).
            wrapped = modules if device.type == "cuda" else [model.backbone]
            for module in wrapped:
                _wrap_autocast(module, device.type, autocast)
    _set_fused_attention(model.backbone, autocast is not None)
    return describe_precision(model, precision)


def _set_fused_attention(backbone: nn.Module, on: bool) -> None:
    """ViT-H attention through `scaled_dot_product_attention` when autocasting (DINOv3 always
    uses it, as the official code does); off, the official written-out arithmetic."""
    from server.models.backbones.vit import Attention

    for module in backbone.modules():
        if isinstance(module, Attention):
            module.sdpa = on


def describe_precision(model: nn.Module, precision: str) -> dict[str, str]:
    """Which dtype each part computes in (read from the modules, not from the request)."""
    def name(dtype: torch.dtype) -> str:
        return str(dtype).replace("torch.", "")

    back = getattr(model.backbone, _AUTOCAST_ATTR, None)
    layers = _decoder_layers(model)
    dec = getattr(layers[0], _AUTOCAST_ATTR, None) if layers else None
    mhr = model.head_pose.mhr
    mhr_dtype = next((t.dtype for t in list(mhr.parameters()) + list(mhr.buffers()) if t.is_floating_point()),
                     torch.float32)
    return {
        "precision": precision,
        "backbone": f"autocast {name(back[1])}" if back else name(model.backbone.compute_dtype),
        "decoder": f"autocast {name(dec[1])}" if dec else name(model.decoder.norm_final.weight.dtype),
        "mhr": name(mhr_dtype),
    }

