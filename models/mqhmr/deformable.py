"""Multi-scale deformable attention (Deformable DETR), written with `grid_sample` so that it exports
to ONNX (GridSample, opset 16+) and runs on any backend without a custom kernel.

Shape legend:
    B  batch      Q  queries      E  width      n  heads      e = E / n
    L  feature levels (pyramid scales)          P  sampling points per head and level
    H_l, W_l  the size of level l's map

Each query looks at P points per head on every level, placed around its reference point (x, y) in
[0, 1] of the image by offsets it predicts, and mixes the bilinearly sampled values with weights it
predicts (a softmax over the L * P points of a head). Offsets are in units of the level's cells.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MultiScaleDeformableAttention(nn.Module):
    """query (B, Q, E), reference (B, Q, 2) as (x, y) in [0, 1], maps [L x (B, E, H_l, W_l)] -> (B, Q, E)."""

    def __init__(self, dim: int, heads: int, levels: int, points: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} does not divide into {heads} heads")
        self.heads, self.levels, self.points = heads, levels, points
        self.offsets = nn.Linear(dim, heads * levels * points * 2)
        self.weights = nn.Linear(dim, heads * levels * points)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        # Start as Deformable DETR does: no learned offset, each head's points on a ray of its own
        # direction at 1, 2, ... cells, uniform weights.
        nn.init.zeros_(self.offsets.weight)
        angle = torch.arange(heads, dtype=torch.float32) * (2 * math.pi / heads)
        ray = torch.stack([angle.cos(), angle.sin()], -1)  # (n, 2)
        ray = ray / ray.abs().max(-1, keepdim=True).values
        grid = ray[:, None, None, :] * torch.arange(1, points + 1, dtype=torch.float32)[None, None, :, None]
        with torch.no_grad():
            self.offsets.bias.copy_(grid.expand(heads, levels, points, 2).reshape(-1))
        nn.init.zeros_(self.weights.weight)
        nn.init.zeros_(self.weights.bias)

    def forward(self, query: Tensor, reference: Tensor, maps: list[Tensor]) -> Tensor:
        B, Q, E = query.shape
        n, L, P = self.heads, self.levels, self.points
        if len(maps) != L:
            raise ValueError(f"expected {L} feature levels, got {len(maps)}")
        offsets = self.offsets(query).reshape(B, Q, n, L, P, 2)
        weights = self.weights(query).reshape(B, Q, n, L * P).softmax(-1).reshape(B, Q, n, L, P)
        out = query.new_zeros(B * n, E // n, Q)
        for lvl, fmap in enumerate(maps):
            Hl, Wl = fmap.shape[-2:]
            value = self.value(fmap.flatten(2).transpose(1, 2))  # (B, H_l*W_l, E)
            value = value.transpose(1, 2).reshape(B * n, E // n, Hl, Wl)  # (B*n, e, H_l, W_l)
            cell = torch.tensor([1.0 / Wl, 1.0 / Hl], dtype=query.dtype, device=query.device)
            where = reference[:, :, None, None, :] + offsets[:, :, :, lvl] * cell  # (B, Q, n, P, 2) in [0, 1]
            grid = (2 * where - 1).transpose(1, 2).reshape(B * n, Q, P, 2)  # grid_sample's [-1, 1]
            sampled = F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            w = weights[:, :, :, lvl].transpose(1, 2).reshape(B * n, 1, Q, P)
            out = out + (sampled * w).sum(-1)  # (B*n, e, Q)
        return self.out(out.reshape(B, E, Q).transpose(1, 2))  # (B, Q, E)
