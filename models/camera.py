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


def person_crops(images: Tensor, center: Tensor, half: Tensor, size: tuple[int, int] = (256, 192)) -> Tensor:
    """Aspect-preserving person crops: images (P, H, W, 3) uint8 (each person's frame), box centres (P, 2)
    and half-sides (P,) in pixels (`person_box`) -> (P, 3, h, w) float32 RGB in [0, 1], bilinear, zero
    outside the frame. The crop spans the box's height and, at the crop's aspect h:w, a narrower width
    about the same centre, so a point's crop coordinates ((x - cx) / half, (y - cy) / half) are its
    person-box coordinates: the crop models' camera and the keypoints share one unit."""
    P, H, W, _ = images.shape
    h, w = size
    dev = center.device
    rows = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) / h * 2 - 1  # (h,) in [-1, 1]
    cols = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / w * 2 - 1  # (w,)
    y = center[:, 1, None, None] + half[:, None, None] * rows[None, :, None]  # (P, h, 1) pixels
    x = center[:, 0, None, None] + half[:, None, None] * (w / h) * cols[None, None, :]  # (P, 1, w)
    grid = torch.stack(torch.broadcast_tensors(x / W * 2 - 1, y / H * 2 - 1), -1)  # (P, h, w, 2)
    frames = images.permute(0, 3, 1, 2).float() / 255.0  # (P, 3, H, W)
    return torch.nn.functional.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def fit_rotation_to_keypoints(points: Tensor, uv: Tensor, weights: Tensor | None = None) -> Tensor:
    """The rotation (B, 3, 3) that best turns points (B, L, 3) so that their weak-perspective projection
    (x, -y up to scale and shift) lands on uv (B, L, 2) (box units, y down), weighted (B, L): the least-
    squares 2x3 map from the centred points to the centred uv, its closest pair of orthonormal rows
    (SVD), and the third row their cross product."""
    w = torch.ones_like(uv[..., 0]) if weights is None else weights
    sw = w.sum(-1, keepdim=True).clamp_min(1e-8)[..., None]  # (B, 1, 1)
    target = torch.stack([uv[..., 0], -uv[..., 1]], -1)  # (B, L, 2) in model axes (y up)
    pc = points - (w[..., None] * points).sum(-2, keepdim=True) / sw
    tc = target - (w[..., None] * target).sum(-2, keepdim=True) / sw
    cross = (tc * w[..., None]).transpose(-1, -2) @ pc  # (B, 2, 3)
    gram = (pc * w[..., None]).transpose(-1, -2) @ pc + 1e-9 * torch.eye(3, dtype=points.dtype, device=points.device)
    a = cross @ torch.linalg.inv(gram)  # (B, 2, 3): the affine camera
    u, _, vh = torch.linalg.svd(a, full_matrices=False)  # (B, 2, 2), (B, 2), (B, 2, 3)
    rows = u @ vh  # (B, 2, 3) orthonormal
    return torch.cat([rows, torch.linalg.cross(rows[:, 0], rows[:, 1])[:, None]], 1)


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


# -- full perspective --------------------------------------------------------------------------------
#
# A pinhole camera with focal length f and principal point (px, py) in pixels, seen in a person box
# (centre c, half-side h): f_box = f / h and the principal point (p - c) / h in box units. A model
# point P placed at translation t = (tx, ty, tz) (camera frame, tz < 0: in front of the camera) lands
# at  u = f_box (P_x + tx) / d + p_u,  v = -f_box (P_y + ty) / d + p_v,  with depth d = -(P_z + tz).
# Weak perspective is its limit for a body thin compared with its distance; for a camera 2-3 m away
# and looking down, the head is ~25 % nearer than the feet, which only this model explains.


def box_intrinsics(focal_px: Tensor | float, principal_px: Tensor, center: Tensor, half: Tensor) -> Tensor:
    """Pinhole intrinsics in person-box units (..., 3) = (f_box, p_u, p_v).

    focal_px scalar or (...); principal_px (2,) or (..., 2) pixels; center (..., 2) and half (...) the box.
    """
    f = torch.as_tensor(focal_px, dtype=center.dtype).expand_as(half) / half  # (...)
    p = (principal_px.to(center.dtype) - center) / half[..., None]  # (..., 2)
    return torch.cat([f[..., None], p], -1)


def perspective(points: Tensor, translation: Tensor, intrinsics: Tensor, min_depth: float = 0.05) -> Tensor:
    """Model points (..., L, 3), translation (..., 3), box intrinsics (..., 3) -> box coordinates (..., L, 2)."""
    cam = points + translation[..., None, :]  # (..., L, 3) camera frame
    depth = (-cam[..., 2]).clamp_min(min_depth)  # (..., L)
    f, pu, pv = intrinsics[..., 0:1], intrinsics[..., 1:2], intrinsics[..., 2:3]
    return torch.stack([f * cam[..., 0] / depth + pu, -f * cam[..., 1] / depth + pv], -1)


def fit_perspective_translation(points: Tensor, uv: Tensor, intrinsics: Tensor, weights: Tensor | None = None,
                                iterations: int = 2) -> Tensor:
    """Least-squares translation (..., 3) placing points (..., L, 3) onto uv (..., L, 2) (box units).

    With the rotation known (the points are already in the camera's orientation) the projection
    equations are linear in t: for depth d = -(P_z + t_z),
        f t_x + u' t_z = -f P_x - u' P_z     and     f t_y - v' t_z = -f P_y + v' P_z
    (u' = u - p_u, v' = v - p_v). Their residual is the image residual times d, so each landmark's
    equation is divided by its depth at the previous estimate (started from the weak-perspective
    fit) and the system re-solved: `iterations` reweighted solves, differentiable throughout.
    """
    w = torch.ones_like(uv[..., 0]) if weights is None else weights  # (..., L)
    f, pu, pv = intrinsics[..., 0:1], intrinsics[..., 1:2], intrinsics[..., 2:3]  # (..., 1)
    X, Y, Z = points[..., 0], points[..., 1], points[..., 2]  # (..., L)
    u, v = uv[..., 0] - pu, uv[..., 1] - pv
    weak = fit_weak_perspective(points, uv, w)  # (..., 3): s = f / d for a first depth
    tz = -(f[..., 0] / weak[..., 0])  # (...)
    zero, fs = torch.zeros_like(u), f.expand_as(u)
    # rows (..., 2L, 3) and right-hand sides (..., 2L)
    A = torch.cat([torch.stack([fs, zero, u], -1), torch.stack([zero, fs, -v], -1)], -2)
    y = torch.cat([-f * X - u * Z, -f * Y + v * Z], -1)
    eye = torch.eye(3, dtype=points.dtype, device=points.device)
    for _ in range(max(1, iterations)):
        depth = (-(Z + tz[..., None])).clamp_min(0.05)  # (..., L)
        r = (w / depth**2).repeat(*([1] * (w.dim() - 1)), 2)  # (..., 2L) squared-residual weights
        M = (A * r[..., None]).transpose(-1, -2) @ A + 1e-9 * eye  # (..., 3, 3)
        b = ((A * r[..., None]).transpose(-1, -2) @ y[..., None])[..., 0]  # (..., 3)
        t = torch.linalg.solve(M, b)
        tz = t[..., 2]
    return t


def perspective_to_weak(translation: Tensor, intrinsics: Tensor) -> Tensor:
    """The weak-perspective camera (..., 3) = (s, tx, ty) that matches a perspective placement at the
    model origin's depth: s = f_box / d, and the principal point folded into the offsets."""
    d = (-translation[..., 2]).clamp_min(1e-3)
    f, pu, pv = intrinsics[..., 0], intrinsics[..., 1], intrinsics[..., 2]
    s = f / d
    return torch.stack([s, translation[..., 0] + pu / s, -translation[..., 1] + pv / s], -1)
