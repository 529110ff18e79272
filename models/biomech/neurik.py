"""NeurIK (BioPose): a spatial-temporal network from windows of virtual markers to the joint
coordinates of the OpenSim model and its body-segment scales, within anatomical limits by
construction.

Split of the work. The pelvis's six global coordinates (tilt, list, rotation, tx, ty, tz) are
solved exactly from the six pelvis markers (ASIS, PSIS, hip joint centres) by a rigid fit to the
scaled model's pelvis markers (`pelvis_pose`, Kabsch) and OpenSim's Z-X-Y rotation order; the
network sees the markers in that pelvis frame, so it never has to learn where the person stands or
which way they face, and predicts the 34 joint coordinates. Each output is range_min + (range_max
- range_min) * sigmoid(raw): inside the model's range whatever the input (no clipping afterwards).

Shape legend: B windows, T frames per window, M markers, F = 4 values per marker (x, y, z in the
pelvis frame, metres, and 1/0 seen), C joint coordinates, K scaled bodies, D width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

PELVIS_COORDINATES = ("pelvis_tilt", "pelvis_list", "pelvis_rotation", "pelvis_tx", "pelvis_ty", "pelvis_tz")
PELVIS_MARKERS = ("r.ASIS_study", "L.ASIS_study", "r.PSIS_study", "L.PSIS_study", "RHJC_study", "LHJC_study")


def pelvis_pose(observed: np.ndarray, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rigid fit of the pelvis markers in the pelvis body's frame, local (6, 3), to observed
    (T, 6, 3) ground positions: rotation (T, 3, 3) and the pelvis origin (T, 3)."""
    pc = local.mean(0)
    oc = observed.mean(1)  # (T, 3)
    H = np.einsum("pi,tpj->tij", local - pc, observed - oc[:, None])  # (T, 3, 3)
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(np.swapaxes(Vt, 1, 2) @ np.swapaxes(U, 1, 2)))  # (T,) no reflections
    D = np.zeros((len(d), 3, 3))
    D[:, 0, 0] = D[:, 1, 1] = 1.0
    D[:, 2, 2] = d
    R = np.swapaxes(Vt, 1, 2) @ D @ np.swapaxes(U, 1, 2)  # (T, 3, 3)
    return R, oc - (R @ pc[:, None])[..., 0]


def pelvis_coordinates(R: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """(T, 6) pelvis tilt, list, rotation (radians) and tx, ty, tz (metres) for R = Rz(tilt) Rx(list)
    Ry(rotation), the order of the model's ground_pelvis joint."""
    lst = np.arcsin(np.clip(R[:, 2, 1], -1.0, 1.0))
    rot = np.arctan2(-R[:, 2, 0], R[:, 2, 2])
    tilt = np.arctan2(-R[:, 0, 1], R[:, 1, 1])
    return np.concatenate([np.stack([tilt, lst, rot], 1), origin], 1)


def in_pelvis_frame(markers: np.ndarray, R: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Ground markers (T, M, 3) -> the pelvis frame: R^T (x - origin)."""
    return np.einsum("tji,tmj->tmi", R, markers - origin[:, None])


@dataclass
class NeurIKConfig:
    markers: int = 31  # M
    coordinates: int = 34  # C: the joint coordinates (all but the pelvis's six)
    bodies: int = 22  # K: scaled bodies
    window: int = 16  # T: frames per window (longer tracks run window by window, overlapping)
    dim: int = 96  # D
    depth: int = 3  # spatial-temporal blocks
    heads: int = 4
    scale_min: float = 0.6  # body scales are bounded to [scale_min, scale_max]
    scale_max: float = 1.6


class _Block(nn.Module):
    """Attention across the markers of each frame, then across the frames of each marker, then an MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.n1, self.n2, self.n3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.space = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.time = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:  # (B, T, M, D)
        B, T, M, D = x.shape
        s = self.n1(x).reshape(B * T, M, D)
        x = x + self.space(s, s, s, need_weights=False)[0].reshape(B, T, M, D)
        t = self.n2(x).transpose(1, 2).reshape(B * M, T, D)
        x = x + self.time(t, t, t, need_weights=False)[0].reshape(B, M, T, D).transpose(1, 2)
        return x + self.mlp(self.n3(x))


class NeurIK(nn.Module):
    """markers (B, T, M, 4) -> joint coordinates (B, T, C) within [lower, upper], scales (B, K)."""

    def __init__(self, cfg: NeurIKConfig, lower: Tensor, upper: Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("lower", lower.float().clone())  # (C,) SI
        self.register_buffer("upper", upper.float().clone())  # (C,)
        D = cfg.dim
        self.embed = nn.Linear(4, D)
        self.marker_embed = nn.Parameter(torch.randn(cfg.markers, D) * 0.02)  # (M, D)
        self.time_embed = nn.Parameter(torch.randn(cfg.window, D) * 0.02)  # (T, D)
        self.blocks = nn.ModuleList(_Block(D, cfg.heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(D)
        self.coord_head = nn.Linear(cfg.markers * D, cfg.coordinates)
        self.scale_head = nn.Linear(cfg.markers * D, cfg.bodies)

    def forward(self, markers: Tensor) -> tuple[Tensor, Tensor]:
        B, T, M, _ = markers.shape
        x = self.embed(markers) + self.marker_embed + self.time_embed[:T, None]  # (B, T, M, D)
        for block in self.blocks:
            x = block(x)
        flat = self.norm(x).reshape(B, T, M * self.cfg.dim)  # (B, T, M*D)
        coords = self.lower + (self.upper - self.lower) * torch.sigmoid(self.coord_head(flat))  # (B, T, C)
        c = self.cfg
        scales = c.scale_min + (c.scale_max - c.scale_min) * torch.sigmoid(self.scale_head(flat.mean(1)))  # (B, K)
        return coords, scales


def marker_features(local: np.ndarray) -> np.ndarray:
    """Pelvis-frame markers (..., M, 3) with NaN where unseen -> network input (..., M, 4)."""
    seen = np.isfinite(local).all(-1, keepdims=True)
    return np.concatenate([np.where(seen, local, 0.0), seen.astype(local.dtype)], -1).astype(np.float32)


def windows(frames: int, window: int) -> list[slice]:
    """Overlapping windows covering `frames` frames (the last one ends at the end)."""
    if frames <= window:
        return [slice(0, frames)]
    starts = list(range(0, frames - window + 1, max(1, window // 2)))
    if starts[-1] != frames - window:
        starts.append(frames - window)
    return [slice(s, s + window) for s in starts]


def angle_rmse_deg(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-coordinate RMSE (C,) in degrees of angle arrays (..., C) in radians."""
    return np.sqrt(np.mean((pred - truth) ** 2, axis=tuple(range(pred.ndim - 1)))) * 180.0 / math.pi
