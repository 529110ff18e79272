"""MQ-HMR (BioPose): multi-query deformable transformer over a ViT's feature pyramid; presets."""

from __future__ import annotations

from kinemesh.models.mqhmr.deformable import MultiScaleDeformableAttention
from kinemesh.models.mqhmr.model import BODY_JOINTS, MQHMR, MQHMRConfig, MQHMROutput
from kinemesh.models.mqhmr.refine import as_body_params, refine_queries, synthetic_start
from kinemesh.models.registry import register_model

__all__ = ["BODY_JOINTS", "MQHMR", "MQHMRConfig", "MQHMROutput", "MultiScaleDeformableAttention", "as_body_params",
           "refine_queries", "synthetic_start"]


@register_model("mqhmr_small", MQHMRConfig)
def mqhmr_small(config: MQHMRConfig) -> MQHMR:
    """CPU size: ViT of width 192 and depth 4, three pyramid levels, two decoder layers (~3 M parameters)."""
    return MQHMR(config)


# BioPose's MQ-HMR: ViT-H/16 at 256 x 192 (HMR2.0's backbone), ViTDet's four-level simple feature pyramid,
# and Deformable DETR's decoder sizes (width 256, 6 layers, 8 heads, 4 points), which the paper builds on.
@register_model("mqhmr_paper", MQHMRConfig, vit_dim=1280, vit_depth=32, vit_heads=16,
                pyramid_scales=(4.0, 2.0, 1.0, 0.5), dim=256, depth=6, heads=8, points=4)
def mqhmr_paper(config: MQHMRConfig) -> MQHMR:
    """Paper size (ViT-H/16 backbone, ~0.6 G parameters)."""
    return MQHMR(config)
