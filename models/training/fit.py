"""Fit anatomical-angle sequences to MediaPipe world landmarks of real clips (training poses "from life").

The angles are bounded by construction (a sigmoid between each joint's limits), so every fitted
pose is within the limits the generator uses; the root orientation is a free 6D rotation per frame
and the body shape one vector per clip. Input is the keypoint stage's `keypoints.npz` artifact.

Shape legend: T frames, L = 33 landmarks, M anatomical angles, S shape coefficients.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kinemesh.models.body.layer import BodyLayer
from kinemesh.models.camera import mediapipe_world_to_model
from kinemesh.models.rotations import rot6d_to_matrix
from kinemesh.models.training.motion import DOFS, LIMITS_HI, LIMITS_LO, REST, dofs_to_rotations
from kinemesh.models.training.synth import HIP_LANDMARKS, arm_rest

# The body landmarks whose definitions agree between MediaPipe and the mesh regressor (no face).
FIT_LANDMARKS = tuple(range(11, 33))
MIN_VISIBILITY = 0.5


def world_tracks(npz_path: str | Path, min_frames: int = 20) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per track with at least `min_frames` frames: (world (T, L, 3) in the model frame, visibility (T, L))."""
    with np.load(npz_path) as z:
        kp2d, kp3d = z["keypoints_2d"], z["keypoints_3d"]  # (T, K, L, 4), (T, K, L, 3)
    out = []
    for k in range(kp3d.shape[1]):
        present = np.isfinite(kp3d[:, k]).all(axis=(1, 2))
        if present.sum() < min_frames:
            continue
        world = mediapipe_world_to_model(kp3d[present, k])
        out.append((world.astype(np.float32), kp2d[present, k, :, 2].astype(np.float32)))
    return out


def fit_sequence(layer: BodyLayer, world: np.ndarray, visibility: np.ndarray, steps: int = 300,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Angles (T, M) with the root offsets at 0, root orientations (T, 3, 3), and the RMS fit error (m)."""
    torch.manual_seed(seed)
    T = world.shape[0]
    lo, hi = torch.from_numpy(LIMITS_LO), torch.from_numpy(LIMITS_HI)
    rest01 = ((torch.from_numpy(REST) - lo) / (hi - lo)).clamp(0.02, 0.98)
    theta = torch.logit(rest01).repeat(T, 1).requires_grad_(True)  # (T, M)
    orient = torch.tensor([1.0, 0, 0, 0, 1.0, 0]).repeat(T, 1).requires_grad_(True)  # (T, 6)
    shape = torch.zeros(1, layer.config.num_shape, requires_grad=True)
    root = torch.zeros(len(DOFS))
    root[:3] = 1.0
    target = torch.from_numpy(world)[:, list(FIT_LANDMARKS)]  # (T, l, 3)
    w = torch.from_numpy((visibility[:, list(FIT_LANDMARKS)] >= MIN_VISIBILITY).astype(np.float32))  # (T, l)
    rest = arm_rest(layer)
    opt = torch.optim.Adam([theta, orient, shape], lr=0.05)

    def landmarks() -> torch.Tensor:
        angles = (lo + (hi - lo) * torch.sigmoid(theta)) * (1 - root)  # root offsets stay 0
        rot = dofs_to_rotations(angles, rot6d_to_matrix(orient), rest)
        _, lm = layer.skeleton(rot, shape.expand(T, -1), torch.zeros(T, 3))
        return lm - lm[:, list(HIP_LANDMARKS)].mean(1, keepdim=True)

    for _ in range(steps):
        opt.zero_grad()
        diff = (landmarks()[:, list(FIT_LANDMARKS)] - target).pow(2).sum(-1)  # (T, l)
        loss = (w * diff).sum() / w.sum().clamp_min(1)
        loss = loss + 1e-3 * shape.pow(2).mean() + 1e-4 * (theta - torch.logit(rest01)).pow(2).mean()
        if T > 2:
            loss = loss + 1e-3 * (theta[2:] - 2 * theta[1:-1] + theta[:-2]).pow(2).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        diff = (landmarks()[:, list(FIT_LANDMARKS)] - target).pow(2).sum(-1)
        rms = float(((w * diff).sum() / w.sum().clamp_min(1)).sqrt())
        angles = ((lo + (hi - lo) * torch.sigmoid(theta)) * (1 - root)).numpy()
        return angles.astype(np.float32), rot6d_to_matrix(orient).numpy().astype(np.float32), rms
