"""NeurIK's building blocks: the exact pelvis pose from its six markers (OpenSim's Z-X-Y order) and
the residual that moves it onto OpenSim IK's pelvis, outputs inside the model's ranges whatever the
input, windows covering a track (short ones padded), a whole track solved in one batched call."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kinemesh.models.biomech.neurik import (
    NeurIK,
    NeurIKConfig,
    apply_pelvis_residual,
    in_pelvis_frame,
    marker_features,
    marker_parents,
    pelvis_coordinates,
    pelvis_pose,
    pelvis_residual,
    pelvis_rotation,
    rotvec_matrix,
    run_windows,
    solve,
    torch_window_fn,
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
    coords, pelvis, scales = net(wild)
    assert coords.shape == (3, 4, 5) and pelvis.shape == (3, 4, 6) and scales.shape == (3, 3)
    assert (coords >= lower).all() and (coords <= upper).all()
    assert (scales >= cfg.scale_min).all() and (scales <= cfg.scale_max).all()
    assert (pelvis.abs() <= net.pelvis_bound).all()  # the pelvis residual is bounded too


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


def test_pelvis_residual_round_trip() -> None:
    rng = np.random.default_rng(1)
    angles = rng.uniform(-1.2, 1.2, (5, 3))
    R = pelvis_rotation(angles)
    assert np.allclose(pelvis_coordinates(R, np.zeros((5, 3)))[:, :3], angles, atol=1e-9)  # same Z-X-Y order
    from scipy.spatial.transform import Rotation  # the hand-written numpy rotations agree with SciPy's

    assert np.allclose(R, Rotation.from_euler("ZXY", angles).as_matrix(), atol=1e-12)
    v = np.concatenate([np.zeros((1, 3)), rng.normal(0, 0.5, (4, 3))])
    assert np.allclose(rotvec_matrix(v), Rotation.from_rotvec(v).as_matrix(), atol=1e-12)
    R_fit = pelvis_rotation(angles + rng.normal(0, 0.05, (5, 3)))  # a rigid fit a few degrees off
    origin = rng.normal(0, 1, (5, 3))
    truth = np.concatenate([angles, origin + rng.normal(0, 0.01, (5, 3))], 1)
    residual = pelvis_residual(R_fit, origin, truth)
    assert np.abs(residual[:, :3]).max() < 0.3 and np.abs(residual[:, 3:]).max() < 0.05  # small, as bounded
    assert np.allclose(apply_pelvis_residual(R_fit, origin, residual), truth, atol=1e-9)


def _tiny_net(window: int = 4, markers: int = 7) -> NeurIK:
    torch.manual_seed(0)
    cfg = NeurIKConfig(markers=markers, coordinates=3, bodies=2, window=window, dim=8, depth=1, frame_dim=16,
                       time_depth=1, heads=2)
    return NeurIK(cfg, torch.zeros(3), torch.ones(3)).eval()


def test_run_windows_pads_short_tracks_and_averages_overlaps() -> None:
    net = _tiny_net()
    run = torch_window_fn(net)
    calls = []

    def counted(x):
        calls.append(x.shape)
        return run(x)

    feats = np.random.default_rng(2).normal(0, 0.2, (10, 7, 4)).astype(np.float32)
    coords, pelvis = run_windows(counted, feats, 4)
    assert coords.shape == (10, 3) and pelvis.shape == (10, 6) and len(calls) == 1  # one batched call
    first, _ = run(feats[None, :4])  # a frame only the first window covers gets that window's output
    assert np.allclose(coords[0], first[0, 0], atol=1e-6)
    short, _ = run_windows(run, feats[:2], 4)  # shorter than a window: padded, then cropped
    assert short.shape == (2, 3) and np.isfinite(short).all()


def test_solve_gives_pelvis_coordinates_of_the_fit_and_joint_coordinates() -> None:
    rng = np.random.default_rng(3)
    local = rng.normal(0, 0.1, (6, 3))
    truth = np.array([[0.2, -0.1, 0.4, 0.5, 0.9, -0.3]] * 6)
    R = pelvis_rotation(truth[:, :3])
    other = rng.normal(0, 0.3, (6, 1, 3))
    markers = np.concatenate([np.einsum("tij,pj->tpi", R, local) + truth[:, None, 3:], other], 1)  # (T, 7, 3)
    net = _tiny_net()
    with torch.no_grad():
        net.pelvis_head.weight.zero_()
        net.pelvis_head.bias.zero_()  # no residual: the pelvis is exactly the rigid fit
    pelvis, joints = solve(torch_window_fn(net), markers, list(range(6)), local, 4)
    assert np.allclose(pelvis, truth, atol=1e-6) and joints.shape == (6, 3)
    with pytest.raises(ValueError, match="pelvis markers"):  # a hidden pelvis marker cannot be solved
        bad = markers.copy()
        bad[2, 0] = np.nan
        solve(torch_window_fn(net), bad, list(range(6)), local, 4)


def test_relative_positions_use_each_markers_neighbour_up_the_limb() -> None:
    names = ["r.ASIS_study", "r_knee_study", "r_mknee_study", "RHJC_study"]
    assert marker_parents(names) == (0, 3, 1, 3)  # knee <- hip centre, medial knee <- lateral knee, others self
    torch.manual_seed(0)
    with_parents = NeurIK(NeurIKConfig(markers=4, coordinates=3, bodies=2, window=4, dim=8, depth=1, frame_dim=16,
                                       time_depth=1, heads=2, parents=marker_parents(names)),
                          torch.zeros(3), torch.ones(3))
    assert with_parents.parents.tolist() == [0, 3, 1, 3]
    x = torch.rand(1, 4, 4, 4)
    x[..., 3] = 1.0
    moved = x.clone()
    moved[:, :, 3, :3] += 0.1  # the hip centre moves: the knee's relative position changes with it
    assert not torch.allclose(with_parents(x)[0], with_parents(moved)[0])
