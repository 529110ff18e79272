"""2D-informed refinement (GenHMR): optimise the continuous token embeddings of a whole track.

After decoding, each frame's tokens index codebook entries. Refinement frees those entries:
z (T, N, D) starts at the codebook vectors of the decoded tokens and is optimised, with the
tokenizer's decoder frozen, together with the root orientation (T, 6) and one body shape for the
track (S,). The weak-perspective camera (T, 3) is solved jointly by variable projection: at every
step it is the closed-form least-squares camera of the current landmarks (differentiable, so the
pose gradient accounts for it). The objective is

    E = w_2d     * confidence-weighted robust 2D reprojection error of the 33 landmarks
      + w_world  * confidence-weighted robust distance of the hip-centred 3D landmarks to the
                   detector's world landmarks
      + w_smooth * squared acceleration of the 3D landmarks and of the camera along the track
      + w_code   * squared distance of each embedding to its nearest codebook entry
      + w_shape  * |shape|^2  (a unit-variance PCA prior)

Each residual is divided by a scale in its own unit (box units, metres, metres per frame^2,
codebook units) so that the weights are comparable; the robust terms use the pseudo-Huber
function sqrt(1 + r^2) - 1 of the scaled residual r: quadratic for small residuals, linear for
large ones, so an outlying keypoint (a wrong limb) pulls with a bounded force but never stops
pulling, as it would with a redescending function.

with Adam for a fixed number of steps (default 20; the full step size for 60 % of them, then a
cosine decay), batched over all frames of the track. The start is the decoded embeddings and
orientations smoothed along the track (Gaussian, sigma 2 frames): per-frame decoding jitters, and
a smooth start lets a few steps fit the keypoints instead of spending them on undoing the jitter
against the smoothness term (on the synthetic validation set with the first trained weights:
PA-MPJPE 59 -> 37 mm at 20 steps). The landmarks come
from the body layer's skeleton path (exact, no mesh), so a step costs O(T L N).

The world-landmark weight is low by default: MediaPipe's world landmarks are a per-view estimate,
and on Pose2Sim's four views of one motion they disagree with each other by ~116 mm PA-MPJPE (limb
landmarks); pulling the body towards them made our own cross-view disagreement worse (72 mm with
weight 0, 80 mm at 0.1, 96 mm at 0.5), while the 2D keypoints agree with the image by construction.

Shape legend: T frames of one track, N tokens, D code width, K codebook size, L = 33 landmarks,
S shape coefficients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from kinemesh.models.body.layer import BodyLayer
from kinemesh.models.camera import fit_weak_perspective, weak_perspective
from kinemesh.models.genhmr.inference import BodyParams, full_rotations

HIPS = (23, 24)


@dataclass(frozen=True)
class RefineConfig:
    steps: int = 20  # optimiser steps (0 = no refinement)
    lr: float = 0.12  # Adam step size of the embeddings and the shape
    lr_orient: float = 0.05  # Adam step size of the root orientation (6D)
    lr_hold: float = 0.6  # share of the steps at the full step size before a cosine decay to 0
    w_2d: float = 3.0
    w_world: float = 0.03  # low: MediaPipe's world landmarks disagree across views (see the module docstring)
    w_smooth: float = 0.2
    w_code: float = 0.1
    w_shape: float = 1e-3
    scale_2d: float = 0.03  # box units (about 2 % of the person's height)
    scale_world: float = 0.05  # metres
    scale_accel: float = 0.05  # metres per frame^2
    init_smooth_frames: float = 2.0  # Gaussian sigma (frames) smoothing the start along the track; 0 = off
    min_confidence: float = 0.5  # landmarks counted in the reported reprojection error


class RefineResult(NamedTuple):
    params: BodyParams  # refined (token ids unchanged: the embeddings no longer sit on codes)
    embeddings: Tensor  # (T, N, D) refined continuous embeddings
    reproj_before: Tensor  # (T,) mean reprojection error per frame, box units, confident landmarks
    reproj_after: Tensor  # (T,)
    objective: list[float]  # E before each step and after the last


def _temporal_smooth(x: Tensor, sigma: float) -> Tensor:
    """Gaussian filter along dim 0 (frames) with edge padding; x unchanged when sigma is 0."""
    if sigma <= 0 or x.shape[0] < 2:
        return x.clone()
    r = max(1, int(round(3 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()  # (2r+1,)
    flat = x.reshape(x.shape[0], -1).T[:, None, :]  # (C, 1, T)
    padded = torch.nn.functional.pad(flat, (r, r), mode="replicate")
    return torch.nn.functional.conv1d(padded, k[None, None]).squeeze(1).T.reshape(x.shape)


def reprojection_error(landmarks: Tensor, camera: Tensor, keypoints: Tensor, min_confidence: float) -> Tensor:
    """Mean 2D distance (T,) in box units over landmarks with confidence >= min_confidence (0 if none)."""
    uv = weak_perspective(landmarks, camera)  # (T, L, 2)
    use = (keypoints[..., 2] >= min_confidence).float()  # (T, L)
    err = (uv - keypoints[..., :2]).norm(dim=-1)  # (T, L)
    return (err * use).sum(-1) / use.sum(-1).clamp_min(1.0)


def refine_track(
    layer: BodyLayer,
    decoder: torch.nn.Module,
    codebook: Tensor,
    init: BodyParams,
    keypoints: Tensor,
    world: Tensor | None = None,
    config: RefineConfig = RefineConfig(),
) -> RefineResult:
    """Refine one track. decoder: the tokenizer's decoder, embeddings (T, N, D) -> body6d (T, 21, 6),
    frozen; codebook (K, D); init: the decoded BodyParams of the T frames; keypoints (T, L, 3) in box
    units with confidences; world (T, L, 3) hip-centred world landmarks in the model frame, or None.
    """
    c = config
    T = keypoints.shape[0]
    for p in decoder.parameters():
        p.requires_grad_(False)
    z = _temporal_smooth(codebook[init.token_ids].detach(), c.init_smooth_frames).requires_grad_(True)  # (T, N, D)
    orient = _temporal_smooth(init.orient6d.detach(), c.init_smooth_frames).requires_grad_(True)  # (T, 6)
    w_frame = init.confidences.mean(-1, keepdim=True)  # (T, 1) frames decoded with confidence weigh more
    shape = ((init.shape * w_frame).sum(0, keepdim=True) / w_frame.sum().clamp_min(1e-6)).detach()
    shape.requires_grad_(True)  # (1, S)
    conf = keypoints[..., 2]  # (T, L)
    kp = keypoints[..., :2]

    def forward() -> tuple[Tensor, Tensor, Tensor]:
        """body6d (T, 21, 6), landmarks (T, L, 3) and the camera (T, 3) solved for them."""
        body6d = decoder(z)
        _, lm = layer.skeleton(full_rotations(body6d, orient), shape.expand(T, -1), keypoints.new_zeros(T, 3))
        return body6d, lm, fit_weak_perspective(lm, kp, conf)  # variable projection: differentiable LS camera

    code_scale = codebook.pow(2).sum(-1).mean().clamp_min(1e-8)  # mean squared norm of an entry

    def robust(res2: Tensor, scale: float) -> Tensor:  # squared residuals (T, L) -> confidence-weighted mean
        r = (1 + res2 / scale**2).sqrt() - 1  # pseudo-Huber: quadratic near 0, linear beyond the scale
        return (conf * r).sum() / conf.sum().clamp_min(1e-6)

    def objective(lm: Tensor, camera: Tensor) -> Tensor:
        e = c.w_2d * robust((weak_perspective(lm, camera) - kp).pow(2).sum(-1), c.scale_2d)
        if world is not None and c.w_world > 0:
            centred = lm - lm[:, list(HIPS)].mean(1, keepdim=True)
            e = e + c.w_world * robust((centred - world).pow(2).sum(-1), c.scale_world)
        if T > 2 and c.w_smooth > 0:
            acc = lm[2:] - 2 * lm[1:-1] + lm[:-2]  # (T-2, L, 3)
            cam_acc = camera[2:] - 2 * camera[1:-1] + camera[:-2]  # (T-2, 3)
            e = e + c.w_smooth * (acc.pow(2).sum(-1).mean() / c.scale_accel**2 + cam_acc.pow(2).sum(-1).mean())
        if c.w_code > 0:
            flat = z.reshape(-1, z.shape[-1])  # (T*N, D)
            with torch.no_grad():  # the nearest entry is a choice, not a function to differentiate
                nearest = torch.cdist(flat, codebook).argmin(-1)  # (T*N,)
            e = e + c.w_code * (flat - codebook[nearest]).pow(2).sum(-1).mean() / code_scale
        return e + c.w_shape * shape.pow(2).sum()

    with torch.no_grad():  # "before": the decoded bodies as they are, with the transformer's own camera
        rot0 = full_rotations(init.body6d, init.orient6d)
        _, lm0 = layer.skeleton(rot0, init.shape, keypoints.new_zeros(T, 3))
        before = reprojection_error(lm0, init.camera, keypoints, c.min_confidence)
    if c.steps == 0:
        return RefineResult(init, z.detach(), before, before.clone(), [])
    history: list[float] = []
    opt = torch.optim.Adam([
        {"params": [z], "lr": c.lr},
        {"params": [orient], "lr": c.lr_orient},
        {"params": [shape], "lr": c.lr},
    ])
    hold = int(c.steps * c.lr_hold)  # full step size for the first steps, then a cosine to 0
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 1.0 if i < hold else 0.5 * (1 + math.cos(math.pi * (i - hold) / max(1, c.steps - hold))))
    for _ in range(c.steps):
        opt.zero_grad()
        _, lm, camera = forward()
        e = objective(lm, camera)
        history.append(float(e.detach()))
        e.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        body6d, lm, camera = forward()
        history.append(float(objective(lm, camera)))
        after = reprojection_error(lm, camera, keypoints, c.min_confidence)
        params = BodyParams(init.token_ids, init.confidences, body6d, orient.detach().clone(),
                            shape.detach().expand(T, -1).clone(), camera.detach().clone())
    return RefineResult(params, z.detach(), before, after, history)
