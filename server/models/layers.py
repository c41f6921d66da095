"""Small building blocks shared by the SAM 3D Body modules.

The module and attribute names here are chosen so that ``state_dict()`` keys equal those of the
official checkpoints (mmcv-style ``FFN`` -> ``layers.0.0`` / ``layers.1``, DETR ``MLP`` ->
``layers.<i>``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNorm32(nn.LayerNorm):
    """LayerNorm evaluated in float32 and cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class LayerNorm2d(nn.Module):
    """Channel LayerNorm for (B, C, H, W) maps, computed in the input dtype (eps 1e-6)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"LayerNorm2d expects (B, C, H, W), got shape {tuple(x.shape)}")
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        # Same operation order as the official block (divide by sqrt, then affine).
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class FFN(nn.Module):
    """mmcv-style feed-forward network.

    ``num_fcs - 1`` hidden blocks ``Sequential(Linear, act, Dropout)`` followed by
    ``Linear, Dropout``; keys ``layers.0.0.*`` ... ``layers.<num_fcs-1>.*``. With
    ``add_identity`` the input (or ``identity``) is added to the output.
    """

    def __init__(
        self,
        embed_dims: int,
        feedforward_channels: int,
        output_dims: int | None = None,
        num_fcs: int = 2,
        act_layer: type[nn.Module] = nn.ReLU,
        add_identity: bool = True,
    ) -> None:
        super().__init__()
        if num_fcs < 1:
            raise ValueError(f"FFN needs at least one linear layer, got num_fcs={num_fcs}")
        self.embed_dims = embed_dims
        self.output_dims = output_dims or embed_dims
        self.add_identity = add_identity
        blocks: list[nn.Module] = []
        in_channels = embed_dims
        for _ in range(num_fcs - 1):
            blocks.append(
                nn.Sequential(nn.Linear(in_channels, feedforward_channels), act_layer(), nn.Dropout(0.0))
            )
            in_channels = feedforward_channels
        blocks.append(nn.Linear(in_channels, self.output_dims))
        blocks.append(nn.Dropout(0.0))
        self.layers = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, identity: torch.Tensor | None = None) -> torch.Tensor:
        out = self.layers(x)
        if not self.add_identity:
            return out
        return (x if identity is None else identity) + out


class MLP(nn.Module):
    """DETR-style MLP: ``num_layers`` Linear layers with ReLU between them (keys ``layers.<i>``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.num_layers = num_layers
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = self.num_layers - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return x
