"""Rotation representations: 6D (Zhou et al. 2019), rotation matrices, axis-angle, quaternions.

Shape legend: `...` any leading batch dims (B, T, J, ...).

Conventions:
- rotation matrices act on column vectors (x' = R @ x);
- 6D = the first two *columns* of R, concatenated: rot6d[..., 0:3] = R[..., :, 0],
  rot6d[..., 3:6] = R[..., :, 1]. Decoding orthonormalises them with Gram-Schmidt and takes
  the third column as their cross product (the continuous representation of Zhou et al.);
- axis-angle = unit axis times angle in radians, angle in [0, pi];
- quaternions are (w, x, y, z), scalar first.

Every function is plain tensor arithmetic (no torch.linalg, no data-dependent branching), so it
traces and exports to ONNX unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor

_EPS = 1e-8


def _normalize(v: Tensor) -> Tensor:
    # (..., 3) -> (..., 3); clamped so a zero vector gives zeros, not NaN
    return v / v.norm(dim=-1, keepdim=True).clamp_min(_EPS)


def _cross(a: Tensor, b: Tensor) -> Tensor:
    # (..., 3) x (..., 3) -> (..., 3); written out because linalg.cross is not in every exporter
    ax, ay, az = a[..., 0], a[..., 1], a[..., 2]
    bx, by, bz = b[..., 0], b[..., 1], b[..., 2]
    return torch.stack((ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx), dim=-1)


def rot6d_to_matrix(rot6d: Tensor) -> Tensor:
    """(..., 6) -> (..., 3, 3). Gram-Schmidt on the two 3-vectors; any non-degenerate input is valid."""
    a1, a2 = rot6d[..., 0:3], rot6d[..., 3:6]  # (..., 3) each
    b1 = _normalize(a1)
    b2 = _normalize(a2 - (b1 * a2).sum(dim=-1, keepdim=True) * b1)
    b3 = _cross(b1, b2)
    return torch.stack((b1, b2, b3), dim=-1)  # (..., 3, 3), columns b1 b2 b3


def matrix_to_rot6d(matrix: Tensor) -> Tensor:
    """(..., 3, 3) -> (..., 6): the first two columns."""
    return torch.cat((matrix[..., :, 0], matrix[..., :, 1]), dim=-1)  # (..., 6)


def _skew(v: Tensor) -> Tensor:
    # (..., 3) -> (..., 3, 3) with skew(v) @ x == cross(v, x)
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    zero = torch.zeros_like(x)
    rows = (
        torch.stack((zero, -z, y), dim=-1),
        torch.stack((z, zero, -x), dim=-1),
        torch.stack((-y, x, zero), dim=-1),
    )
    return torch.stack(rows, dim=-2)  # (..., 3, 3)


def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor:
    """(..., 3) -> (..., 3, 3). Rodrigues: R = I + a K + b K^2 with K = skew(axis_angle),
    a = sin(t)/t, b = (1 - cos t)/t^2; Taylor series below a small angle keep the gradient finite."""
    theta2 = (axis_angle * axis_angle).sum(dim=-1, keepdim=True)  # (..., 1)
    small = theta2 < 1e-6
    theta = theta2.clamp_min(1e-12).sqrt()
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)  # (..., 1)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2.clamp_min(1e-12))
    k = _skew(axis_angle)  # (..., 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(k)
    return eye + a.unsqueeze(-1) * k + b.unsqueeze(-1) * (k @ k)


def matrix_to_quaternion(matrix: Tensor) -> Tensor:
    """(..., 3, 3) -> (..., 4) unit quaternion (w, x, y, z) with w >= 0.

    Computes all four candidate solutions (each divides by one of 4w^2, 4x^2, 4y^2, 4z^2) and keeps
    the one with the largest divisor, which is numerically safe for every rotation.
    """
    m00, m01, m02 = matrix[..., 0, 0], matrix[..., 0, 1], matrix[..., 0, 2]
    m10, m11, m12 = matrix[..., 1, 0], matrix[..., 1, 1], matrix[..., 1, 2]
    m20, m21, m22 = matrix[..., 2, 0], matrix[..., 2, 1], matrix[..., 2, 2]
    # 4 * (w^2, x^2, y^2, z^2)
    sq = torch.stack(
        (1.0 + m00 + m11 + m22, 1.0 + m00 - m11 - m22, 1.0 - m00 + m11 - m22, 1.0 - m00 - m11 + m22), dim=-1
    )  # (..., 4)
    root = sq.clamp_min(0.0).sqrt()  # 2 * |component|
    candidates = torch.stack(
        (
            torch.stack((root[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01), dim=-1),
            torch.stack((m21 - m12, root[..., 1] ** 2, m10 + m01, m02 + m20), dim=-1),
            torch.stack((m02 - m20, m10 + m01, root[..., 2] ** 2, m12 + m21), dim=-1),
            torch.stack((m10 - m01, m20 + m02, m21 + m12, root[..., 3] ** 2), dim=-1),
        ),
        dim=-2,
    )  # (..., 4, 4): row i is 4 * q * q_i
    candidates = candidates / (2.0 * root.clamp_min(0.1)).unsqueeze(-1)  # row i ~ q (up to sign)
    best = sq.argmax(dim=-1, keepdim=True)  # (..., 1)
    q = torch.gather(candidates, -2, best.unsqueeze(-1).expand(*best.shape[:-1], 1, 4)).squeeze(-2)
    q = _normalize4(q)
    return torch.where(q[..., :1] < 0, -q, q)  # (..., 4), w >= 0


def _normalize4(q: Tensor) -> Tensor:
    return q / q.norm(dim=-1, keepdim=True).clamp_min(_EPS)


def quaternion_to_axis_angle(quaternion: Tensor) -> Tensor:
    """(..., 4) (w, x, y, z) -> (..., 3), angle in [0, pi]."""
    q = torch.where(quaternion[..., :1] < 0, -quaternion, quaternion)
    w, v = q[..., :1], q[..., 1:]  # (..., 1), (..., 3)
    sin_half = v.norm(dim=-1, keepdim=True)  # (..., 1)
    angle = 2.0 * torch.atan2(sin_half, w)
    small = sin_half < 1e-6
    # angle / sin(angle / 2) -> 2 / w as the angle -> 0
    scale = torch.where(small, 2.0 / w.clamp_min(_EPS), angle / sin_half.clamp_min(1e-12))
    return v * scale


def quaternion_to_matrix(quaternion: Tensor) -> Tensor:
    """(..., 4) (w, x, y, z), any norm > 0 -> (..., 3, 3)."""
    q = _normalize4(quaternion)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = (
        torch.stack((1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)), dim=-1),
        torch.stack((2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)), dim=-1),
        torch.stack((2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)), dim=-1),
    )
    return torch.stack(rows, dim=-2)  # (..., 3, 3)


def matrix_to_axis_angle(matrix: Tensor) -> Tensor:
    """(..., 3, 3) -> (..., 3), through the quaternion (stable near 0 and near pi)."""
    return quaternion_to_axis_angle(matrix_to_quaternion(matrix))


def axis_angle_to_rot6d(axis_angle: Tensor) -> Tensor:
    """(..., 3) -> (..., 6)."""
    return matrix_to_rot6d(axis_angle_to_matrix(axis_angle))


def rot6d_to_axis_angle(rot6d: Tensor) -> Tensor:
    """(..., 6) -> (..., 3)."""
    return matrix_to_axis_angle(rot6d_to_matrix(rot6d))
