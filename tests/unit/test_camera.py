"""Person-box normalisation and the weak-perspective camera (models/camera.py)."""

from __future__ import annotations

import numpy as np
import torch

from kinemesh.models.camera import (
    BOX_MARGIN,
    fit_weak_perspective,
    mediapipe_world_to_model,
    normalize_keypoints,
    weak_perspective,
)


def test_fit_recovers_a_known_camera() -> None:
    g = torch.Generator().manual_seed(0)
    points = torch.randn(5, 33, 3, generator=g) * 0.5  # (B, L, 3)
    camera = torch.stack([torch.rand(5, generator=g) + 0.5, torch.randn(5, generator=g) * 0.2,
                          torch.randn(5, generator=g) * 0.2], -1)
    uv = weak_perspective(points, camera)
    assert torch.allclose(fit_weak_perspective(points, uv), camera, atol=1e-4)
    # depth (Z) does not move a weak-perspective projection
    shifted = points + torch.tensor([0.0, 0.0, 3.0])
    assert torch.allclose(weak_perspective(shifted, camera), uv)


def test_image_y_grows_downwards_and_x_with_the_model_x() -> None:
    cam = torch.tensor([[1.0, 0.0, 0.0]])
    up_left = torch.tensor([[[1.0, 1.0, 0.0]]])  # model +X (the person's left), +Y (up)
    u, v = weak_perspective(up_left, cam)[0, 0]
    assert u > 0 and v < 0


def test_normalisation_is_invariant_to_image_shift_and_scale() -> None:
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(4, 33, 2, generator=g) * torch.tensor([300.0, 600.0]) + 100
    conf = torch.rand(4, 33, generator=g)
    a = normalize_keypoints(xy, conf)
    b = normalize_keypoints(xy * 2.5 + torch.tensor([40.0, -70.0]), conf)
    assert torch.allclose(a.keypoints, b.keypoints, atol=1e-5)
    confident = conf >= 0.3
    inside = a.keypoints[..., :2].abs().amax(-1)[confident]
    assert (inside <= 1 / BOX_MARGIN + 1e-5).all()  # the confident landmarks fill the box up to the margin
    assert torch.equal(a.keypoints[..., 2], conf)


def test_mediapipe_world_maps_to_the_model_frame() -> None:
    # MediaPipe: y down, z away from the camera; the model: y up, z towards the camera
    mp = np.array([[0.1, -0.5, 0.2]], np.float32)  # right of the hips, above them, farther away
    out = mediapipe_world_to_model(mp)
    assert out.dtype == np.float32 and np.allclose(out, [[0.1, 0.5, -0.2]])
    assert torch.equal(mediapipe_world_to_model(torch.from_numpy(mp)), torch.from_numpy(out))
