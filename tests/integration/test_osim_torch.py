"""The OpenSim model's forward kinematics in PyTorch against OpenSim's own, on the generic model and
on a model scaled to a subject (whose knee splines the scale tool wraps in multipliers), and its
marker Jacobian against finite differences; the marker fit recovers a pose from its markers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kinemesh.models.assets.opensim_models import MARKERS_FILE, MODEL_FILE
from kinemesh.models.biomech.neurik import UNOBSERVED
from kinemesh.models.biomech.opensim_model import OsimModel
from kinemesh.models.biomech.osim_torch import TorchKinematics, fit_markers, marker_rms
from kinemesh.models.biomech.scaling import scale_model


@pytest.fixture(scope="module")
def generic(model_dir: Path) -> OsimModel:
    return OsimModel(model_dir / "opensim" / MODEL_FILE, model_dir / "opensim" / MARKERS_FILE)


@pytest.fixture(scope="module")
def scaled(generic: OsimModel, tmp_path_factory) -> OsimModel:
    """The generic model scaled to markers of a bigger person (10 % taller, wider hips)."""
    names = generic.marker_names
    rest = generic.marker_positions(generic.default_values()[None])[0]
    static = rest * np.array([1.0, 1.1, 1.0]) + np.where(np.array(["ASIS" in n for n in names])[:, None],
                                                         [0.0, 0.0, 0.01], 0.0) * np.sign(rest[:, 2:3])
    return scale_model(generic, static, names, tmp_path_factory.mktemp("scaled") / "subject.osim").model


def _poses(model: OsimModel, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lo, hi = model.ranges.T
    q = rng.uniform(lo, hi, (n, len(lo)))
    trans = ~model.rotational
    q[:, trans] = rng.normal(0.0, 0.5, (n, int(trans.sum())))
    q[0] = model.default_values()
    return q


@pytest.mark.parametrize("which", ["generic", "scaled"])
def test_forward_kinematics_matches_opensim(which: str, request) -> None:
    model: OsimModel = request.getfixturevalue(which)
    fk = TorchKinematics(model, model.marker_names)
    q = _poses(model, 25, seed=3)
    got = fk.markers(torch.from_numpy(q)).numpy()
    want = model.marker_positions(q)
    assert np.abs(got - want).max() < 1e-6  # metres


def test_euler_triples_are_the_three_angle_joints_and_their_alternates_change_nothing(scaled: OsimModel) -> None:
    from kinemesh.models.biomech.signal import alternate_euler

    fk = TorchKinematics(scaled, scaled.marker_names)
    names = scaled.coordinate_names
    triples = {tuple(names[i] for i in t) for t in fk.euler_triples()}
    assert {("arm_flex_r", "arm_add_r", "arm_rot_r"), ("arm_flex_l", "arm_add_l", "arm_rot_l"),
            ("pelvis_tilt", "pelvis_list", "pelvis_rotation"), ("hip_flexion_l", "hip_adduction_l",
                                                                 "hip_rotation_l")} <= triples
    assert not any("knee_angle_r" in t or "elbow_flex_r" in t for t in triples)  # one-coordinate joints
    q = _poses(scaled, 10, seed=7)
    for t in fk.euler_triples():
        other = q.copy()
        other[:, list(t)] = alternate_euler(q[:, list(t)])
        assert np.abs(other[:, list(t)] - q[:, list(t)]).max() > 1.0  # really other angles
        moved = fk.markers(torch.from_numpy(other)) - fk.markers(torch.from_numpy(q))
        assert moved.abs().max() < 1e-9  # the same pose


def test_jacobian_matches_finite_differences(scaled: OsimModel) -> None:
    fk = TorchKinematics(scaled, scaled.marker_names)
    q = torch.from_numpy(_poses(scaled, 6, seed=4))
    x, jac = fk.markers_jacobian(q)
    assert torch.allclose(x, fk.markers(q))
    h = 1e-6
    eye = torch.eye(q.shape[1], dtype=q.dtype)
    fd = torch.stack([(fk.markers(q + h * eye[c]) - fk.markers(q - h * eye[c])) / (2 * h) for c in range(q.shape[1])], -1)
    assert (jac - fd).abs().max() < 1e-6


def test_marker_fit_recovers_a_pose_from_a_nearby_start(scaled: OsimModel) -> None:
    """Markers of known poses (with some hidden): a fit started 10 degrees away returns to them."""
    fk = TorchKinematics(scaled, scaled.marker_names)
    rng = np.random.default_rng(5)
    lo, hi = scaled.ranges.T
    truth = scaled.default_values()[None] + rng.uniform(-0.5, 0.5, (12, len(lo))) * (hi - lo) * 0.3
    truth = np.clip(truth, lo, hi)
    free = np.array([n not in UNOBSERVED for n in scaled.coordinate_names])
    truth[:, ~free] = scaled.default_values()[~free]
    markers = scaled.marker_positions(truth)
    markers[3, :5] = np.nan  # hidden markers are left out of the objective
    start = truth.copy()
    start[:, free & scaled.rotational] += np.radians(10.0) * rng.choice([-1.0, 1.0], (12, int((free & scaled.rotational).sum())))
    before = marker_rms(fk, start, markers)
    values, rms = fit_markers(fk, markers, start, lo - 1.0, hi + 1.0, free, iterations=15)
    assert (rms < 5e-4).all() and (before > 0.01).all()  # from centimetres to under half a millimetre
    seen = np.arange(12) != 3
    assert np.abs(values[seen][:, free] - truth[seen][:, free]).max() < 1e-3  # the very pose, not another
    assert np.allclose(rms, marker_rms(fk, values, markers))
    assert np.abs(values[:, ~free] - truth[:, ~free]).max() == 0.0  # fixed coordinates do not move
    # frames are independent: fitted in chunks of 5, or in reverse order (arrays viewed backwards,
    # as a zero-phase filter returns them), they come out the same
    chunked, _ = fit_markers(fk, markers, start, lo - 1.0, hi + 1.0, free, iterations=15, chunk=5)
    assert np.allclose(chunked, values, atol=1e-9)
    backwards, _ = fit_markers(fk, markers[::-1], start[::-1], lo - 1.0, hi + 1.0, free, iterations=15)
    assert np.allclose(backwards[::-1], values, atol=1e-9)
    # a frame with no marker seen is not a perfect fit but an unknown one
    hidden = markers.copy()
    hidden[0] = np.nan
    assert np.isnan(fit_markers(fk, hidden, start, lo - 1.0, hi + 1.0, free, iterations=2)[1][0])


def test_marker_fit_holds_bounds_as_fixed_coordinates(scaled: OsimModel) -> None:
    """A coordinate whose upper (knee) or lower (hip) bound falls short of the truth ends at that
    bound, and the rest of the pose is what a fit with it fixed there gives: the bound holds the
    coordinate without bending the others' solution."""
    fk = TorchKinematics(scaled, scaled.marker_names)
    rng = np.random.default_rng(6)
    lo, hi = scaled.ranges.T
    free = np.array([n not in UNOBSERVED for n in scaled.coordinate_names])
    truth = scaled.default_values()[None] + rng.uniform(-0.5, 0.5, (8, len(lo))) * (hi - lo) * 0.3
    truth = np.clip(truth, lo, hi)
    truth[:, ~free] = scaled.default_values()[~free]
    markers = scaled.marker_positions(truth)
    knee, hip = (scaled.coordinate_names.index(n) for n in ("knee_angle_r", "hip_flexion_l"))
    truth[:, knee] = np.clip(truth[:, knee], 0.6, None)
    markers = scaled.marker_positions(truth)
    lower, upper = lo - 1.0, hi + 1.0
    upper[knee] = truth[:, knee].min() - 0.2
    lower[hip] = truth[:, hip].max() + 0.2
    start = np.clip(truth + rng.normal(0.0, 0.05, truth.shape) * free, lower, upper)
    values, rms = fit_markers(fk, markers, start, lower, upper, free, iterations=30)
    assert np.allclose(values[:, knee], upper[knee]) and np.allclose(values[:, hip], lower[hip])
    pinned = free.copy()
    pinned[[knee, hip]] = False
    held = start.copy()
    held[:, knee], held[:, hip] = upper[knee], lower[hip]
    expected, expected_rms = fit_markers(fk, markers, held, lower, upper, pinned, iterations=30)
    assert np.allclose(rms, expected_rms, rtol=1e-4)  # the same pose (a shoulder may take the other Euler branch)
    placed = fk.markers(torch.from_numpy(values)) - fk.markers(torch.from_numpy(expected))
    assert placed.abs().max() < 1e-5
    assert (rms > 1e-3).all()  # the markers could not be met: the bounds really bit
