"""GenHMR masked pose transformer: model, iterative decoding, training objective, presets."""

from __future__ import annotations

from kinemesh.models.genhmr.decoding import (
    BackendStepFn,
    DecodeResult,
    DecodeStep,
    TorchStepFn,
    cosine_mask_ratio,
    masked_counts,
    masked_decode,
)
from kinemesh.models.genhmr.training import MaskedLoss, masked_token_loss, random_token_mask
from kinemesh.models.genhmr.transformer import (
    KeypointGraphEncoder,
    MaskedPoseStepGraph,
    MaskedPoseTransformer,
    MaskedPoseTransformerConfig,
    StepOutput,
    blazepose_edges,
)
from kinemesh.models.registry import register_model

__all__ = [
    "BackendStepFn",
    "DecodeResult",
    "DecodeStep",
    "KeypointGraphEncoder",
    "MaskedLoss",
    "MaskedPoseStepGraph",
    "MaskedPoseTransformer",
    "MaskedPoseTransformerConfig",
    "StepOutput",
    "TorchStepFn",
    "blazepose_edges",
    "cosine_mask_ratio",
    "masked_counts",
    "masked_decode",
    "masked_token_loss",
    "random_token_mask",
]


@register_model("genhmr_keypoints_small", MaskedPoseTransformerConfig)
def genhmr_keypoints_small(config: MaskedPoseTransformerConfig) -> MaskedPoseTransformer:
    """Keypoint-conditioned, no image; CPU-trainable; tokens match "pose_tokenizer_small" (N=32, K=512)."""
    return MaskedPoseTransformer(config)


@register_model("genhmr_image_small", MaskedPoseTransformerConfig, image_dim=192, image_tokens=192)
def genhmr_image_small(config: MaskedPoseTransformerConfig) -> MaskedPoseTransformer:
    """The small model with an image condition: cross-attention to "vit_small_256x192"'s 192 tokens."""
    return MaskedPoseTransformer(config)


# Transformer sizes follow HMR2.0/TokenHMR's transformer head (depth 6, width 1024, 8 heads), which
# GenHMR builds on; the GenHMR paper's own widths are not in our notes. The ViT-H backbone is not part
# of this module: image_tokens arrive as its (B, 192, 1280) output.
@register_model(
    "genhmr_paper",
    MaskedPoseTransformerConfig,
    num_tokens=160,
    codebook_size=2048,
    dim=1024,
    depth=6,
    heads=8,
    graph_dim=256,
    graph_layers=3,
    dropout=0.1,
    image_dim=1280,
    image_tokens=192,
)
def genhmr_paper(config: MaskedPoseTransformerConfig) -> MaskedPoseTransformer:
    """Paper size: 160 tokens from a 2048 codebook ("pose_tokenizer_paper"), ViT-H/16 image tokens."""
    return MaskedPoseTransformer(config)
