"""NeurIK's building blocks: the exact pelvis pose from its six markers (OpenSim's Z-X-Y order),
outputs inside the model's ranges whatever the input, windows covering a track."""

from __future__ import annotations

import numpy as np
import torch

from kinemesh.models.biomech.neurik import (
    NeurIK,
    NeurIKConfig,
    in_pelvis_frame,
    marker_features,
    pelvis_coordinates,
    pelvis_pose,
    windows,
)


def _rz(a):
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def _rx(a):
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def _ry(a):
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def test_pelvis_pose_and_coordinates_are_exact() -> None:
    rng = np.random.default_rng(0)
    local = rng.normal(0, 0.1, (6, 3))  # pelvis markers in the pelvis frame
    truth = np.array([[0.3, -0.2, 2.5, 0.4, 0.9, -1.2], [-0.5, 0.1, -2.9, -1.0, 1.1, 0.3]])  # tilt list rot tx ty tz
    R = np.stack([_rz(t) @ _rx(li) @ _ry(r) for t, li, r in truth[:, :3]])
    observed = np.einsum("tij,pj->tpi", R, local) + truth[:, None, 3:]
    R_fit, origin = pelvis_pose(observed, local)
    assert np.allclose(R_fit, R, atol=1e-9) and np.allclose(pelvis_coordinates(R_fit, origin), truth, atol=1e-9)
    # in the pelvis frame the markers are where the model has them, whatever the pose
    assert np.allclose(in_pelvis_frame(observed, R_fit, origin), local[None], atol=1e-9)


def test_outputs_stay_inside_the_ranges() -> None:
    torch.manual_seed(0)
    cfg = NeurIKConfig(markers=7, coordinates=5, bodies=3, window=4, dim=16, depth=1, heads=2)
    lower, upper = torch.tensor([-1.0, 0.0, -0.5, 0.2, -2.0]), torch.tensor([1.0, 2.5, 0.5, 0.3, 0.0])
    net = NeurIK(cfg, lower, upper)
    wild = torch.randn(3, 4, 7, 4) * 1000.0  # far outside anything seen in training
    coords, scales = net(wild)
    assert coords.shape == (3, 4, 5) and scales.shape == (3, 3)
    assert (coords >= lower).all() and (coords <= upper).all()
    assert (scales >= cfg.scale_min).all() and (scales <= cfg.scale_max).all()


def test_features_mark_unseen_markers_and_windows_cover_the_track() -> None:
    local = np.ones((2, 3, 3))
    local[1, 2] = np.nan
    f = marker_features(local)
    assert f.shape == (2, 3, 4) and f[1, 2].tolist() == [0, 0, 0, 0] and f[0, 0, 3] == 1
    for frames in (5, 16, 17, 40):
        cover = np.zeros(frames, int)
        for sl in windows(frames, 16):
            assert sl.stop - sl.start == min(16, frames)
            cover[sl] += 1
        assert (cover > 0).all()
