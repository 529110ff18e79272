"""Rotation conversions: round trips, orthonormality, arbitrary leading batch shapes."""

from __future__ import annotations

import math

import pytest
import torch

from kinemesh.models import rotations as R


def _random_axis_angle(*shape: int, max_angle: float = math.pi - 1e-3) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    axis = torch.nn.functional.normalize(torch.randn(*shape, 3, generator=g, dtype=torch.float64), dim=-1)
    angle = torch.rand(*shape, 1, generator=g, dtype=torch.float64) * max_angle
    return axis * angle


@pytest.mark.parametrize("shape", [(7,), (2, 5), (2, 3, 4)])
def test_rot6d_matrix_round_trip_and_orthonormal(shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape, 6, dtype=torch.float64)
    m = R.rot6d_to_matrix(x)
    assert m.shape == (*shape, 3, 3)
    eye = torch.eye(3, dtype=torch.float64).expand_as(m)
    torch.testing.assert_close(m.transpose(-1, -2) @ m, eye)
    torch.testing.assert_close(torch.linalg.det(m), torch.ones(shape, dtype=torch.float64))
    # a valid rotation survives matrix -> 6D -> matrix exactly
    torch.testing.assert_close(R.rot6d_to_matrix(R.matrix_to_rot6d(m)), m)
    # Gram-Schmidt keeps the first column's direction
    torch.testing.assert_close(m[..., :, 0], torch.nn.functional.normalize(x[..., :3], dim=-1))


@pytest.mark.parametrize("shape", [(9,), (4, 6)])
def test_axis_angle_matrix_round_trip(shape: tuple[int, ...]) -> None:
    aa = _random_axis_angle(*shape)
    m = R.axis_angle_to_matrix(aa)
    assert m.shape == (*shape, 3, 3)
    torch.testing.assert_close(m.transpose(-1, -2) @ m, torch.eye(3, dtype=torch.float64).expand_as(m))
    torch.testing.assert_close(R.matrix_to_axis_angle(m), aa)
    torch.testing.assert_close(R.rot6d_to_axis_angle(R.axis_angle_to_rot6d(aa)), aa)


def test_axis_angle_matches_known_rotation() -> None:
    # 90 degrees about z maps x to y
    m = R.axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2]))
    torch.testing.assert_close(m @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]))


def test_small_and_near_pi_angles() -> None:
    tiny = torch.tensor([[1e-9, -2e-9, 3e-9], [0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(R.matrix_to_axis_angle(R.axis_angle_to_matrix(tiny)), tiny, atol=1e-12, rtol=0)
    near_pi = _random_axis_angle(16, max_angle=math.pi - 1e-6)
    near_pi = near_pi / near_pi.norm(dim=-1, keepdim=True) * (math.pi - 1e-4)
    back = R.matrix_to_axis_angle(R.axis_angle_to_matrix(near_pi))
    torch.testing.assert_close(R.axis_angle_to_matrix(back), R.axis_angle_to_matrix(near_pi))


def test_quaternion_round_trip() -> None:
    m = R.axis_angle_to_matrix(_random_axis_angle(32))
    q = R.matrix_to_quaternion(m)
    assert q.shape == (32, 4) and bool((q[:, 0] >= 0).all())
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(32, dtype=torch.float64))
    torch.testing.assert_close(R.quaternion_to_matrix(q), m)


def test_gradients_finite_at_identity() -> None:
    aa = torch.zeros(3, 3, requires_grad=True)
    R.axis_angle_to_matrix(aa).sum().backward()
    assert torch.isfinite(aa.grad).all()
    x = torch.tensor([[1.0, 0, 0, 0, 1, 0]], requires_grad=True)
    R.rot6d_to_matrix(x).sum().backward()
    assert torch.isfinite(x.grad).all()
