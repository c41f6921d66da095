"""Camera-ray conditioning of the image features (``ray_cond_emb``, ``ray_cond_emb_hand``).

``get_ray_condition`` builds the per-pixel ray map of each crop (normalised camera rays of the
full-image pixel each crop pixel came from); ``CameraEncoder`` downsamples it to the feature grid,
Fourier-encodes it and fuses it with the image features by a 1x1 conv + LayerNorm2d. The fused
map REPLACES the image features in the decoder (no residual).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import LayerNorm2d

NUM_BANDS = 16
MAX_RESOLUTION = 64
RAY_FEATURE_CHANNELS = 3 + 2 * 3 * NUM_BANDS  # (x, y, 1) + sin/cos of 16 bands each = 99


def get_ray_condition(
    affine_trans: torch.Tensor,
    cam_int: torch.Tensor,
    height: int,
    width: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Ray map of every crop pixel.

    Args:
        affine_trans: (B, N, 2, 3) full-image -> crop affine of each person crop (float).
        cam_int: (B, 3, 3) intrinsics of the full image.
        height, width: crop size in pixels (512, 512).
        dtype: output dtype (the official code casts to the image dtype).

    Returns:
        (B, N, 2, height, width): channel 0 = (u - cx) / fx, channel 1 = (v - cy) / fy where
        (u, v) is the full-image pixel of crop pixel (col, row). The crop pixel grid is the
        integer index grid (no +0.5), as in the official code. Device follows ``affine_trans``.
    """
    if affine_trans.dim() != 4 or affine_trans.shape[-2:] != (2, 3):
        raise ValueError(f"affine_trans must be (B, N, 2, 3), got {tuple(affine_trans.shape)}")
    if cam_int.dim() != 3 or cam_int.shape[-2:] != (3, 3) or cam_int.shape[0] != affine_trans.shape[0]:
        raise ValueError(f"cam_int must be (B, 3, 3) matching affine_trans, got {tuple(cam_int.shape)}")
    device = affine_trans.device
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    # Integer grid (x = column, y = row); kept int64 so the division below promotes exactly as
    # the official code does.
    grid = torch.stack([cols[None, :].expand(height, width), rows[:, None].expand(height, width)], dim=0)
    scale = affine_trans[:, :, [0, 1], [0, 1]][..., None, None]  # (B, N, 2, 1, 1)
    offset = affine_trans[:, :, [0, 1], [2, 2]][..., None, None]
    # Crop -> full image, in the official operation order: x / a - b / a.
    rays = grid[None, None] / scale
    rays = rays - offset / scale
    principal = cam_int[:, None, [0, 1], [2, 2]][..., None, None]
    focal = cam_int[:, None, [0, 1], [0, 1]][..., None, None]
    rays = (rays - principal) / focal
    return rays.to(dtype)


def fourier_ray_features(pos: torch.Tensor) -> torch.Tensor:
    """pos (B, P, 3) -> (B, P, 99): [pos, sin(pi*pos*f) (48), cos(pi*pos*f) (48)].

    Frequencies f = linspace(1, MAX_RESOLUTION/2, NUM_BANDS) per input dimension; the 48 angles
    are ordered dimension-major (x bands, y bands, 1 bands).
    """
    b, p, d = pos.shape
    freqs = torch.linspace(1.0, MAX_RESOLUTION / 2, NUM_BANDS, device=pos.device)
    angles = (pos[:, :, :, None] * freqs[None, None, None, :]).reshape(b, p, d * NUM_BANDS)
    angles = math.pi * angles
    return torch.cat([pos, torch.sin(angles), torch.cos(angles)], dim=-1)


class CameraEncoder(nn.Module):
    """Fuses image features (B, C, h, w) with the ray map (B, 2, H, W) -> (B, C, h, w)."""

    def __init__(self, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.conv = nn.Conv2d(embed_dim + RAY_FEATURE_CHANNELS, embed_dim, kernel_size=1, bias=False)
        self.norm = LayerNorm2d(embed_dim)

    def ray_encoder_input(self, rays: torch.Tensor) -> torch.Tensor:
        """rays (B, 2, H, W) -> (B, h*w, 3): antialiased bilinear 1/patch downsample + a ones
        channel, row-major over (h, w). This is the fixture's ``ray_ds``."""
        if rays.dim() != 4 or rays.shape[1] != 2:
            raise ValueError(f"rays must be (B, 2, H, W), got {tuple(rays.shape)}")
        scale = 1 / self.patch_size
        rays = F.interpolate(
            rays, scale_factor=(scale, scale), mode="bilinear", align_corners=False, antialias=True
        )
        rays = rays.permute(0, 2, 3, 1)
        rays = torch.cat([rays, torch.ones_like(rays[..., :1])], dim=-1)
        return rays.reshape(rays.shape[0], -1, 3)

    def forward(self, img_embeddings: torch.Tensor, rays: torch.Tensor) -> torch.Tensor:
        b, _, h, w = img_embeddings.shape
        with torch.no_grad():
            ray_in = self.ray_encoder_input(rays)
            if ray_in.shape[1] != h * w:
                raise ValueError(
                    f"ray map {tuple(rays.shape[-2:])} / patch {self.patch_size} does not match the "
                    f"feature grid {(h, w)}"
                )
            ray_feats = fourier_ray_features(ray_in).reshape(b, h, w, -1).permute(0, 3, 1, 2)
        z = torch.cat([img_embeddings, ray_feats], dim=1)
        return self.norm(self.conv(z))
