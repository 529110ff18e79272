"""Person-box normalisation, the weak-perspective and the pinhole camera (models/camera.py)."""

from __future__ import annotations

import numpy as np
import torch

from kinemesh.models.camera import (
    BOX_MARGIN,
    box_intrinsics,
    fit_perspective_translation,
    fit_weak_perspective,
    mediapipe_world_to_model,
    normalize_keypoints,
    perspective,
    perspective_to_weak,
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


def _pinhole_pixels(points: torch.Tensor, translation: torch.Tensor, focal: float, principal: torch.Tensor):
    """Reference projection in pixels, written out: camera at the origin looking down -Z, y down."""
    cam = points + translation[:, None]
    depth = -cam[..., 2]
    return torch.stack([focal * cam[..., 0] / depth + principal[0], -focal * cam[..., 1] / depth + principal[1]], -1)


def _scene(seed: int):
    g = torch.Generator().manual_seed(seed)
    points = torch.randn(6, 33, 3, generator=g) * 0.4  # a body-sized cloud
    translation = torch.stack([torch.randn(6, generator=g) * 0.5, torch.randn(6, generator=g) * 0.5,
                               -(2.0 + 4.0 * torch.rand(6, generator=g))], -1)  # 2-6 m in front
    principal = torch.tensor([540.0, 960.0])
    px = _pinhole_pixels(points, translation, 1500.0, principal)
    norm = normalize_keypoints(px, torch.ones(6, 33))
    return points, translation, principal, px, norm


def test_perspective_in_box_units_is_the_pinhole_projection_normalised() -> None:
    points, translation, principal, px, norm = _scene(3)
    intr = box_intrinsics(1500.0, principal, norm.center, norm.half)
    assert torch.allclose(perspective(points, translation, intr), norm.keypoints[..., :2], atol=1e-5)


def test_perspective_translation_fit_recovers_the_placement() -> None:
    points, translation, principal, _, norm = _scene(4)
    intr = box_intrinsics(1500.0, principal, norm.center, norm.half)
    fitted = fit_perspective_translation(points, norm.keypoints[..., :2], intr)
    assert torch.allclose(fitted, translation, atol=1e-3)
    # unconfident landmarks do not count: corrupt some and give them zero weight
    uv = norm.keypoints[..., :2].clone()
    uv[:, :5] += 0.5
    weights = torch.ones(6, 33)
    weights[:, :5] = 0.0
    assert torch.allclose(fit_perspective_translation(points, uv, intr, weights), translation, atol=1e-3)
    # and the weak-perspective fit cannot explain a near body's projection as well
    weak = fit_weak_perspective(points, norm.keypoints[..., :2])
    weak_err = (weak_perspective(points, weak) - norm.keypoints[..., :2]).norm(dim=-1).mean()
    persp_err = (perspective(points, fitted, intr) - norm.keypoints[..., :2]).norm(dim=-1).mean()
    assert persp_err < 1e-4 < weak_err


def test_perspective_to_weak_agrees_at_the_model_origin() -> None:
    points, translation, principal, _, norm = _scene(5)
    intr = box_intrinsics(1500.0, principal, norm.center, norm.half)
    weak = perspective_to_weak(translation, intr)
    origin = torch.zeros(6, 1, 3)
    assert torch.allclose(weak_perspective(origin, weak), perspective(origin, translation, intr), atol=1e-5)
    assert torch.allclose(weak[:, 0], intr[:, 0] / -translation[:, 2])  # s = f / depth


def test_person_crops_sample_the_box_at_the_crop_aspect() -> None:
    """A frame whose red channel is x and green channel is y: each crop pixel holds where it was taken
    from. The crop spans the box's height and 0.75 of it across, about the box centre; outside the
    frame it is zero."""
    from kinemesh.models.camera import person_crops

    H, W = 120, 160
    y, x = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    frame = np.stack([x * 255 // (W - 1), y * 255 // (H - 1), np.full_like(x, 255)], -1).astype(np.uint8)
    images = torch.from_numpy(frame)[None].expand(2, -1, -1, -1)
    center = torch.tensor([[80.0, 60.0], [150.0, 60.0]])  # the second box runs off the right edge
    half = torch.tensor([40.0, 40.0])
    crops = person_crops(images, center, half, size=(32, 24))  # (2, 3, 32, 24)
    assert crops.shape == (2, 3, 32, 24) and crops.dtype == torch.float32
    rows = (torch.arange(32) + 0.5) / 32 * 2 - 1
    cols = (torch.arange(24) + 0.5) / 24 * 2 - 1
    want_y = 60 + 40 * rows  # pixels
    want_x = 80 + 40 * 0.75 * cols
    got_x = crops[0, 0, 16] * 255 / (255 / (W - 1))  # red back to x along a middle row
    got_y = crops[0, 1, :, 12] * 255 / (255 / (H - 1))
    # pixel k covers [k, k + 1): the sample at continuous x reads pixel x - 0.5 (bilinear), 1 px of quantisation
    assert torch.allclose(got_x, want_x - 0.5, atol=1.0), (got_x, want_x)
    assert torch.allclose(got_y, want_y - 0.5, atol=1.0), (got_y, want_y)
    right = 150 + 40 * 0.75 * cols  # second crop's columns in pixels; past x = 160 there is no frame
    outside = right > W + 1
    assert outside.any() and (crops[1, 2][:, outside] == 0).all()
    assert (crops[1, 2][:, right < W - 1] > 0.99).all()


def test_rotation_fit_recovers_a_turn_from_its_projection() -> None:
    from kinemesh.models.camera import fit_rotation_to_keypoints
    from kinemesh.models.hands.synth import random_rotations

    g = torch.Generator().manual_seed(0)
    points = torch.randn(4, 21, 3, generator=g) * 0.05  # a non-planar cloud
    turn = random_rotations(4, g)
    seen = points @ turn.transpose(1, 2) * 7.0 + torch.tensor([0.3, -0.2, 5.0])  # scaled and shifted
    uv = torch.stack([seen[..., 0], -seen[..., 1]], -1)  # box units, y down
    fitted = fit_rotation_to_keypoints(points, uv)
    assert torch.allclose(fitted, turn, atol=1e-4)
    assert torch.allclose(torch.linalg.det(fitted), torch.ones(4), atol=1e-5)
