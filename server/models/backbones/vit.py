"""ViTPose/HMR2-style ViT backbone (`BACKBONE.TYPE: vit_hmr_512_384`), equivalent to Meta's.

Independent re-implementation of the inference path of SAM 3D Body's `vit512_384` ViT:
padded patch convolution (k16 s16 padding 2), a learned absolute position embedding with a
"cls" slot that is added to every patch (there is no cls token), pre-norm blocks with
`LayerNorm32` (LayerNorm computed in fp32 and cast back), exact GELU MLP, attention written out
as `softmax((q*scale) @ k^T) @ v`, and `last_norm`. Input is the centre 512x384 of the 512x512
crop (`input_columns`); output (B, C, 32, 24).

Parameter names reproduce the official keys (`backbone.pos_embed`, `backbone.blocks.0...`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dinov3 import check_float_dtype, check_image_batch

# The sizes hard-coded in the official `vit512_384`; an ARCH block may override these four.
_VITH_SIZES: dict[str, Any] = dict(embed_dim=1280, depth=32, num_heads=16, mlp_ratio=4)
# Descriptive ARCH keys: they document values this implementation fixes; any other value is an
# architecture we do not implement.
_FIXED_ARCH_VALUES: dict[str, Any] = dict(
    img_size=[512, 384],
    patch_size=16,
    ratio=1,
    qkv_bias=True,
    norm_layer="LayerNorm32",
    patch_padding=2,
)
_INERT_ARCH_KEYS = frozenset({"drop_path_rate"})

IMAGE_HW = (512, 384)
PATCH = 16
PATCH_PADDING = 2  # official `4 + 2 * (ratio // 2 - 1)` with ratio 1
LAYER_NORM_EPS = 1e-5


@dataclass(frozen=True)
class VitArch:
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    flash_attn: bool = False

    @classmethod
    def from_config(cls, arch: Mapping[str, Any] | None, flash_attn: bool = False) -> "VitArch":
        values = dict(_VITH_SIZES)
        for key, value in (arch or {}).items():
            if key in values:
                values[key] = value
            elif key in _FIXED_ARCH_VALUES:
                expected = _FIXED_ARCH_VALUES[key]
                got = list(value) if isinstance(value, (list, tuple)) else value
                if got != expected:
                    raise ValueError(
                        f"vit_hmr_512_384 ARCH {key}={value!r} is not supported (only {expected!r})"
                    )
            elif key not in _INERT_ARCH_KEYS:
                raise ValueError(
                    f"unknown vit_hmr_512_384 ARCH key {key!r}; expected "
                    f"{sorted([*_VITH_SIZES, *_FIXED_ARCH_VALUES, *_INERT_ARCH_KEYS])}"
                )
        result = cls(flash_attn=bool(flash_attn), **values)
        result.validate()
        return result

    def validate(self) -> None:
        for name in ("embed_dim", "depth", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"vit_hmr_512_384 ARCH {name} must be a positive integer, got {value!r}")
        if self.embed_dim % self.num_heads != 0:
            raise ValueError(
                f"vit_hmr_512_384 embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        if not float(self.mlp_ratio) > 0:
            raise ValueError(f"vit_hmr_512_384 ARCH mlp_ratio must be positive, got {self.mlp_ratio!r}")


class LayerNorm32(nn.LayerNorm):
    """LayerNorm evaluated in fp32 whatever the input dtype, result cast back to it."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


class PatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=PATCH, stride=PATCH, padding=PATCH_PADDING)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[2], x.shape[3]
        return x.flatten(2).transpose(1, 2), height, width


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, flash_attn: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.flash_attn = flash_attn
        # Set by precision `fast` while autocasting: fused attention (flash kernels on CUDA),
        # which never materialises the (heads, N, N) score matrix.
        self.sdpa = False
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, N, D)
        if self.flash_attn:
            out = self._flash_attention(q, k, v)
        elif self.sdpa:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            # Written out (not SDPA) because that is the official arithmetic.
            attn = (q * self.scale) @ k.transpose(-2, -1)
            out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, -1))

    @staticmethod
    def _flash_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        # `BACKBONE.FLASH_ATTN: true` officially calls flash_attn_func, which needs half
        # precision: fp32 inputs are cast to fp16 and the result cast back.
        dtype = q.dtype
        if dtype == torch.float32:
            q, k, v = q.half(), k.half(), v.half()
        return F.scaled_dot_product_attention(q, k, v).to(dtype)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, arch: VitArch) -> None:
        super().__init__()
        dim = arch.embed_dim
        self.norm1 = LayerNorm32(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, arch.num_heads, arch.flash_attn)
        self.norm2 = LayerNorm32(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * arch.mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VitBackbone(nn.Module):
    """forward(x): x (B, 3, 512, 384) normalised crop columns 64:448 -> float32 (B, C, 32, 24)."""

    input_columns = slice(64, 448)

    def __init__(self, arch: VitArch) -> None:
        super().__init__()
        self.arch = arch
        self.embed_dim = arch.embed_dim
        self.patch_size = PATCH
        self.grid_hw = (IMAGE_HW[0] // PATCH, IMAGE_HW[1] // PATCH)
        num_patches = self.grid_hw[0] * self.grid_hw[1]
        # Slot 0 is the unused "cls" position of the pre-training layout; it is added to every
        # patch. Registered first so state_dict() lists keys in the official order.
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, arch.embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.patch_embed = PatchEmbed(arch.embed_dim)
        self.blocks = nn.ModuleList(Block(arch) for _ in range(arch.depth))
        self.last_norm = LayerNorm32(arch.embed_dim, eps=LAYER_NORM_EPS)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.patch_embed.proj.weight.dtype

    def forward(self, x: Tensor) -> Tensor:
        check_image_batch(x, 3, PATCH)
        if tuple(x.shape[2:]) != IMAGE_HW:
            raise ValueError(
                f"vit_hmr_512_384 expects a (B, 3, {IMAGE_HW[0]}, {IMAGE_HW[1]}) input (crop columns "
                f"64:448), got {tuple(x.shape)}; the position embedding is not interpolated"
            )
        batch = x.shape[0]
        tokens, height, width = self.patch_embed(x.to(self.compute_dtype))
        tokens = tokens + self.pos_embed[:, 1:] + self.pos_embed[:, :1]
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.last_norm(tokens)
        features = tokens.permute(0, 2, 1).reshape(batch, -1, height, width).contiguous()
        return features.float()

    def set_official_precision(self, dtype: torch.dtype) -> "VitBackbone":
        """Official `TRAIN.USE_FP16` conversion for the ViT: only Linear/Conv parameters and
        `pos_embed` change dtype; the LayerNorm32 weights stay fp32."""
        check_float_dtype(dtype)
        for param in self.official_precision_tensors():
            param.data = param.data.to(dtype)
        return self

    def official_precision_tensors(self) -> list[torch.Tensor]:
        """The tensors `set_official_precision` casts: Linear/Conv parameters and `pos_embed`."""
        out = [p for m in self.modules() if isinstance(m, (nn.Linear, nn.Conv2d)) for p in m.parameters(recurse=False)]
        return [*out, self.pos_embed]


def build_vit(arch: Mapping[str, Any] | None, flash_attn: bool = False) -> VitBackbone:
    if arch is not None and not isinstance(arch, Mapping):
        raise ValueError(f"BACKBONE.ARCH must be a mapping, got {type(arch).__name__}")
    return VitBackbone(VitArch.from_config(arch, flash_attn=flash_attn))
