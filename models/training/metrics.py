"""3D pose error metrics (mm), shared by training records and the benchmarks.

Shape legend: B poses, J joints.
"""

from __future__ import annotations

import torch
from torch import Tensor

BODY_METRIC_JOINTS = tuple(range(22))  # SMPL body joints, pelvis to wrists (no hand joints)


def mpjpe_mm(pred: Tensor, gt: Tensor, root: int = 0) -> Tensor:
    """Mean per-joint position error (B,) in mm after aligning the root joints; inputs (B, J, 3) metres."""
    p = pred - pred[:, root : root + 1]
    g = gt - gt[:, root : root + 1]
    return (p - g).norm(dim=-1).mean(-1) * 1000.0


def procrustes_align(pred: Tensor, gt: Tensor) -> Tensor:
    """pred (B, J, 3) aligned to gt by the best similarity transform (rotation, scale, translation)."""
    mp, mg = pred.mean(1, keepdim=True), gt.mean(1, keepdim=True)
    p, g = pred - mp, gt - mg
    cov = p.transpose(1, 2) @ g  # (B, 3, 3)
    u, s, vt = torch.linalg.svd(cov)
    d = torch.sign(torch.linalg.det(u @ vt))  # (B,) avoid reflections
    fix = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    rot = u @ fix @ vt  # (B, 3, 3) applied as p @ rot
    scale = (s * torch.diagonal(fix, dim1=1, dim2=2)).sum(-1) / p.pow(2).sum((1, 2)).clamp_min(1e-12)
    return scale[:, None, None] * p @ rot + mg


def pa_mpjpe_mm(pred: Tensor, gt: Tensor) -> Tensor:
    """MPJPE (B,) in mm after Procrustes alignment."""
    return (procrustes_align(pred, gt) - gt).norm(dim=-1).mean(-1) * 1000.0
