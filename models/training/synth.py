"""Synthetic training and evaluation data: motions -> body model -> cameras -> noisy 33-landmark keypoints.

Shape legend: B sequences, T frames, M anatomical angles, J = 24 joints, L = 33 landmarks,
S shape coefficients, P = B * T frames flattened.

Per sequence: a motion family (or a pose sequence fitted to a real clip), a body shape
(S unit-variance PCA coefficients, clipped to +-2.5), a heading (facing direction, camera
elevation, roll) and a perspective camera (distance 2-8 m, the person off the optical axis).
Per frame: the landmarks are projected with perspective, then corrupted as a 2D detector
would: Gaussian jitter scaled to the person's size, rare outliers, whole-limb occlusions over a
stretch of frames, single-landmark dropouts, and lower confidence for landmarks on the far side
of the body. The box normalisation and the weak-perspective camera target come from
`kinemesh.models.camera`, the same code the worker runs. "World" landmarks imitate MediaPipe's:
hip-centred metres in the camera's orientation, with a compressed depth and errors of the size
measured between MediaPipe's estimates from different views of one motion (~8 cm).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from kinemesh.models.body.layer import BodyLayer
from kinemesh.models.camera import fit_weak_perspective, normalize_keypoints
from kinemesh.models.rotations import matrix_to_rot6d
from kinemesh.models.training.motion import (
    BODY_JOINTS,
    DOFS,
    MOTIONS,
    ArmRest,
    dofs_to_rotations,
    heading_matrices,
    headings,
    motion_sequence,
)

# Landmark groups a limb occlusion hides (BlazePose indices).
OCCLUSION_GROUPS = (
    (11, 13, 15, 17, 19, 21), (12, 14, 16, 18, 20, 22),  # left / right arm
    (23, 25, 27, 29, 31), (24, 26, 28, 30, 32),  # left / right leg
    (25, 26, 27, 28, 29, 30, 31, 32),  # both legs below the hips (behind a table)
    tuple(range(11)),  # the face
)
HIP_LANDMARKS = (23, 24)
FOCAL_PX = 1000.0  # the synthetic pinhole camera's focal length (principal point at the image origin)


def arm_rest(layer: BodyLayer) -> ArmRest:
    """The body model's rest arms, measured from its mean-shape rest joints."""
    eye = torch.eye(3).expand(1, layer.config.num_joints, 3, 3)
    with torch.no_grad():
        joints, _ = layer.skeleton(eye, torch.zeros(1, layer.config.num_shape), torch.zeros(1, 3))
    return ArmRest.from_joints(joints[0].numpy())


@dataclass
class SyntheticFrames:
    """P frames (sequences flattened frame by frame; `sequence` says which)."""

    rotations: Tensor  # (P, 24, 3, 3) ground-truth pose, camera-oriented root
    body6d: Tensor  # (P, 21, 6) body pose below the root (the tokenizer's input)
    orient6d: Tensor  # (P, 6) root orientation in the camera frame
    shape: Tensor  # (P, S)
    joints: Tensor  # (P, 24, 3) model-frame joints (zero translation)
    landmarks: Tensor  # (P, L, 3) model-frame landmarks (zero translation)
    keypoints: Tensor  # (P, L, 3) detector-like input: box-normalised u, v and confidence
    keypoints_clean: Tensor  # (P, L, 2) the same box, noise-free projections
    camera: Tensor  # (P, 3) weak-perspective target fitted to the noise-free projections
    world: Tensor  # (P, L, 3) MediaPipe-like world landmarks (hip-centred, noisy)
    box_half: Tensor  # (P,) box half-side in pixels (for pixel errors)
    box_center: Tensor  # (P, 2) box centre in pixels (the principal point is at 0, the focal length FOCAL_PX)
    sequence: Tensor  # (P,) int64 sequence id
    frame: Tensor  # (P,) int64 frame index within the sequence

    def __len__(self) -> int:
        return self.rotations.shape[0]

    def subset(self, index: Tensor) -> SyntheticFrames:
        return SyntheticFrames(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def generate(
    layer: BodyLayer,
    sequences: int,
    frames: int,
    seed: int,
    *,
    fps: float = 30.0,
    num_shape: int = 10,
    motions: tuple[str, ...] = MOTIONS,
    fitted: list[tuple[np.ndarray, np.ndarray]] | None = None,
    fitted_share: float = 0.15,
    noise: float = 1.0,
    chunk: int = 4096,
) -> SyntheticFrames:
    """`sequences` sequences of `frames` frames each, reproducible from `seed`.

    fitted: sequences fitted to real clips as (angles (T', M), root orientation (T', 3, 3)); a share
        `fitted_share` of the sequences are windows of these, re-headed and re-shaped at random.
    noise: scales every 2D corruption (0 = clean keypoints, for tests).
    """
    rng = np.random.default_rng(seed)
    angles = np.zeros((sequences, frames, len(DOFS)), np.float32)  # (B, T, M)
    base = np.zeros((sequences, frames, 3, 3), np.float32)  # (B, T, 3, 3) orientation under the root offsets
    head = np.zeros((sequences, frames, 3), np.float32)
    for b in range(sequences):
        if fitted and rng.uniform() < fitted_share:
            a, orient = fitted[rng.integers(len(fitted))]
            start = rng.integers(0, max(1, len(a) - frames + 1))
            idx = np.clip(np.arange(start, start + frames), 0, len(a) - 1)
            angles[b] = a[idx] + rng.normal(0, 3, (1, len(DOFS)))  # a little personal variation
            base[b] = orient[idx]
            h = headings(frames, fps, rng, turning=False)
            h[:, 1] *= 0.5  # the fitted orientation already carries the real camera's elevation
        else:
            kind = motions[rng.integers(len(motions))]
            angles[b] = motion_sequence(kind, frames, fps, rng)
            base[b] = np.eye(3, dtype=np.float32)
            h = headings(frames, fps, rng, turning=kind in ("random", "gesture", "gait"))
        head[b] = h
    shape = np.clip(rng.normal(0, 1, (sequences, num_shape)), -2.5, 2.5).astype(np.float32)
    distance = rng.uniform(2.0, 8.0, sequences).astype(np.float32)
    off_axis = rng.uniform(-0.25, 0.25, (sequences, 2)).astype(np.float32) * distance[:, None]

    P = sequences * frames
    seq_of = torch.arange(sequences).repeat_interleave(frames)  # (P,)
    heading = heading_matrices(torch.from_numpy(head.reshape(P, 3))) @ torch.from_numpy(base.reshape(P, 3, 3))
    rotations = dofs_to_rotations(torch.from_numpy(angles.reshape(P, -1)), heading, arm_rest(layer))  # (P, 24, 3, 3)
    shape_p = torch.from_numpy(shape)[seq_of]  # (P, S)
    joints, landmarks = [], []
    with torch.no_grad():
        for i in range(0, P, chunk):
            j, lm = layer.skeleton(rotations[i:i + chunk], shape_p[i:i + chunk], torch.zeros(len(rotations[i:i + chunk]), 3))
            joints.append(j)
            landmarks.append(lm)
    joints_t, lm_t = torch.cat(joints), torch.cat(landmarks)  # (P, 24, 3), (P, L, 3)

    # Perspective projection: camera at the origin looking down -Z, the pelvis placed at (ox, oy, -d).
    pelvis = joints_t[:, :1]  # (P, 1, 3)
    place = torch.from_numpy(np.concatenate([off_axis, -distance[:, None]], 1))[seq_of][:, None]  # (P, 1, 3)
    cam_pts = lm_t - pelvis + place  # (P, L, 3)
    focal = FOCAL_PX
    px = focal * cam_pts[..., 0] / -cam_pts[..., 2]
    py = -focal * cam_pts[..., 1] / -cam_pts[..., 2]
    clean_px = torch.stack([px, py], -1)  # (P, L, 2) pixels, y down

    g = torch.Generator().manual_seed(seed + 1)
    height = (clean_px[..., 1].amax(1) - clean_px[..., 1].amin(1)).clamp_min(1.0)  # (P,) person size in px
    jitter_rel = torch.from_numpy(rng.uniform(0.004, 0.02, sequences).astype(np.float32))[seq_of] * noise
    noisy = clean_px + torch.randn(P, 33, 2, generator=g) * (jitter_rel * height)[:, None, None]
    outlier = torch.rand(P, 33, generator=g) < 0.01 * noise
    noisy = noisy + outlier[..., None] * torch.randn(P, 33, 2, generator=g) * 0.08 * height[:, None, None]
    conf = 0.7 + 0.3 * torch.rand(P, 33, generator=g)  # (P, L)
    depth = cam_pts[..., 2] - place[..., 2]  # (P, L) along the optical axis from the pelvis, + = nearer
    far = depth < -0.08  # landmarks behind the body's mid-plane, seen past the body
    conf = torch.where(far, conf * (0.45 + 0.45 * torch.rand(P, 33, generator=g)), conf)
    hidden = torch.rand(P, 33, generator=g) < 0.03 * noise  # single dropouts
    # limb occlusions: per sequence, one group hidden over a random stretch
    for b in np.nonzero(rng.uniform(size=sequences) < 0.3 * noise)[0]:
        grp = list(OCCLUSION_GROUPS[rng.integers(len(OCCLUSION_GROUPS))])
        a0 = rng.integers(0, frames)
        a1 = min(frames, a0 + rng.integers(frames // 4 + 1, frames + 1))
        rows = torch.arange(b * frames + a0, b * frames + a1)
        hidden[rows[:, None], torch.tensor(grp)[None, :]] = True
    conf = torch.where(hidden, 0.3 * torch.rand(P, 33, generator=g), conf)
    noisy = torch.where(hidden[..., None], noisy + torch.randn(P, 33, 2, generator=g) * 0.1 * height[:, None, None], noisy)

    norm = normalize_keypoints(noisy, conf)
    clean_uv = (clean_px - norm.center[:, None]) / norm.half[:, None, None]  # (P, L, 2)
    camera = fit_weak_perspective(lm_t, clean_uv)  # (P, 3)

    hip = lm_t[:, list(HIP_LANDMARKS)].mean(1, keepdim=True)  # (P, 1, 3)
    # MediaPipe's world landmarks are a per-view estimate, not a measurement: the four Pose2Sim views
    # of one motion disagree with each other by ~116 mm PA-MPJPE on the limb landmarks. Imitate that:
    # compressed and per-sequence scaled depth, a per-sequence offset per landmark, per-frame jitter.
    depth = torch.from_numpy(rng.uniform(0.6, 1.0, sequences).astype(np.float32))[seq_of]  # (P,)
    scale = torch.stack([torch.ones_like(depth), torch.ones_like(depth), depth], -1)[:, None]  # (P, 1, 3)
    offset = torch.randn(sequences, 33, 3, generator=g)[seq_of] * 0.04  # (P, L, 3) systematic, metres
    world = (lm_t - hip) * scale + (offset + torch.randn(P, 33, 3, generator=g) * 0.025) * max(noise, 0.0)

    body6d = matrix_to_rot6d(rotations[:, list(BODY_JOINTS)])  # (P, 21, 6)
    return SyntheticFrames(
        rotations=rotations, body6d=body6d, orient6d=matrix_to_rot6d(rotations[:, 0]), shape=shape_p,
        joints=joints_t, landmarks=lm_t, keypoints=norm.keypoints, keypoints_clean=clean_uv, camera=camera,
        world=world, box_half=norm.half, box_center=norm.center, sequence=seq_of, frame=torch.arange(frames).repeat(sequences),
    )
