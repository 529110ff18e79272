"""Masked-token training objective for the masked pose transformer (pure functions, no I/O).

Shape legend:
    B  batch (people)
    N  pose tokens per person
    K  codebook size; id K is [MASK]
    L  keypoints (33), T image tokens, C their width, S shape coefficients

Per sample: progress u ~ U(0, 1), mask ratio r = cosine_mask_ratio(u), ceil(r * N) positions
(at least one) masked at random, cross-entropy on the masked positions only (MaskGIT). Shape and
camera regress to their targets when given.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from kinemesh.models.genhmr.decoding import cosine_mask_ratio
from kinemesh.models.genhmr.transformer import MaskedPoseTransformer
from kinemesh.models.rotations import rot6d_to_matrix


class MaskedLoss(NamedTuple):
    total: Tensor  # () token_ce + shape_weight * shape + camera_weight * camera + orient_weight * orient
    token_ce: Tensor  # () mean cross-entropy over masked positions
    shape: Tensor  # () mean squared error of shape (0 without a target)
    camera: Tensor  # () mean squared error of camera (0 without a target)
    orient: Tensor  # () mean squared error of the root orientation's rotation matrix (0 without a target)
    accuracy: Tensor  # () argmax accuracy on masked positions (no gradient)
    mask: Tensor  # (B, N) bool: the positions that were masked
    logits: Tensor  # (B, N, K) the step's logits at every position (for auxiliary objectives)


def random_token_mask(
    batch: int, num_tokens: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> Tensor:
    """(B, N) bool mask with a cosine-schedule ratio per sample, at least one True per row."""
    u = torch.rand(batch, generator=generator)  # (B,)
    count = torch.ceil(cosine_mask_ratio(u) * num_tokens).clamp(1, num_tokens)  # (B,)
    order = torch.rand(batch, num_tokens, generator=generator).argsort(dim=1)  # (B, N) random permutation
    ranks = order.argsort(dim=1)  # (B, N) rank of each position in that permutation
    return (ranks < count.unsqueeze(1)).to(device)  # (B, N)


def drop_keypoints(keypoints: Tensor, prob: float, generator: torch.Generator | None = None) -> Tensor:
    """Zero every confidence of each sample with probability `prob` (teaches the no-keypoint case)."""
    if prob <= 0:
        return keypoints
    keep = (torch.rand(keypoints.shape[0], generator=generator) >= prob).to(keypoints)  # (B,)
    conf = keypoints[..., 2:3] * keep[:, None, None]  # (B, L, 1)
    return torch.cat([keypoints[..., :2], conf], dim=-1)  # (B, L, 3)


def masked_token_loss(
    model: MaskedPoseTransformer,
    token_ids: Tensor,
    keypoints: Tensor,
    image_tokens: Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    shape_target: Tensor | None = None,
    camera_target: Tensor | None = None,
    orient_target: Tensor | None = None,
    shape_weight: float = 1.0,
    camera_weight: float = 1.0,
    orient_weight: float = 1.0,
    keypoint_drop_prob: float = 0.0,
    label_smoothing: float = 0.0,
) -> MaskedLoss:
    """token_ids (B, N) ground-truth codes in [0, K); keypoints (B, L, 3); image_tokens (B, T, C) or None.

    shape_target (B, S), camera_target (B, 3) and orient_target (B, 6) are optional regression targets;
    the orientation compares rotation matrices (the 6D output is orthonormalised first).
    generator drives the mask (and keypoint dropout) so a run is reproducible.
    """
    B, N = token_ids.shape
    mask = random_token_mask(B, N, generator, token_ids.device)  # (B, N)
    inputs = token_ids.masked_fill(mask, model.mask_id)  # (B, N)
    keypoints = drop_keypoints(keypoints, keypoint_drop_prob, generator)
    out = model.step(inputs, keypoints, image_tokens)
    logits = out.logits[mask]  # (M, K) masked positions only
    targets = token_ids[mask]  # (M,)
    token_ce = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    zero = token_ce.new_zeros(())
    shape_loss = F.mse_loss(out.shape, shape_target) if shape_target is not None else zero
    camera_loss = F.mse_loss(out.camera, camera_target) if camera_target is not None else zero
    orient_loss = (F.mse_loss(rot6d_to_matrix(out.orient), rot6d_to_matrix(orient_target))
                   if orient_target is not None else zero)
    total = token_ce + shape_weight * shape_loss + camera_weight * camera_loss + orient_weight * orient_loss
    with torch.no_grad():
        accuracy = (logits.argmax(dim=-1) == targets).float().mean()
    return MaskedLoss(total, token_ce, shape_loss, camera_loss, orient_loss, accuracy, mask, out.logits)
