"""Camera head of SAM 3D Body (`head_camera`, `head_camera_hand`): reference/sam3d-body.md §3.7, §5.8.

An MLP predicts (s, tx, ty) as a residual on the learned `init_camera`; `perspective_projection`
turns that weak-perspective crop camera into a full-image translation (CLIFF style) and projects
3D points with the real intrinsics.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from server.models.layers import FFN


def perspective_projection(points: torch.Tensor, cam_int: torch.Tensor) -> torch.Tensor:
    """Project camera-frame points (B, N, 3) with intrinsics (B, 3, 3) -> pixels (B, N, 2)."""
    y = points / points[:, :, -1].unsqueeze(-1)
    y = torch.einsum("bij,bkj->bki", cam_int, y)
    return y[:, :, :2]


class PerspectiveHead(nn.Module):
    """Predict (s, tx, ty) and reproject with full perspective (official `PerspectiveHead`)."""

    def __init__(
        self,
        input_dim: int,
        img_size: tuple[int, int] | int = (512, 512),
        mlp_depth: int = 1,
        drop_ratio: float = 0.0,
        mlp_channel_div_factor: int = 8,
        default_scale_factor: float = 1.0,
    ) -> None:
        super().__init__()
        if input_dim <= 0 or mlp_depth < 1 or mlp_channel_div_factor < 1:
            raise ValueError(
                f"PerspectiveHead: bad sizes input_dim={input_dim}, mlp_depth={mlp_depth}, "
                f"mlp_channel_div_factor={mlp_channel_div_factor}"
            )
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.ncam = 3  # (s, tx, ty)
        self.default_scale_factor = float(default_scale_factor)
        # Dropout is 0 at inference; `drop_ratio` is kept for the official signature only.
        self.proj = FFN(
            embed_dims=input_dim,
            feedforward_channels=input_dim // mlp_channel_div_factor,
            output_dims=self.ncam,
            num_fcs=mlp_depth,
            add_identity=False,
        )

    def forward(self, x: torch.Tensor, init_estimate: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pose token (B, C) -> pred_cam (B, 3) = proj(x) + init_estimate."""
        if x.ndim != 2:
            raise ValueError(f"PerspectiveHead expects a (B, C) pose token, got shape {tuple(x.shape)}")
        pred_cam = self.proj(x)
        if init_estimate is not None:
            pred_cam = pred_cam + init_estimate
        return pred_cam

    def perspective_projection(
        self,
        points_3d: torch.Tensor,
        pred_cam: torch.Tensor,
        bbox_center: torch.Tensor,
        bbox_size: torch.Tensor,
        img_size: torch.Tensor,
        cam_int: torch.Tensor,
        is_atlas: bool = True,
        use_intrin_center: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Place and project points (B, N, 3) (metres, camera axes, model origin).

        bbox_center (B, 2) and img_size (B, 2) = (W, H) in full-image pixels, bbox_size (B,)
        the square crop side in pixels, cam_int (B, 3, 3). Returns `pred_keypoints_2d` (B,N,2),
        `pred_cam_t` (B,3), `focal_length` (B,) = K[0,0], `pred_keypoints_2d_depth` (B,N).
        """
        if points_3d.ndim != 3 or points_3d.shape[-1] != 3:
            raise ValueError(f"perspective_projection: points must be (B, N, 3), got {tuple(points_3d.shape)}")
        if cam_int.shape[-2:] != (3, 3) or pred_cam.shape[-1] != 3:
            raise ValueError(
                f"perspective_projection: need cam_int (B,3,3) and pred_cam (B,3), got "
                f"{tuple(cam_int.shape)} and {tuple(pred_cam.shape)}"
            )
        batch = points_3d.shape[0]
        pred_cam = pred_cam.clone()
        if is_atlas:
            pred_cam[..., [0, 2]] *= -1  # camera system difference (MHR y up -> OpenCV y down)
        s, tx, ty = pred_cam[:, 0], pred_cam[:, 1], pred_cam[:, 2]
        bs = bbox_size * s * self.default_scale_factor + 1e-8
        focal_length = cam_int[:, 0, 0]
        tz = 2 * focal_length / bs
        if use_intrin_center:
            cx = 2 * (bbox_center[:, 0] - cam_int[:, 0, 2]) / bs
            cy = 2 * (bbox_center[:, 1] - cam_int[:, 1, 2]) / bs
        else:
            cx = 2 * (bbox_center[:, 0] - img_size[:, 0] / 2) / bs
            cy = 2 * (bbox_center[:, 1] - img_size[:, 1] / 2) / bs
        pred_cam_t = torch.stack([tx + cx, ty + cy, tz], dim=-1)
        points_cam = points_3d + pred_cam_t.unsqueeze(1)
        j2d = perspective_projection(points_cam, cam_int)
        return {
            "pred_keypoints_2d": j2d.reshape(batch, -1, 2),
            "pred_cam_t": pred_cam_t,
            "focal_length": focal_length,
            "pred_keypoints_2d_depth": points_cam.reshape(batch, -1, 3)[:, :, 2],
        }
