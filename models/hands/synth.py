"""Synthetic hands for training and evaluating the hand model: poses with the correlations real
hands have (a shared grasp closure with per-finger variation, spread when open, a thumb that
opposes), a random orientation and size, their 21 keypoints by forward kinematics, and the
detector-like 2D input (box-normalised, noisy, some keypoints dropped).

Shape legend: P samples, J = 16 joints, F = 15 finger joints, K = 21 keypoints.

Ranges (degrees; flexion positive towards the palm): finger MCP flexion -20..90, PIP 0..110, DIP
0..80, MCP abduction within +-20 (more when the hand is open); thumb CMC flexion -10..50 and
abduction -10..50, MCP 0..60, IP -10..80.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from kinemesh.models.camera import fit_weak_perspective, normalize_keypoints
from kinemesh.models.hands.skeleton import HandSkeleton
from kinemesh.models.rotations import axis_angle_to_matrix, matrix_to_rot6d


@dataclass
class SyntheticHands:
    finger6d: Tensor  # (P, F, 6) finger joint rotations (what the tokenizer encodes)
    orient6d: Tensor  # (P, 6) the hand's orientation in the camera frame
    scale: Tensor  # (P,) hand size relative to the skeleton's
    keypoints3d: Tensor  # (P, K, 3) metres, camera axes, wrist at the origin
    keypoints: Tensor  # (P, K, 3) box-normalised 2D + confidence: the model's input
    camera: Tensor  # (P, 3) weak-perspective camera of the noise-free keypoints

    def __len__(self) -> int:
        return self.finger6d.shape[0]


def _deg(x: Tensor) -> Tensor:
    return x * (math.pi / 180)


def sample_poses(skeleton: HandSkeleton, P: int, g: torch.Generator) -> Tensor:
    """Finger joint rotations (P, F, 3, 3)."""
    flex_axis, abd_axis = skeleton.finger_axes()  # (F, 3) each

    def u(lo: float, hi: float, shape: tuple = (P,)) -> Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    def n(std: float, shape: tuple = (P,)) -> Tensor:
        return std * torch.randn(shape, generator=g)

    grasp = u(0.0, 1.0)  # (P,) the hand's overall closure
    curl = (grasp[:, None] + n(0.25, (P, 4))).clamp(0.0, 1.0)  # (P, 4) index..pinky
    curl = torch.where(torch.rand(P, 4, generator=g) < 0.15, u(0, 1, (P, 4)), curl)  # some fingers on their own
    mcp = (-20 + 110 * curl + n(8.0, (P, 4))).clamp(-20, 90)
    pip = (110 * curl + n(10.0, (P, 4))).clamp(0, 110)
    dip = (0.7 * pip + n(8.0, (P, 4))).clamp(0, 80)
    spread = u(-0.3, 1.0)[:, None] * (1 - grasp[:, None]) * torch.tensor([-12.0, 0.0, 10.0, 20.0])  # (P, 4)
    abd = (spread + n(4.0, (P, 4))).clamp(-20, 20)
    t_closure = (grasp + n(0.2)).clamp(0, 1)
    thumb_flex = torch.stack([(-10 + 60 * t_closure + n(6)).clamp(-10, 50), (60 * t_closure + n(8)).clamp(0, 60),
                              (-10 + 90 * t_closure + n(10)).clamp(-10, 80)], 1)  # (P, 3)
    thumb_abd = (u(-10, 50) + n(5)).clamp(-10, 50)
    flex = torch.cat([thumb_flex, torch.stack([mcp, pip, dip], 2).reshape(P, 12)], 1)  # (P, F) thumb, index..pinky
    abduction = torch.zeros(P, 15)
    abduction[:, 0] = thumb_abd
    abduction[:, 3::3] = abd  # each finger's MCP
    r_flex = axis_angle_to_matrix(flex_axis * _deg(flex)[..., None])  # (P, F, 3, 3)
    r_abd = axis_angle_to_matrix(abd_axis * _deg(abduction)[..., None])
    return r_abd @ r_flex


def random_rotations(P: int, g: torch.Generator) -> Tensor:
    """Uniformly random rotations (P, 3, 3) (normalised Gaussian quaternions)."""
    q = torch.randn(P, 4, generator=g)
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
                        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
                        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1).reshape(P, 3, 3)


def generate(skeleton: HandSkeleton, P: int, seed: int, noise: float = 0.01, drop: float = 0.05) -> SyntheticHands:
    """P synthetic hands from `seed`: 2D noise `noise` (box units, Gaussian) and each keypoint dropped
    (confidence 0) with probability `drop`."""
    g = torch.Generator().manual_seed(seed)
    fingers = sample_poses(skeleton, P, g)  # (P, F, 3, 3)
    orient = random_rotations(P, g)  # (P, 3, 3)
    scale = 0.85 + 0.3 * torch.rand(P, generator=g)
    with torch.no_grad():
        points = skeleton(torch.cat([orient[:, None], fingers], 1), scale)  # (P, K, 3)
    xy = torch.stack([points[..., 0], -points[..., 1]], -1)  # image axes: y down
    conf = (torch.rand(P, 21, generator=g) >= drop).float()
    norm = normalize_keypoints(xy, torch.ones(P, 21))
    clean = norm.keypoints[..., :2]
    noisy = clean + noise * torch.randn(clean.shape, generator=g)
    keypoints = torch.cat([noisy * conf[..., None], conf[..., None]], -1)
    camera = fit_weak_perspective(points, clean)
    return SyntheticHands(matrix_to_rot6d(fingers), matrix_to_rot6d(orient), scale, points, keypoints, camera)
