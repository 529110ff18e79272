"""MQ-HMR (BioPose): ViT backbone -> simple feature pyramid -> multi-query deformable transformer
decoder -> body pose, shape and camera, one query per thing it estimates.

Shape legend:
    B  batch (person crops)          H, W  crop size (config.image_height, config.image_width)
    C  backbone width (vit_dim)      D  decoder width (config.dim)
    L  pyramid levels                J  = 21 body joints below the root (SMPL order, as GenHMR's)
    Q  = J + 3 queries: the J body joints, then the root orientation, the shape and the camera
    S  shape coefficients

The queries are learned embeddings (content and position); each has a learned reference point
where its deformable attention starts looking. Six decoder layers (paper-size) of self-attention
among the queries, deformable cross-attention to the pyramid and an MLP. Heads read their own
query: every joint query gives its joint's rotation (6D) through one shared linear layer plus the
joint's rest rotation, the root query the root orientation, the shape query the shape, the camera
query a weak-perspective camera (s, tx, ty) in crop units. The outputs match GenHMR's body
parameters, so the body layer, the refinement and the kinematics downstream are shared.

`decode` stops at the decoder's output tokens and `heads` maps tokens to parameters: the 2D-informed
refinement optimises the joint tokens through the frozen pose head (`kinemesh.models.mqhmr.refine`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from kinemesh.models.backbone.vit import Attention, Mlp, SimpleFeaturePyramid, VisionTransformer
from kinemesh.models.mqhmr.deformable import MultiScaleDeformableAttention

BODY_JOINTS = 21  # SMPL-order joints 1..21 (below the root, hands at rest), as GenHMR's tokenizer decodes
IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # the rest rotation's first two columns


@dataclass
class MQHMRConfig:
    image_height: int = 256  # H: person crop height, pixels (the papers' 256 x 192)
    image_width: int = 192  # W: person crop width
    patch: int = 16  # ViT patch size (16 x 12 patches at 256 x 192)
    vit_dim: int = 192  # C: backbone width (ViT-H: 1280)
    vit_depth: int = 4  # backbone blocks (ViT-H: 32)
    vit_heads: int = 3  # backbone attention heads (ViT-H: 16)
    mlp_ratio: float = 4.0  # MLP hidden width over the block's width (backbone and decoder)
    pyramid_scales: tuple[float, ...] = (2.0, 1.0, 0.5)  # feature levels relative to the patch grid (ViTDet: 4, 2, 1, 0.5)
    dim: int = 128  # D: decoder width (Deformable DETR: 256)
    depth: int = 2  # decoder layers (Deformable DETR: 6)
    heads: int = 4  # decoder attention heads (Deformable DETR: 8)
    points: int = 4  # sampling points per head and level (Deformable DETR: 4)
    shape_dim: int = 32  # S: shape coefficients (32 = the project's Anny shape file; 10 for SMPL)


class MQHMROutput(NamedTuple):
    body6d: Tensor  # (B, 21, 6) body pose below the root, 6D per joint
    orient6d: Tensor  # (B, 6) root orientation in the camera frame
    shape: Tensor  # (B, S)
    camera: Tensor  # (B, 3) weak perspective (s, tx, ty) in crop units
    tokens: Tensor  # (B, Q, D) the decoder's output queries (what the refinement optimises)


class PoseHead(nn.Module):
    """Joint or root queries (B, n, D) -> rotations (B, n, 6): one linear layer shared by every joint,
    added to the rest rotation. Its weights start small but not zero, so that even an untrained model's
    pose responds to its tokens (the refinement's gradient goes through here)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 6)
        nn.init.normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)
        self.register_buffer("rest6d", torch.tensor(IDENTITY_6D), persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.linear(tokens) + self.rest6d


MQHMR_OUTPUTS = MQHMROutput._fields  # the exported graph's output names


class DecoderLayer(nn.Module):
    """queries (B, Q, D) with their positions (Q, D) and reference points (Q, 2) -> (B, Q, D)."""

    def __init__(self, cfg: MQHMRConfig) -> None:
        super().__init__()
        D = cfg.dim
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(D), nn.LayerNorm(D), nn.LayerNorm(D)
        self.self_attn = Attention(D, cfg.heads)
        self.cross = MultiScaleDeformableAttention(D, cfg.heads, len(cfg.pyramid_scales), cfg.points)
        self.mlp = Mlp(D, cfg.mlp_ratio)

    def forward(self, x: Tensor, pos: Tensor, reference: Tensor, maps: list[Tensor]) -> Tensor:
        y = self.norm1(x)
        x = x + self.self_attn(y + pos, y + pos, y)
        x = x + self.cross(self.norm2(x) + pos, reference, maps)
        return x + self.mlp(self.norm3(x))


class MQHMR(nn.Module):
    def __init__(self, cfg: MQHMRConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D, Q = cfg.dim, BODY_JOINTS + 3
        self.backbone = VisionTransformer((cfg.image_height, cfg.image_width), cfg.patch, cfg.vit_dim,
                                          cfg.vit_depth, cfg.vit_heads, cfg.mlp_ratio)
        self.pyramid = SimpleFeaturePyramid(cfg.vit_dim, D, cfg.pyramid_scales)
        self.level_embed = nn.Parameter(torch.zeros(len(cfg.pyramid_scales), D))
        self.query = nn.Parameter(torch.randn(Q, D) * 0.02)  # content
        self.query_pos = nn.Parameter(torch.randn(Q, D) * 0.02)  # position
        self.reference = nn.Linear(D, 2)  # query position -> reference point (logits of x, y in [0, 1])
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(D)
        self.pose_head = PoseHead(D)  # shared by the joint queries and the root query
        self.shape_head = nn.Linear(D, cfg.shape_dim)
        self.camera_head = nn.Linear(D, 3)
        for head in (self.shape_head, self.camera_head):  # start at the mean shape, a body filling the crop
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        with torch.no_grad():
            self.camera_head.bias[0] = 1.0

    @property
    def num_queries(self) -> int:
        return BODY_JOINTS + 3

    def decode(self, image: Tensor) -> Tensor:
        """Normalised crops (B, 3, H, W) -> the decoder's output queries (B, Q, D)."""
        _, fmap = self.backbone(image)  # (B, C, h, w)
        maps = [m + e[None, :, None, None] for m, e in zip(self.pyramid(fmap), self.level_embed, strict=True)]
        B = image.shape[0]
        x = self.query[None].expand(B, -1, -1)  # (B, Q, D)
        reference = self.reference(self.query_pos).sigmoid()[None].expand(B, -1, -1)  # (B, Q, 2)
        for layer in self.layers:
            x = layer(x, self.query_pos, reference, maps)
        return self.norm(x)

    def heads(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Queries (B, Q, D) -> body6d (B, 21, 6), orient6d (B, 6), shape (B, S), camera (B, 3)."""
        J = BODY_JOINTS
        rot = self.pose_head(tokens[:, :J + 1])  # (B, J + 1, 6)
        return rot[:, :J], rot[:, J], self.shape_head(tokens[:, J + 1]), self.camera_head(tokens[:, J + 2])

    def forward(self, image: Tensor) -> MQHMROutput:
        tokens = self.decode(image)
        return MQHMROutput(*self.heads(tokens), tokens)
