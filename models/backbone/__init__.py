"""Image backbones shared by the image-conditioned models (MQ-HMR, image-conditioned GenHMR)."""

from __future__ import annotations

from kinemesh.models.backbone.vit import SimpleFeaturePyramid, VisionTransformer

__all__ = ["SimpleFeaturePyramid", "VisionTransformer"]
