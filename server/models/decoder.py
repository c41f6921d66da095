"""SAM-style promptable cross-attention decoder (``decoder.*``, ``decoder_hand.*``).

Each layer: self-attention over the query tokens, cross-attention from the tokens to the image
tokens, then a GELU FFN; every block is pre-norm with a residual. With ``repeat_pe`` the raw
token/image augments are re-normalised by ``ln_pe_1`` / ``ln_pe_2`` in every layer and added to
queries/keys (not to values); layer 0 skips the augment in self-attention.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import FFN, LayerNorm32

DECODER_LN_EPS = 1e-6

# (tokens_after_norm_final, layer_idx) -> pose output dict
PoseFn = Callable[[torch.Tensor, int], dict]
# (tokens, token_augment, pose_output, layer_idx) -> (tokens, token_augment)
UpdateFn = Callable[[torch.Tensor, torch.Tensor, dict, int], "tuple[torch.Tensor, torch.Tensor]"]
CaptureFn = Callable[[str, torch.Tensor], None]


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections (inner dim = heads * head_dim)."""

    def __init__(self, embed_dims: int, num_heads: int, query_dims: int, key_dims: int, value_dims: int) -> None:
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"attention dim {embed_dims} is not divisible by {num_heads} heads")
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.head_dims = embed_dims // num_heads
        self.q_proj = nn.Linear(query_dims, embed_dims)
        self.k_proj = nn.Linear(key_dims, embed_dims)
        self.v_proj = nn.Linear(value_dims, embed_dims)
        self.proj = nn.Linear(embed_dims, query_dims)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, self.head_dims).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, n, _ = q.shape
        q = self._heads(self.q_proj(q))
        k = self._heads(self.k_proj(k))
        v = self._heads(self.v_proj(v))
        # k/v may carry a batch of 1 (shared image PE broadcast): SDPA needs equal batch sizes.
        if k.shape[0] != b:
            k = k.expand(b, -1, -1, -1)
        if v.shape[0] != b:
            v = v.expand(b, -1, -1, -1)
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.transpose(1, 2).reshape(b, n, self.embed_dims)
        return self.proj(x)


class DecoderLayer(nn.Module):
    """One decoder layer (official ``TransformerDecoderLayer`` with two-way attention off)."""

    def __init__(
        self,
        token_dims: int,
        context_dims: int,
        num_heads: int,
        head_dims: int,
        mlp_dims: int,
        repeat_pe: bool,
        skip_first_pe: bool,
    ) -> None:
        super().__init__()
        self.repeat_pe = repeat_pe
        self.skip_first_pe = skip_first_pe
        inner = num_heads * head_dims
        if repeat_pe:
            self.ln_pe_1 = LayerNorm32(token_dims, eps=DECODER_LN_EPS)
            self.ln_pe_2 = LayerNorm32(context_dims, eps=DECODER_LN_EPS)
        self.ln1 = LayerNorm32(token_dims, eps=DECODER_LN_EPS)
        self.self_attn = Attention(inner, num_heads, token_dims, token_dims, token_dims)
        self.ln2_1 = LayerNorm32(token_dims, eps=DECODER_LN_EPS)
        self.ln2_2 = LayerNorm32(context_dims, eps=DECODER_LN_EPS)
        self.cross_attn = Attention(inner, num_heads, token_dims, context_dims, context_dims)
        self.ln3 = LayerNorm32(token_dims, eps=DECODER_LN_EPS)
        self.ffn = FFN(token_dims, mlp_dims, num_fcs=2, act_layer=nn.GELU, add_identity=True)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        x_pe: torch.Tensor | None = None,
        context_pe: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, D) tokens, context (B, HW, C) image tokens, x_pe (B, T, D) token augment,
        context_pe (1 or B, HW, C) image PE -> updated tokens (B, T, D)."""
        use_pe = self.repeat_pe and context_pe is not None
        if use_pe:
            x_pe = self.ln_pe_1(x_pe)
            context_pe = self.ln_pe_2(context_pe)

        xn = self.ln1(x)
        if use_pe and not self.skip_first_pe and x_pe is not None:
            qk = xn + x_pe
            x = x + self.self_attn(qk, qk, xn)
        else:
            x = x + self.self_attn(xn, xn, xn)

        cn = self.ln2_2(context)
        if use_pe:
            x = x + self.cross_attn(self.ln2_1(x) + x_pe, cn + context_pe, cn)
        else:
            x = x + self.cross_attn(self.ln2_1(x), cn, cn)

        return self.ffn(self.ln3(x), identity=x)


class PromptableDecoder(nn.Module):
    """Stack of ``DecoderLayer`` + ``norm_final`` with intermediate predictions.

    After every layer but the last, ``pose_fn(norm_final(tokens), layer)`` gives that layer's pose
    output and ``update_fn`` refreshes the keypoint tokens from it; after the last layer the
    normalised tokens are returned together with the list of all per-layer pose outputs.
    """

    def __init__(
        self,
        dims: int,
        context_dims: int,
        depth: int,
        num_heads: int,
        head_dims: int,
        mlp_dims: int,
        repeat_pe: bool = True,
        do_interm_preds: bool = True,
        keypoint_token_update: bool = True,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(dims, context_dims, num_heads, head_dims, mlp_dims, repeat_pe, skip_first_pe=(i == 0))
            for i in range(depth)
        )
        self.norm_final = LayerNorm32(dims, eps=DECODER_LN_EPS)
        self.do_interm_preds = do_interm_preds
        self.keypoint_token_update = keypoint_token_update

    def forward(
        self,
        tokens: torch.Tensor,
        image: torch.Tensor,
        token_augment: torch.Tensor,
        image_augment: torch.Tensor,
        pose_fn: PoseFn,
        update_fn: UpdateFn | None = None,
        capture: CaptureFn | None = None,
    ) -> tuple[torch.Tensor, list[dict]]:
        """tokens (B, T, D), image (B, C, h, w), token_augment (B, T, D), image_augment
        (1|B, C, h, w) -> (norm_final(tokens) (B, T, D), [pose output per predicted layer])."""
        image = image.flatten(2).permute(0, 2, 1)
        image_augment = image_augment.flatten(2).permute(0, 2, 1)
        outputs: list[dict] = []
        last = len(self.layers) - 1
        for idx, layer in enumerate(self.layers):
            if capture is not None:
                capture(f"L{idx}.tokens_in", tokens)
                capture(f"L{idx}.augment_in", token_augment)
            tokens = layer(tokens, image, token_augment, image_augment)
            if capture is not None:
                capture(f"L{idx}.tokens_out", tokens)
            if self.do_interm_preds and idx < last:
                pose = pose_fn(self.norm_final(tokens), idx)
                outputs.append(pose)
                if self.keypoint_token_update and update_fn is not None:
                    tokens, token_augment = update_fn(tokens, token_augment, pose, idx)
        out = self.norm_final(tokens)
        outputs.append(pose_fn(out, last))
        return out, outputs


NUM_KEYPOINTS = 70  # mhr70
PELVIS_IDX = (9, 10)  # left hip, right hip


def update_keypoint_tokens(
    tokens: torch.Tensor,
    augment: torch.Tensor,
    context: torch.Tensor,
    pose: dict,
    kps_start: int,
    kps3d_start: int | None,
    posemb_2d: nn.Module,
    feat_linear: nn.Module,
    posemb_3d: nn.Module,
    full_width_cells: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KEYPOINT_TOKEN_UPDATE v2, run between decoder layers with that layer's pose output.

    * 2D: keypoints ``pred_keypoints_2d_cropped`` (B, 70, 2) in [-0.5, 0.5]; the 70 2D keypoint
      augments become ``posemb_2d(kp)`` and ``feat_linear(bilinear sample of context at kp)`` is
      ADDED to the 2D keypoint tokens; both are zeroed for keypoints outside the crop or with
      depth < 1e-5. ``context`` is the ray-conditioned map (B, C, h, w) (zero padding,
      align_corners False). ``full_width_cells``: when the map covers only the centre columns of
      the crop (ViT-H: 24 of 32 cells), x is stretched by full_width_cells / w.
    * 3D (``kps3d_start`` not None): the 70 3D keypoint augments become ``posemb_3d`` of the
      pelvis-centred ``pred_keypoints_3d`` (camera-frame metres, pelvis = mean of kps 9, 10).
    Returns new (tokens, augment); the inputs are not modified.
    """
    tokens = tokens.clone()
    augment = augment.clone()
    kp2d = pose["pred_keypoints_2d_cropped"][:, :NUM_KEYPOINTS]
    depth = pose["pred_keypoints_2d_depth"][:, :NUM_KEYPOINTS]
    kp01 = kp2d + 0.5
    invalid = (kp01[..., 0] < 0) | (kp01[..., 0] > 1) | (kp01[..., 1] < 0) | (kp01[..., 1] > 1) | (depth < 1e-5)
    keep = ~invalid[:, :, None]
    end = kps_start + NUM_KEYPOINTS
    augment[:, kps_start:end] = posemb_2d(kp2d) * keep

    points = kp2d * 2
    if full_width_cells is not None:
        # Official x / 12 * 16 for ViT-H; x / w * W is bit-identical (ratios differ by a power of 2).
        points[:, :, 0] = points[:, :, 0] / context.shape[-1] * full_width_cells
    feats = F.grid_sample(context, points[:, :, None, :], mode="bilinear", padding_mode="zeros", align_corners=False)
    feats = feats.squeeze(3).permute(0, 2, 1) * keep
    tokens[:, kps_start:end] += feat_linear(feats)

    if kps3d_start is not None:
        kp3d = pose["pred_keypoints_3d"]
        kp3d = kp3d - (kp3d[:, [PELVIS_IDX[0]]] + kp3d[:, [PELVIS_IDX[1]]]) / 2
        augment[:, kps3d_start : kps3d_start + NUM_KEYPOINTS] = posemb_3d(kp3d[:, :NUM_KEYPOINTS])
    return tokens, augment
