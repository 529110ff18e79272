"""Plain ViT backbone for person crops and a ViTDet-style simple feature pyramid from its last block.

Shape legend:
    B  batch (person crops)
    H, W  crop height and width in pixels (256 x 192 for the papers' ViT-H/16)
    h, w  patch grid (H / p, W / p; 16 x 12 at 256 x 192 with p = 16)
    C  backbone width (1280 for ViT-H)
    D  pyramid width (the decoder's)

The ViT is the standard one (patch embedding by a strided convolution, learned absolute position
embeddings, pre-norm blocks of multi-head self-attention and a GELU MLP). There is no class token:
HMR-style heads read the patch tokens. The pyramid follows ViTDet: every scale comes from the last
feature map alone (transposed convolutions up, max-pooling down), then a 1x1 and a 3x3 convolution
to width D. Attention goes through `scaled_dot_product_attention`, which both ONNX exporters accept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head attention with separate query, key and value inputs: (B, Q, E), (B, K, E), (B, K, E) -> (B, Q, E)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} does not divide into {heads} heads")
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        B, Q, E = query.shape

        def split(x: Tensor) -> Tensor:  # (B, n, E) -> (B, heads, n, E / heads)
            return x.reshape(B, x.shape[1], self.heads, E // self.heads).transpose(1, 2)

        o = F.scaled_dot_product_attention(split(self.q(query)), split(self.k(key)), split(self.v(value)))
        return self.out(o.transpose(1, 2).reshape(B, Q, E))  # (B, Q, E)


class Mlp(nn.Sequential):
    """(..., E) -> (..., E) through a GELU hidden layer of width ratio * E."""

    def __init__(self, dim: int, ratio: float) -> None:
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class Block(nn.Module):
    """Pre-norm transformer block: (B, n, C) -> (B, n, C)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y)
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Crops (B, 3, H, W), normalised -> patch tokens (B, h*w, C) and the same as a map (B, C, h, w)."""

    def __init__(self, image_size: tuple[int, int], patch: int, dim: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        H, W = image_size
        if H % patch or W % patch:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch}")
        self.grid = (H // patch, W // patch)
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid[0] * self.grid[1], dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        x = self.patch_embed(image)  # (B, C, h, w)
        B, C, h, w = x.shape
        x = x.flatten(2).transpose(1, 2) + self.pos_embed  # (B, h*w, C)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x, x.transpose(1, 2).reshape(B, C, h, w)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a map (B, C, h, w)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SimpleFeaturePyramid(nn.Module):
    """The last feature map (B, C, h, w) -> one map per scale s in `scales`, (B, D, h*s, w*s).

    Supported scales: 4, 2, 1 and 0.5 (ViTDet's 1/4, 1/8, 1/16 and 1/32 of the image at patch 16)."""

    def __init__(self, in_dim: int, out_dim: int, scales: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)) -> None:
        super().__init__()
        levels = []
        for s in scales:
            if s == 4.0:
                up, width = [nn.ConvTranspose2d(in_dim, in_dim // 2, 2, 2), LayerNorm2d(in_dim // 2), nn.GELU(),
                             nn.ConvTranspose2d(in_dim // 2, in_dim // 4, 2, 2)], in_dim // 4
            elif s == 2.0:
                up, width = [nn.ConvTranspose2d(in_dim, in_dim // 2, 2, 2)], in_dim // 2
            elif s == 1.0:
                up, width = [], in_dim
            elif s == 0.5:
                up, width = [nn.MaxPool2d(2)], in_dim
            else:
                raise ValueError(f"unsupported pyramid scale {s}; use 4, 2, 1 or 0.5")
            levels.append(nn.Sequential(*up, nn.Conv2d(width, out_dim, 1, bias=False), LayerNorm2d(out_dim),
                                        nn.Conv2d(out_dim, out_dim, 3, padding=1, bias=False), LayerNorm2d(out_dim)))
        self.levels = nn.ModuleList(levels)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [level(x) for level in self.levels]  # each (B, D, h*s, w*s)


@dataclass
class ViTConfig:
    image_height: int = 256  # H: person crop height, pixels
    image_width: int = 192  # W: person crop width
    patch: int = 16  # patch size (16 x 12 tokens at 256 x 192)
    dim: int = 192  # C: width (ViT-H: 1280)
    depth: int = 4  # blocks (ViT-H: 32)
    heads: int = 3  # attention heads (ViT-H: 16)
    mlp_ratio: float = 4.0  # MLP hidden width over the width


class ViTTokens(VisionTransformer):
    """The backbone as an export graph: crops (B, 3, H, W) -> patch tokens (B, h*w, C), what the
    image-conditioned GenHMR cross-attends to (its `image_tokens`)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__((cfg.image_height, cfg.image_width), cfg.patch, cfg.dim, cfg.depth, cfg.heads, cfg.mlp_ratio)
        self.cfg = cfg

    def forward(self, image: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(image)[0]
