"""Keypoint / mask prompt encoder (``prompt_encoder.*``) and the random Fourier position encoding
(``prompt_encoder.pe_layer``, ``hand_pe_layer``) of SAM 3D Body.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .layers import LayerNorm2d

# Label values of a keypoint prompt (x, y, label): a body keypoint index 0..69, or one of these.
LABEL_NOT_A_POINT = -1
LABEL_INVALID = -2


class PositionEmbeddingRandom(nn.Module):
    """SAM's random-frequency position encoding: [sin, cos](2*pi * (2c - 1) @ G), G (2, F).

    ``G`` (``positional_encoding_gaussian_matrix``) is a persistent buffer that comes from the
    checkpoint; it is only randomly initialised here so a fresh module is usable.
    """

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """coords (..., 2) in [0, 1] (x, y) -> (..., 2F) features."""
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Dense encoding of an (h, w) grid of cell centres -> (2F, h, w)."""
        h, w = int(size[0]), int(size[1])
        device = self.positional_encoding_gaussian_matrix.device
        grid = torch.ones((h, w), device=device, dtype=torch.float32)
        # cumsum - 0.5 gives cell centres 0.5, 1.5, ... bit-identical to the official grid.
        y = (grid.cumsum(dim=0) - 0.5) / h
        x = (grid.cumsum(dim=1) - 0.5) / w
        return self.encode(torch.stack([x, y], dim=-1)).permute(2, 0, 1)


def _mask_downscaling_v2(embed_dim: int) -> nn.Sequential:
    # 4 stride-2 convs (512 -> 32) with LayerNorm2d + GELU, then a 1x1 projection. Index layout
    # (0, 1, 3, 4, 6, 7, 9, 10, 12) matters: it is the checkpoint key layout.
    chans = [1, 4, 16, 64, 256]
    blocks: list[nn.Module] = []
    for c_in, c_out in zip(chans[:-1], chans[1:]):
        blocks += [nn.Conv2d(c_in, c_out, kernel_size=2, stride=2), LayerNorm2d(c_out), nn.GELU()]
    blocks.append(nn.Conv2d(chans[-1], embed_dim, kernel_size=1))
    return nn.Sequential(*blocks)


def _mask_downscaling_v1(embed_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, kernel_size=4, stride=4),
        LayerNorm2d(4),
        nn.GELU(),
        nn.Conv2d(4, 16, kernel_size=4, stride=4),
        LayerNorm2d(16),
        nn.GELU(),
        nn.Conv2d(16, embed_dim, kernel_size=1),
    )


class PromptEncoder(nn.Module):
    """Embeds keypoint prompts (and masks) into backbone-width vectors.

    Args:
        embed_dim: backbone width C (the position encoding has C/2 frequencies).
        num_body_joints: number of promptable keypoints (70 for mhr70).
        mask_embed_type: None, "v1" or "v2" (released config: "v2").
    """

    def __init__(self, embed_dim: int, num_body_joints: int, mask_embed_type: str | None = None) -> None:
        super().__init__()
        if embed_dim % 2:
            raise ValueError(f"PromptEncoder embed_dim must be even, got {embed_dim}")
        self.embed_dim = embed_dim
        self.num_body_joints = num_body_joints
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(num_body_joints))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.invalid_point_embed = nn.Embedding(1, embed_dim)
        self.mask_embed_type = mask_embed_type
        if mask_embed_type == "v2":
            self.mask_downscaling = _mask_downscaling_v2(embed_dim)
        elif mask_embed_type == "v1":
            self.mask_downscaling = _mask_downscaling_v1(embed_dim)
        elif mask_embed_type is not None:
            raise ValueError(f"unknown MASK_EMBED_TYPE {mask_embed_type!r} (expected None, 'v1' or 'v2')")
        if mask_embed_type is not None:
            self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self, size: tuple[int, int]) -> torch.Tensor:
        """Dense position encoding of an (h, w) feature grid -> (1, C, h, w)."""
        return self.pe_layer(size).unsqueeze(0)

    def forward(self, keypoints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """keypoints (B, K, 3) = (x, y, label), x, y in [0, 1] of the crop.

        Returns (embeddings (B, K, C), valid mask (B, K) = label > -2). Label -2: invalid
        (PE replaced by ``invalid_point_embed``), -1: not a point (``not_a_point_embed``),
        0..num_body_joints-1: PE + ``point_embeddings[label]``.
        """
        if keypoints.dim() != 3 or keypoints.shape[-1] != 3:
            raise ValueError(f"keypoint prompts must be (B, K, 3), got shape {tuple(keypoints.shape)}")
        coords = keypoints[:, :, :2]
        labels = keypoints[:, :, -1]
        if coords.numel() and (coords.min() < 0 or coords.max() > 1):
            raise ValueError("keypoint prompt coordinates must lie in [0, 1] of the crop")
        emb = self.pe_layer.encode(coords.to(torch.float))
        invalid = labels == LABEL_INVALID
        not_a_point = labels == LABEL_NOT_A_POINT
        emb[invalid] = 0.0
        emb[invalid] += self.invalid_point_embed.weight
        emb[not_a_point] = 0.0
        emb[not_a_point] += self.not_a_point_embed.weight
        for i in range(self.num_body_joints):
            emb[labels == i] += self.point_embeddings[i].weight
        return emb, labels > LABEL_INVALID

    def embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """masks (B, 1, H, W) crop-aligned -> (B, C, H/16, W/16) (v2) mask embeddings."""
        if self.mask_embed_type is None:
            raise RuntimeError("this PromptEncoder was built without a mask embedding (MASK_EMBED_TYPE)")
        return self.mask_downscaling(masks)

    def no_mask_embeddings(self, batch_size: int, size: tuple[int, int]) -> torch.Tensor:
        """The learned "no mask" embedding broadcast to (B, C, h, w)."""
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch_size, -1, size[0], size[1])
