"""2D-informed refinement (GenHMR): optimise the continuous token embeddings of a whole track.

After decoding, each frame's tokens index codebook entries. Refinement frees those entries:
z (T, N, D) starts at the codebook vectors of the decoded tokens and is optimised, with the
tokenizer's decoder frozen, together with the root orientation (T, 6) and one body shape for the
track (S,). The camera is solved jointly by variable projection: at every step it is the
closed-form least-squares camera of the current landmarks (differentiable, so the pose gradient
accounts for it): a pinhole placement (T, 3) in metres when the caller gives the intrinsics (the
worker does), else a weak-perspective camera (T, 3). The objective is

    E = w_2d     * confidence-weighted robust 2D reprojection error of the 33 landmarks
      + w_world  * confidence-weighted robust distance of the hip-centred 3D landmarks to the
                   detector's world landmarks
      + w_bone   * robust difference between the body's segment lengths and the track's median
                   segment lengths in the world landmarks (metric size and proportions)
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
against the smoothness term. The landmarks come from the body layer's skeleton path (exact, no
mesh), so a step costs O(T L N).

Why perspective and segment lengths. 2D keypoints alone fix a body only up to scale: with a weak-
perspective camera a child near the camera and an adult far from it project alike, and the shape
drifted freely (on Pose2Sim's four views of one adult the fitted thigh measured 0.17-0.41 m).
MediaPipe's world landmarks are metric and their segment lengths agree across those views within
a few centimetres (thigh 0.38-0.41 m; triangulated from the four calibrated views: 0.37 m), even
though their joint positions do not (99.5 mm PA-MPJPE against the triangulation, `make bench-body`); the bone term
takes their size, the world term (weight 1) a loose pull on the 3D pose. With a metric body, a
pinhole camera then explains the 2D keypoints exactly where weak perspective cannot: a camera
2-3 m away and looking down sees the head ~25 % nearer than the feet. The defaults were chosen on
the synthetic validation set (seed 1000: MPJPE 77 -> 41 mm and PA-MPJPE 34 -> 28 mm against weak
perspective with world weight 0.03 and no bone term) and checked on the four real views (2D fit
within 2 % of the person's height).

Shape legend: T frames of one track, N tokens, D code width, K codebook size, L = 33 landmarks,
S shape coefficients, M = len(BONES).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from kinemesh.models.body.layer import BodyLayer
from kinemesh.models.camera import (
    fit_perspective_translation,
    fit_weak_perspective,
    perspective,
    perspective_to_weak,
    weak_perspective,
)
from kinemesh.models.genhmr.inference import BodyParams, full_rotations, segments

HIPS = (23, 24)
# Limb and trunk segments whose length the world landmarks measure well on every view (BlazePose ids):
# shoulders, hips, both sides of the trunk, upper arms, forearms, thighs, shanks. Hands, feet and the
# face are left out: their world landmarks are a few centimetres apart and noisy.
BONES = ((11, 12), (23, 24), (11, 23), (12, 24), (11, 13), (12, 14), (13, 15), (14, 16),
         (23, 25), (24, 26), (25, 27), (26, 28))


# The codebook-closeness term pulls each embedding towards its nearest entry; which entry is nearest
# changes slowly, so it is re-chosen every few steps (and for the final objective), not every step.
CODE_REASSIGN_EVERY = 5


def bone_lengths(points: Tensor) -> Tensor:
    """Landmarks (..., L, 3) -> the BONES' lengths (..., len(BONES))."""
    a, b = zip(*BONES, strict=True)
    return (points[..., list(a), :] - points[..., list(b), :]).norm(dim=-1)


def track_bone_lengths(world: Tensor, conf: Tensor, min_confidence: float = 0.5) -> tuple[Tensor, Tensor]:
    """Per-bone median length over a track's frames (len(BONES),) and whether it was measured at all
    (len(BONES),) bool: frames where both ends have confidence >= min_confidence count."""
    a, b = zip(*BONES, strict=True)
    lengths = bone_lengths(world)  # (T, M)
    seen = (conf[:, list(a)] >= min_confidence) & (conf[:, list(b)] >= min_confidence)  # (T, M)
    masked = torch.where(seen, lengths, torch.full_like(lengths, float("nan")))
    return masked.nanmedian(0).values.nan_to_num(0.0), seen.any(0)


@dataclass(frozen=True)
class RefineConfig:
    steps: int = 20  # optimiser steps (0 = no refinement)
    lr: float = 0.12  # Adam step size of the embeddings and the shape
    lr_orient: float = 0.05  # Adam step size of the root orientation (6D)
    lr_hold: float = 0.6  # share of the steps at the full step size before a cosine decay to 0
    w_2d: float = 6.0
    w_world: float = 1.0
    w_smooth: float = 0.2
    w_code: float = 0.1
    w_shape: float = 1e-3
    w_bone: float = 0.3
    scale_bone: float = 0.02  # metres
    scale_2d: float = 0.03  # box units (about 2 % of the person's height)
    scale_world: float = 0.05  # metres
    scale_accel: float = 0.05  # metres per frame^2 (landmarks)
    scale_accel_camera: float = 1.0  # metres per frame^2 (the pinhole placement: its depth is noisy frame to frame)
    init_smooth_frames: float = 2.0  # Gaussian sigma (frames) smoothing the start along the track; 0 = off
    min_confidence: float = 0.5  # landmarks counted in the reported reprojection error


class RefineResult(NamedTuple):
    params: BodyParams  # refined (token ids unchanged: the embeddings no longer sit on codes)
    embeddings: Tensor  # (T, N, D) refined continuous embeddings
    reproj_before: Tensor  # (T,) mean reprojection error per frame, box units, confident landmarks
    reproj_after: Tensor  # (T,)
    objective: list[float]  # E before each step and after the last
    translation: Tensor | None  # (T, 3) camera-frame placement (metres) when refined with intrinsics, else None


def _temporal_smooth(x: Tensor, sigma: float) -> Tensor:
    """Gaussian filter along dim 0 (frames) with edge padding; x unchanged when sigma is 0."""
    if sigma <= 0 or x.shape[0] < 2:
        return x.clone()
    r = max(1, int(round(3 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) / sigma) ** 2)
    k = k / k.sum()  # (2r+1,)
    flat = x.reshape(x.shape[0], -1).T[:, None, :]  # (C, 1, T)
    padded = torch.nn.functional.pad(flat, (r, r), mode="replicate")
    return torch.nn.functional.conv1d(padded, k[None, None]).squeeze(1).T.reshape(x.shape)


def reprojection_error(landmarks: Tensor, camera: Tensor, keypoints: Tensor, min_confidence: float,
                       intrinsics: Tensor | None = None) -> Tensor:
    """Mean 2D distance (T,) in box units over landmarks with confidence >= min_confidence (0 if none).

    camera: weak perspective (T, 3) = (s, tx, ty), or with `intrinsics` (T, 3) a translation (T, 3)."""
    uv = weak_perspective(landmarks, camera) if intrinsics is None else perspective(landmarks, camera, intrinsics)
    use = (keypoints[..., 2] >= min_confidence).float()  # (T, L)
    err = (uv - keypoints[..., :2]).norm(dim=-1)  # (T, L)
    return (err * use).sum(-1) / use.sum(-1).clamp_min(1.0)


def refine_track(
    layer: BodyLayer,
    decoder: torch.nn.Module,
    codebook: Tensor | None,
    init: BodyParams,
    keypoints: Tensor,
    world: Tensor | None = None,
    config: RefineConfig = RefineConfig(),
    intrinsics: Tensor | None = None,
    frame_index: Tensor | None = None,
    embeddings: Tensor | None = None,
) -> RefineResult:
    """Refine one track. decoder: the tokenizer's decoder, embeddings (T, N, D) -> body6d (T, 21, 6),
    frozen; codebook (K, D), or None where the embeddings are not codes (MQ-HMR's query tokens: no
    codebook term); embeddings (T, N, D): where they start (default: the codebook entries of
    init.token_ids; required without a codebook); init: the decoded BodyParams of the T frames; keypoints (T, L, 3) in box
    units with confidences; world (T, L, 3) hip-centred world landmarks in the model frame, or None;
    intrinsics (T, 3) the pinhole camera in box units (`kinemesh.models.camera.box_intrinsics`): with
    them the landmarks are projected in full perspective and placed by a translation solved in closed
    form each step; without them, weak perspective. frame_index (T,): the rows' frame numbers; where
    they jump (the person was not seen), the start is smoothed and accelerations are taken only within
    each run of consecutive frames. None: the rows are consecutive frames.
    """
    c = config
    T = keypoints.shape[0]
    for p in decoder.parameters():
        p.requires_grad_(False)
    runs = segments(frame_index, T)
    if embeddings is None:
        if codebook is None:
            raise ValueError("refine_track needs the start embeddings when there is no codebook")
        embeddings = codebook[init.token_ids]
    z = torch.cat([_temporal_smooth(embeddings[r].detach(), c.init_smooth_frames)
                   for r in runs]).requires_grad_(True)  # (T, N, D)
    orient = torch.cat([_temporal_smooth(init.orient6d[r].detach(), c.init_smooth_frames)
                        for r in runs]).requires_grad_(True)  # (T, 6)
    # second differences only over three consecutive frames of one run
    steady = torch.ones(max(T - 2, 0), dtype=torch.bool, device=keypoints.device)  # (T-2,)
    if frame_index is not None and T > 2:
        idx = torch.as_tensor(frame_index, dtype=torch.int64, device=keypoints.device)
        steady = (idx[2:] - idx[:-2]) == 2
    w_frame = init.confidences.mean(-1, keepdim=True)  # (T, 1) frames decoded with confidence weigh more
    shape = ((init.shape * w_frame).sum(0, keepdim=True) / w_frame.sum().clamp_min(1e-6)).detach()
    shape.requires_grad_(True)  # (1, S)
    conf = keypoints[..., 2]  # (T, L)
    kp = keypoints[..., :2]

    def forward() -> tuple[Tensor, Tensor, Tensor]:
        """body6d (T, 21, 6), landmarks (T, L, 3) and the camera (T, 3) solved for them."""
        body6d = decoder(z)
        _, lm = layer.skeleton(full_rotations(body6d, orient), shape.expand(T, -1), keypoints.new_zeros(T, 3))
        return body6d, lm, solve(lm)  # variable projection: differentiable LS camera

    if intrinsics is None:
        def solve(lm: Tensor) -> Tensor:
            return fit_weak_perspective(lm, kp, conf)  # (T, 3) = (s, tx, ty)

        def project(lm: Tensor, camera: Tensor) -> Tensor:
            return weak_perspective(lm, camera)
        cam_scale = 1.0  # box units
    else:
        def solve(lm: Tensor) -> Tensor:
            return fit_perspective_translation(lm, kp, intrinsics, conf)  # (T, 3) metres

        def project(lm: Tensor, camera: Tensor) -> Tensor:
            return perspective(lm, camera, intrinsics)
        cam_scale = c.scale_accel_camera  # metres per frame^2

    if codebook is not None:
        code_scale = codebook.pow(2).sum(-1).mean().clamp_min(1e-8)  # mean squared norm of an entry
        half_sq_norms = 0.5 * codebook.pow(2).sum(-1)  # (K,)
    nearest: list[Tensor] = []  # the codebook entries assigned to z, re-chosen every few steps
    if world is not None and c.w_bone > 0:  # the body's size and proportions from the metric world landmarks
        bone_target, bone_seen = track_bone_lengths(world, conf)  # (M,), (M,)
        bone_seen = bone_seen.float()

    def robust(res2: Tensor, scale: float) -> Tensor:  # squared residuals (T, L) -> confidence-weighted mean
        r = (1 + res2 / scale**2).sqrt() - 1  # pseudo-Huber: quadratic near 0, linear beyond the scale
        return (conf * r).sum() / conf.sum().clamp_min(1e-6)

    def objective(lm: Tensor, camera: Tensor, step: int) -> Tensor:
        e = c.w_2d * robust((project(lm, camera) - kp).pow(2).sum(-1), c.scale_2d)
        if world is not None and c.w_world > 0:
            centred = lm - lm[:, list(HIPS)].mean(1, keepdim=True)
            e = e + c.w_world * robust((centred - world).pow(2).sum(-1), c.scale_world)
        if world is not None and c.w_bone > 0:
            r = (bone_lengths(lm).mean(0) - bone_target) / c.scale_bone  # (M,) one body per track
            e = e + c.w_bone * (bone_seen * ((1 + r**2).sqrt() - 1)).sum() / bone_seen.sum().clamp_min(1.0)
        if T > 2 and c.w_smooth > 0 and bool(steady.any()):
            acc = (lm[2:] - 2 * lm[1:-1] + lm[:-2])[steady]  # (S, L, 3)
            cam_acc = (camera[2:] - 2 * camera[1:-1] + camera[:-2])[steady]  # (S, 3)
            e = e + c.w_smooth * (acc.pow(2).sum(-1).mean() / c.scale_accel**2
                                  + cam_acc.pow(2).sum(-1).mean() / cam_scale**2)
        if c.w_code > 0 and codebook is not None:
            flat = z.reshape(-1, z.shape[-1])  # (T*N, D)
            if step % CODE_REASSIGN_EVERY == 0 or not nearest:
                with torch.no_grad():  # the nearest entry is a choice, not a function to differentiate
                    # argmin |z - c|^2 = argmax (z.c - |c|^2 / 2): one matrix product
                    nearest[:] = [torch.addmm(half_sq_norms, flat, codebook.T, beta=-1.0).argmax(-1)]  # (T*N,)
            e = e + c.w_code * (flat - codebook[nearest[0]]).pow(2).sum(-1).mean() / code_scale
        return e + c.w_shape * shape.pow(2).sum()

    with torch.no_grad():  # "before": the decoded bodies as they are, with the transformer's own camera
        rot0 = full_rotations(init.body6d, init.orient6d)
        _, lm0 = layer.skeleton(rot0, init.shape, keypoints.new_zeros(T, 3))
        before = reprojection_error(lm0, init.camera, keypoints, c.min_confidence)
    if c.steps == 0:
        return RefineResult(init, z.detach(), before, before.clone(), [], None)
    history: list[float] = []
    opt = torch.optim.Adam([
        {"params": [z], "lr": c.lr},
        {"params": [orient], "lr": c.lr_orient},
        {"params": [shape], "lr": c.lr},
    ])
    hold = int(c.steps * c.lr_hold)  # full step size for the first steps, then a cosine to 0
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 1.0 if i < hold else 0.5 * (1 + math.cos(math.pi * (i - hold) / max(1, c.steps - hold))))
    for step in range(c.steps):
        opt.zero_grad()
        _, lm, camera = forward()
        e = objective(lm, camera, step)
        history.append(float(e.detach()))
        e.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        body6d, lm, camera = forward()
        history.append(float(objective(lm, camera, c.steps)))
        after = reprojection_error(lm, camera, keypoints, c.min_confidence, intrinsics)
        translation = None if intrinsics is None else camera.detach().clone()
        weak = camera if intrinsics is None else perspective_to_weak(camera, intrinsics)
        params = BodyParams(init.token_ids, init.confidences, body6d, orient.detach().clone(),
                            shape.detach().expand(T, -1).clone(), weak.detach().clone())
    return RefineResult(params, z.detach(), before, after, history, translation)
