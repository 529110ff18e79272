"""Pose tokenizers (GenHMR-style VQ-VAE) and their registered presets."""

from __future__ import annotations

from kinemesh.models.registry import register_model
from kinemesh.models.tokenizer.vqvae import (
    PoseTokenizer,
    PoseTokenizerConfig,
    Quantized,
    TokenizerEmbeddingDecoderGraph,
    TokenizerEncoderGraph,
    TokenizerIndexDecoderGraph,
    TokenizerOutput,
)

__all__ = [
    "PoseTokenizer",
    "PoseTokenizerConfig",
    "Quantized",
    "TokenizerEmbeddingDecoderGraph",
    "TokenizerEncoderGraph",
    "TokenizerIndexDecoderGraph",
    "TokenizerOutput",
]


@register_model("pose_tokenizer_small", PoseTokenizerConfig)
def pose_tokenizer_small(config: PoseTokenizerConfig) -> PoseTokenizer:
    """Default-bundle size: 32 tokens from a 512 x 64 codebook (the config's defaults)."""
    return PoseTokenizer(config)


@register_model(
    "pose_tokenizer_paper",
    PoseTokenizerConfig,
    num_tokens=160,
    codebook_size=2048,
    code_dim=256,
    token_width=32,
    hidden_dim=1024,
    num_blocks=3,
)
def pose_tokenizer_paper(config: PoseTokenizerConfig) -> PoseTokenizer:
    """GenHMR/TokenHMR size: 160 tokens from a 2048 x 256 codebook."""
    return PoseTokenizer(config)
