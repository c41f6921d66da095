"""DINOv3 vision transformer backbone, numerically equivalent to Meta's code.

SAM 3D Body builds this backbone with `torch.hub.load("facebookresearch/dinov3", ...)` and
calls `encoder.get_intermediate_layers(x, n=1, reshape=True, norm=True)[-1]`. This module is an
independent re-implementation of that inference path (facebookresearch/dinov3 @ 6876159):

* module and parameter names reproduce the official `state_dict` keys exactly (the wrapper holds
  the transformer under `.encoder`, so the parent's keys read `backbone.encoder.blocks.0...`);
* the arithmetic follows the official operation order (LayerScale residuals, masked K bias,
  RoPE on the patch tokens only, `F.scaled_dot_product_attention`) so that the fp32 and fp16 CPU
  results match the official ones to rounding.

Only inference is implemented: drop path, RoPE coordinate jitter and the masked-token training
path are training-time features and are not part of the forward.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Values of `dinov3.hub.backbones.dinov3_vith16plus` (the `_make_dinov3_vit` keyword arguments).
_VITH16PLUS: dict[str, Any] = dict(
    patch_size=16,
    in_chans=3,
    pos_embed_rope_base=100.0,
    pos_embed_rope_min_period=None,
    pos_embed_rope_max_period=None,
    pos_embed_rope_normalize_coords="separate",
    pos_embed_rope_dtype="fp32",
    embed_dim=1280,
    depth=32,
    num_heads=20,
    ffn_ratio=6.0,
    qkv_bias=True,
    layerscale_init=1.0e-05,
    norm_layer="layernormbf16",
    ffn_layer="swiglu",
    ffn_bias=True,
    proj_bias=True,
    n_storage_tokens=4,
    mask_k_bias=True,
    untie_cls_and_patch_norms=False,
    untie_global_and_local_cls_norm=False,
)

# `_make_dinov3_vit` / hub keywords that have no effect on the inference forward.
_INERT_ARCH_KEYS = frozenset(
    {
        "img_size",  # RoPE has no absolute size; the patch grid follows the input
        "drop_path_rate",
        "drop_path",
        "pos_embed_rope_shift_coords",
        "pos_embed_rope_jitter_coords",
        "pos_embed_rope_rescale_coords",
        "pretrained",
        "weights",
        "version",
        "hash",
        "check_hash",
        "compact_arch_name",
    }
)

# DINOv3's `norm_layer_dict`: name -> LayerNorm eps.
_NORM_EPS = {"layernorm": 1e-6, "layernormbf16": 1e-5}
# DINOv3's `ffn_layer_dict`: name -> SwiGLU hidden alignment (None: plain GELU MLP).
_FFN_ALIGN = {"mlp": None, "swiglu": 8, "swiglu32": 32, "swiglu64": 64, "swiglu128": 128}
_ROPE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_NORMALIZE_COORDS = ("min", "max", "separate")


# Real-valued ARCH entries (None allowed). PyYAML reads e.g. `1e-5` (no dot) as a string.
_REAL_KEYS = (
    "pos_embed_rope_base",
    "pos_embed_rope_min_period",
    "pos_embed_rope_max_period",
    "ffn_ratio",
    "layerscale_init",
)


def _as_real(key: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"DINOv3 ARCH {key} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"DINOv3 ARCH {key} must be a number, got {value!r}") from None


@dataclass(frozen=True)
class Dinov3Arch:
    """The structural hyper-parameters of a DINOv3 ViT (names as in `_make_dinov3_vit`)."""

    patch_size: int
    in_chans: int
    pos_embed_rope_base: float | None
    pos_embed_rope_min_period: float | None
    pos_embed_rope_max_period: float | None
    pos_embed_rope_normalize_coords: str
    pos_embed_rope_dtype: str
    embed_dim: int
    depth: int
    num_heads: int
    ffn_ratio: float
    qkv_bias: bool
    layerscale_init: float | None
    norm_layer: str
    ffn_layer: str
    ffn_bias: bool
    proj_bias: bool
    n_storage_tokens: int
    mask_k_bias: bool
    untie_cls_and_patch_norms: bool
    untie_global_and_local_cls_norm: bool

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any] | None = None) -> "Dinov3Arch":
        """`dinov3_vith16plus` values updated with `overrides` (a config `ARCH` block)."""
        values = dict(_VITH16PLUS)
        known = {f.name for f in fields(cls)}
        for key, value in (overrides or {}).items():
            if key in known:
                values[key] = value
            elif key not in _INERT_ARCH_KEYS:
                raise ValueError(
                    f"unknown DINOv3 ARCH key {key!r}; expected keyword arguments of "
                    f"_make_dinov3_vit: {sorted(known | _INERT_ARCH_KEYS)}"
                )
        for key in _REAL_KEYS:
            values[key] = _as_real(key, values[key])
        arch = cls(**values)
        arch.validate()
        return arch

    def validate(self) -> None:
        for name in ("patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"DINOv3 ARCH {name} must be a positive integer, got {value!r}")
        if not isinstance(self.n_storage_tokens, int) or self.n_storage_tokens < 0:
            raise ValueError(f"DINOv3 ARCH n_storage_tokens must be >= 0, got {self.n_storage_tokens!r}")
        if self.embed_dim % (4 * self.num_heads) != 0:
            raise ValueError(
                f"DINOv3 RoPE needs embed_dim divisible by 4*num_heads, got embed_dim "
                f"{self.embed_dim} and num_heads {self.num_heads}"
            )
        if not float(self.ffn_ratio) > 0:
            raise ValueError(f"DINOv3 ARCH ffn_ratio must be positive, got {self.ffn_ratio!r}")
        if self.norm_layer not in _NORM_EPS:
            raise ValueError(
                f"DINOv3 ARCH norm_layer {self.norm_layer!r} is not supported; use one of {sorted(_NORM_EPS)}"
            )
        if self.ffn_layer not in _FFN_ALIGN:
            raise ValueError(
                f"DINOv3 ARCH ffn_layer {self.ffn_layer!r} is not supported; use one of {sorted(_FFN_ALIGN)}"
            )
        if self.pos_embed_rope_dtype not in _ROPE_DTYPES:
            raise ValueError(
                f"DINOv3 ARCH pos_embed_rope_dtype {self.pos_embed_rope_dtype!r} is not one of "
                f"{sorted(_ROPE_DTYPES)}"
            )
        if self.pos_embed_rope_normalize_coords not in _NORMALIZE_COORDS:
            raise ValueError(
                f"DINOv3 ARCH pos_embed_rope_normalize_coords {self.pos_embed_rope_normalize_coords!r} "
                f"is not one of {list(_NORMALIZE_COORDS)}"
            )
        has_periods = (
            self.pos_embed_rope_min_period is not None and self.pos_embed_rope_max_period is not None
        )
        if (self.pos_embed_rope_base is None) == (not has_periods):
            raise ValueError(
                "DINOv3 ARCH needs either pos_embed_rope_base or both pos_embed_rope_min_period "
                "and pos_embed_rope_max_period (not both)"
            )


class RopePositionEmbedding(nn.Module):
    """Axial RoPE sin/cos tables for an HxW patch grid (no learnable weights).

    `periods` is a persistent buffer (it is in the checkpoint). The tables are computed in
    `compute_dtype` (the ARCH `pos_embed_rope_dtype`), independent of the buffer's dtype: the
    official fp16 conversion rounds `periods` to fp16 but keeps fp32 angles.
    """

    def __init__(self, arch: Dinov3Arch) -> None:
        super().__init__()
        self.head_dim = arch.embed_dim // arch.num_heads
        self.normalize_coords = arch.pos_embed_rope_normalize_coords
        self.compute_dtype = _ROPE_DTYPES[arch.pos_embed_rope_dtype]
        self.register_buffer("periods", self._official_periods(arch), persistent=True)

    def _official_periods(self, arch: Dinov3Arch) -> Tensor:
        n = self.head_dim // 4
        dtype = self.compute_dtype
        if arch.pos_embed_rope_base is not None:
            exponents = 2 * torch.arange(n, dtype=dtype) / (self.head_dim // 2)
            return arch.pos_embed_rope_base**exponents
        ratio = arch.pos_embed_rope_max_period / arch.pos_embed_rope_min_period
        periods = ratio ** torch.linspace(0, 1, n, dtype=dtype)
        return periods / ratio * arch.pos_embed_rope_max_period

    def forward(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        factory = {"device": self.periods.device, "dtype": self.compute_dtype}
        if self.normalize_coords == "separate":
            den_h, den_w = height, width
        elif self.normalize_coords == "max":
            den_h = den_w = max(height, width)
        else:
            den_h = den_w = min(height, width)
        # Patch centres in [0, 1] per axis, then mapped to [-1, 1].
        rows = torch.arange(0.5, height, **factory) / den_h
        cols = torch.arange(0.5, width, **factory) / den_w
        coords = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).flatten(0, 1)
        coords = 2.0 * coords - 1.0  # (HW, 2) as (y, x)
        # Same expression order as the official code so the angles round identically.
        angles = 2 * math.pi * coords[:, :, None] / self.periods[None, None, :]  # (HW, 2, D/4)
        angles = angles.flatten(1, 2).tile(2)  # (HW, D): [y-angles, x-angles] twice
        return torch.sin(angles), torch.cos(angles)


def _rotate_half(x: Tensor) -> Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def _apply_rope_to_patches(x: Tensor, sin: Tensor, cos: Tensor) -> Tensor:
    """Rotate the last `sin.shape[-2]` tokens of x (B, heads, N, D); prefix tokens unchanged.

    The rotation runs in the dtype of the tables and the result is cast back to x's dtype.
    """
    out_dtype = x.dtype
    x = x.to(dtype=sin.dtype)
    n_prefix = x.shape[-2] - sin.shape[-2]
    if n_prefix < 0:
        raise ValueError(f"RoPE tables cover {sin.shape[-2]} tokens but x has only {x.shape[-2]}")
    patches = x[:, :, n_prefix:, :]
    rotated = (patches * cos) + (_rotate_half(patches) * sin)
    return torch.cat((x[:, :, :n_prefix, :], rotated), dim=-2).to(dtype=out_dtype)


class LinearKMaskedBias(nn.Linear):
    """qkv projection whose bias is multiplied by the `bias_mask` buffer (official: 1/0/1 thirds,
    i.e. no bias on K). The mask is a persistent buffer, stored in the checkpoint."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        if out_features % 3 != 0:
            raise ValueError(f"qkv output size {out_features} is not divisible by 3")
        if self.bias is not None:
            mask = torch.ones(out_features)
            mask[out_features // 3 : 2 * out_features // 3] = 0
            self.register_buffer("bias_mask", mask, persistent=True)

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias * self.bias_mask.to(self.bias.dtype) if self.bias is not None else None
        return F.linear(x, self.weight, bias)


class SelfAttention(nn.Module):
    def __init__(self, arch: Dinov3Arch) -> None:
        super().__init__()
        dim = arch.embed_dim
        self.num_heads = arch.num_heads
        linear = LinearKMaskedBias if arch.mask_k_bias else nn.Linear
        self.qkv = linear(dim, dim * 3, bias=arch.qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=arch.proj_bias)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = (t.transpose(1, 2) for t in torch.unbind(qkv, 2))  # (B, heads, N, D)
        sin, cos = rope
        q = _apply_rope_to_patches(q, sin, cos)
        k = _apply_rope_to_patches(k, sin, cos)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class SwiGLUFFN(nn.Module):
    """w3(silu(w1 x) * w2 x); hidden = int(2/3 * hidden_in) rounded up to `align`."""

    def __init__(self, dim: int, hidden_in: int, bias: bool, align: int) -> None:
        super().__init__()
        reduced = int(hidden_in * 2 / 3)
        hidden = reduced + (-reduced % align)
        self.w1 = nn.Linear(dim, hidden, bias=bias)
        self.w2 = nn.Linear(dim, hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2 (DINOv3's `ffn_layer: mlp`)."""

    def __init__(self, dim: int, hidden: int, bias: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class SelfAttentionBlock(nn.Module):
    def __init__(self, arch: Dinov3Arch) -> None:
        super().__init__()
        dim = arch.embed_dim
        eps = _NORM_EPS[arch.norm_layer]
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(arch)
        # The official block uses an Identity (no parameters) when layerscale_init is falsy.
        self.ls1 = LayerScale(dim, arch.layerscale_init) if arch.layerscale_init else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        hidden_in = int(dim * arch.ffn_ratio)
        align = _FFN_ALIGN[arch.ffn_layer]
        if align is None:
            self.mlp: nn.Module = Mlp(dim, hidden_in, bias=arch.ffn_bias)
        else:
            self.mlp = SwiGLUFFN(dim, hidden_in, bias=arch.ffn_bias, align=align)
        self.ls2 = LayerScale(dim, arch.layerscale_init) if arch.layerscale_init else nn.Identity()

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, arch: Dinov3Arch) -> None:
        super().__init__()
        p = arch.patch_size
        self.proj = nn.Conv2d(arch.in_chans, arch.embed_dim, kernel_size=p, stride=p)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)  # (B, C, H/p, W/p)


class DinoVisionTransformer(nn.Module):
    """The DINOv3 ViT (the official `DinoVisionTransformer`'s parameters and inference path)."""

    def __init__(self, arch: Dinov3Arch) -> None:
        super().__init__()
        self.arch = arch
        self.embed_dim = arch.embed_dim
        self.patch_size = arch.patch_size
        self.n_storage_tokens = arch.n_storage_tokens
        dim = arch.embed_dim
        # Registration order matches the official module, so state_dict() lists keys identically.
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim).normal_(std=0.02))
        if arch.n_storage_tokens > 0:
            self.storage_tokens = nn.Parameter(
                torch.empty(1, arch.n_storage_tokens, dim).normal_(std=0.02)
            )
        self.patch_embed = PatchEmbed(arch)
        self.rope_embed = RopePositionEmbedding(arch)
        self.blocks = nn.ModuleList(SelfAttentionBlock(arch) for _ in range(arch.depth))
        eps = _NORM_EPS[arch.norm_layer]
        self.norm = nn.LayerNorm(dim, eps=eps)
        # Norms that only act on the class/storage tokens, which this backbone discards; they
        # exist so that checkpoints of untied-norm variants load strictly.
        if arch.untie_cls_and_patch_norms:
            self.cls_norm = nn.LayerNorm(dim, eps=eps)
        if arch.untie_global_and_local_cls_norm:
            self.local_cls_norm = nn.LayerNorm(dim, eps=eps)
        # Only used for masked-image training; kept because it is in the checkpoint and because
        # the official forward adds `0 * mask_token` to the class token.
        self.mask_token = nn.Parameter(torch.zeros(1, dim))

    def _tokens(self, x: Tensor) -> tuple[Tensor, int, int]:
        patches = self.patch_embed(x)
        batch, _, height, width = patches.shape
        patches = patches.flatten(2).transpose(1, 2)  # (B, HW, C)
        cls_token = self.cls_token + 0 * self.mask_token
        prefix = [cls_token.expand(batch, -1, -1)]
        if self.n_storage_tokens > 0:
            prefix.append(self.storage_tokens.expand(batch, -1, -1))
        return torch.cat([*prefix, patches], dim=1), height, width

    def forward(self, x: Tensor) -> Tensor:
        """Normalised patch tokens of the last block as (B, C, H/p, W/p): the official
        `get_intermediate_layers(x, n=1, reshape=True, norm=True)[-1]`."""
        tokens, height, width = self._tokens(x)
        # The official code recomputes identical tables for every block; once is enough.
        rope = self.rope_embed(height, width)
        for block in self.blocks:
            tokens = block(tokens, rope)
        # `norm` over all tokens (cls/storage included) as officially; with untied norms the
        # official code normalises the prefix separately, which does not change the patches.
        patches = self.norm(tokens)[:, 1 + self.n_storage_tokens :]
        return patches.reshape(x.shape[0], height, width, -1).permute(0, 3, 1, 2).contiguous()


class Dinov3Backbone(nn.Module):
    """SAM 3D Body's DINOv3 wrapper: the ViT lives under `.encoder`.

    forward(x) takes the mean/std-normalised crop (B, 3, H, W), casts it to the encoder's dtype
    (the official `x.type(backbone_dtype)`) and returns float32 features (B, C, H/16, W/16).
    """

    input_columns = slice(None)

    def __init__(self, arch: Dinov3Arch) -> None:
        super().__init__()
        self.encoder = DinoVisionTransformer(arch)
        self.embed_dim = arch.embed_dim
        self.patch_size = arch.patch_size

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.encoder.patch_embed.proj.weight.dtype

    def forward(self, x: Tensor) -> Tensor:
        check_image_batch(x, self.encoder.arch.in_chans, self.patch_size)
        return self.encoder(x.to(self.compute_dtype)).float()

    def set_official_precision(self, dtype: torch.dtype) -> "Dinov3Backbone":
        """Official `TRAIN.USE_FP16` conversion: the *whole* encoder (every parameter and buffer,
        LayerNorms, tokens, `bias_mask` and RoPE `periods` included) is cast to `dtype`; the RoPE
        tables keep being computed in their configured dtype (fp32)."""
        check_float_dtype(dtype)
        self.encoder.to(dtype)
        return self

    def official_precision_tensors(self) -> list[Tensor]:
        """The tensors `set_official_precision` casts (every floating tensor of the encoder)."""
        return [t for t in (*self.encoder.parameters(), *self.encoder.buffers()) if t.is_floating_point()]


def check_float_dtype(dtype: torch.dtype) -> None:
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"backbone precision must be float32, float16 or bfloat16, got {dtype}")


def check_image_batch(x: Tensor, channels: int, patch: int) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != channels:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"backbone input must be a (B, {channels}, H, W) tensor, got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"backbone input must be a float tensor (normalised image), got {x.dtype}")
    if x.shape[2] < patch or x.shape[3] < patch:
        raise ValueError(f"backbone input {tuple(x.shape)} is smaller than one {patch}x{patch} patch")


def build_dinov3(backbone_type: str, arch_overrides: Mapping[str, Any] | None) -> Dinov3Backbone:
    """`dinov3_vith16plus` (no ARCH allowed) or `dinov3_custom` (vith16plus values + ARCH)."""
    if backbone_type == "dinov3_vith16plus":
        if arch_overrides:
            raise ValueError(
                "BACKBONE.TYPE dinov3_vith16plus has fixed sizes and takes no ARCH block; "
                "use TYPE dinov3_custom for an explicit ARCH"
            )
        return Dinov3Backbone(Dinov3Arch.from_overrides(None))
    if backbone_type == "dinov3_custom":
        if not isinstance(arch_overrides, Mapping) or not arch_overrides:
            raise ValueError("BACKBONE.TYPE dinov3_custom needs a non-empty BACKBONE.ARCH mapping")
        return Dinov3Backbone(Dinov3Arch.from_overrides(arch_overrides))
    raise ValueError(f"not a DINOv3 backbone type: {backbone_type!r}")
