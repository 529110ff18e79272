"""Image backbones shared by the image-conditioned models (MQ-HMR, image-conditioned GenHMR); presets."""

from __future__ import annotations

from kinemesh.models.backbone.vit import SimpleFeaturePyramid, VisionTransformer, ViTConfig, ViTTokens
from kinemesh.models.registry import register_model

__all__ = ["SimpleFeaturePyramid", "ViTConfig", "ViTTokens", "VisionTransformer"]


@register_model("vit_small_256x192", ViTConfig)
def vit_small_256x192(config: ViTConfig) -> ViTTokens:
    """CPU size (width 192, depth 4): the image condition of "genhmr_image_small"."""
    return ViTTokens(config)


# ViT-H/16 at 256 x 192, as HMR2.0's backbone (and so GenHMR's and MQ-HMR's): 16 x 12 tokens of width 1280.
@register_model("vit_h16_256x192", ViTConfig, dim=1280, depth=32, heads=16)
def vit_h16_256x192(config: ViTConfig) -> ViTTokens:
    """Paper size (~0.63 G parameters): the image condition of "genhmr_paper"."""
    return ViTTokens(config)
