"""Person-box keypoint normalisation and the weak-perspective camera: one definition for training,
refinement and the worker.

Shape legend: ... any leading batch dims, L landmarks (33), S shape coefficients.

Frames. The body model's frame is SMPL's (Y up, the body faces +Z, its left is +X); the camera
looks along -Z from +Z, so image x grows with +X and image y (down) with -Y. Keypoints are
normalised to a square *person box* around the confident landmarks: centre c, half-side h,
`u = (x - c) / h`, so the person spans about [-1/margin, 1/margin]. The weak-perspective camera
(s, tx, ty) maps a model point P to `u = s * (P_x + tx)`, `v = s * (-P_y + ty)` in those units.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

BOX_MARGIN = 1.2  # the box side is this many times the landmarks' larger extent
MIN_CONFIDENCE = 0.3  # landmarks at least this confident define the box (all of them if too few)


class NormalizedKeypoints(NamedTuple):
    keypoints: Tensor  # (..., L, 3): u, v in box units, confidence in [0, 1]
    center: Tensor  # (..., 2) box centre in pixels
    half: Tensor  # (...) box half-side in pixels


def mediapipe_world_to_model(world):
    """MediaPipe world landmarks (..., 3) (x right, y down, z away from the camera) -> the model frame
    (x = the person's left when facing the camera, y up, z towards the camera): (x, -y, -z).
    Works on numpy arrays and torch tensors alike."""
    if isinstance(world, Tensor):
        return world * world.new_tensor([1.0, -1.0, -1.0])
    return world * np.array([1.0, -1.0, -1.0], dtype=world.dtype)


def person_box(xy: Tensor, conf: Tensor, min_confidence: float = MIN_CONFIDENCE) -> tuple[Tensor, Tensor]:
    """Square box around the confident landmarks: centre (..., 2) and half-side (...) in pixels.

    xy (..., L, 2) pixels; conf (..., L). Rows with fewer than 4 confident landmarks use all of them.
    """
    confident = conf >= min_confidence  # (..., L)
    use = torch.where(confident.sum(-1, keepdim=True) >= 4, confident, torch.ones_like(confident))
    big = torch.finfo(xy.dtype).max
    lo = torch.where(use[..., None], xy, torch.full_like(xy, big)).amin(-2)  # (..., 2)
    hi = torch.where(use[..., None], xy, torch.full_like(xy, -big)).amax(-2)  # (..., 2)
    center = 0.5 * (lo + hi)
    half = (0.5 * BOX_MARGIN * (hi - lo).amax(-1)).clamp_min(1e-3)  # (...)
    return center, half


def normalize_keypoints(xy: Tensor, conf: Tensor) -> NormalizedKeypoints:
    """Pixels (..., L, 2) and confidences (..., L) -> the transformer's keypoint input (..., L, 3)."""
    center, half = person_box(xy, conf)
    uv = (xy - center[..., None, :]) / half[..., None, None]
    return NormalizedKeypoints(torch.cat([uv, conf[..., None]], -1), center, half)


def weak_perspective(points: Tensor, camera: Tensor) -> Tensor:
    """Model points (..., L, 3) and camera (..., 3) = (s, tx, ty) -> box coordinates (..., L, 2)."""
    s, tx, ty = camera[..., 0:1], camera[..., 1:2], camera[..., 2:3]  # (..., 1) each
    u = s * (points[..., 0] + tx)
    v = s * (-points[..., 1] + ty)
    return torch.stack([u, v], -1)


def fit_weak_perspective(points: Tensor, uv: Tensor, weights: Tensor | None = None) -> Tensor:
    """Least-squares camera (..., 3) mapping points (..., L, 3) onto uv (..., L, 2), weights (..., L).

    u = s X + b_x, v = -s Y + b_y is linear in (s, b_x, b_y); t = b / s.
    """
    w = torch.ones_like(uv[..., 0]) if weights is None else weights  # (..., L)
    X, Y = points[..., 0], points[..., 1]
    u, v = uv[..., 0], uv[..., 1]
    sw = w.sum(-1).clamp_min(1e-8)
    mean = lambda a: (w * a).sum(-1) / sw  # noqa: E731  weighted mean over L
    # Centre both sides; s from the pooled covariance of (X, -Y) with (u, v).
    Xc, Yc = X - mean(X)[..., None], Y - mean(Y)[..., None]
    uc, vc = u - mean(u)[..., None], v - mean(v)[..., None]
    s = (w * (Xc * uc - Yc * vc)).sum(-1) / (w * (Xc**2 + Yc**2)).sum(-1).clamp_min(1e-8)
    s = s.clamp_min(1e-4)
    bx = mean(u) - s * mean(X)
    by = mean(v) + s * mean(Y)
    return torch.stack([s, bx / s, by / s], -1)
