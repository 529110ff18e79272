"""The kinematics stage with NeurIK served from the default bundle through ONNX Runtime: it agrees
with OpenSim IK on a body it has never seen (closer still after the marker fit, which explains the
markers at least as well as IK does), the network's output stays inside the model's ranges whatever
the markers, its ONNX graph matches the committed PyTorch weights, and a worker without it fails with
a typed error while `ik=opensim` still works."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kinemesh.models.backends.ort import OrtBackend
from kinemesh.models.biomech.neurik import PELVIS_MARKERS, UNOBSERVED, angle_rmse_deg, load_neurik
from kinemesh.models.training.motion import dofs_to_rotations, motion_sequence
from kinemesh.models.training.synth import arm_rest
from kinemesh.services.common.errors import ModelUnavailable
from kinemesh.services.worker.stages.base import NullContext
from kinemesh.services.worker.stages.body import BodyResult, BodyStage, TrackBodies
from kinemesh.services.worker.stages.kinematics import FIT_ITERATIONS, KinematicsStage

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def body(model_dir: Path) -> BodyStage:
    return BodyStage(model_dir / "bundle" / "default")


@pytest.fixture(scope="module")
def stage(model_dir: Path, body: BodyStage) -> KinematicsStage:
    return KinematicsStage(model_dir, body.layer, body.bundle, body.backend)


def _bodies(layer, kind: str, frames: int = 90, seed: int = 7) -> BodyResult:
    """A synthetic person doing `kind` (a shape and a motion no training set drew), 2.5 m from the camera."""
    rng = np.random.default_rng(seed)
    rot = dofs_to_rotations(torch.from_numpy(motion_sequence(kind, frames, 30.0, rng)).float(), None,
                            arm_rest(layer)).numpy()
    shape = np.clip(rng.normal(size=layer.config.num_shape), -1.5, 1.5).astype(np.float32)
    zeros = np.zeros(frames, np.float32)
    track = TrackBodies(track_id=0, frame_index=np.arange(frames), timestamps_s=np.arange(frames) / 30.0,
                        rotations=rot, shape=shape, camera=np.zeros((frames, 3), np.float32),
                        translation=np.tile([0.0, 0.0, -2.5], (frames, 1)).astype(np.float32),
                        joints=np.zeros((frames, 24, 3), np.float32), reproj_before_px=zeros, reproj_after_px=zeros,
                        bbox_height_px=zeros + 500)
    return BodyResult([track], 1920.0, {})


@pytest.mark.parametrize("kind", ["gait", "squat"])
def test_neurik_agrees_with_opensim_ik(stage: KinematicsStage, kind: str) -> None:
    bodies = _bodies(stage.layer, kind)
    nk = stage.run(bodies, 30.0, NullContext(), ik="neurik")
    ik = stage.run(bodies, 30.0, NullContext(), ik="opensim")
    assert (nk.method, ik.method) == ("neurik", "opensim_ik")
    assert (nk.fit_iterations, ik.fit_iterations) == (FIT_ITERATIONS, 0)
    names = nk.coordinate_names
    judged = [i for i, n in enumerate(names) if nk.rotational[i] and n not in UNOBSERVED]
    rmse = dict(zip([names[i] for i in judged], angle_rmse_deg(nk.tracks[0].values[:, judged],
                                                               ik.tracks[0].values[:, judged], wrap=True), strict=True))
    assert np.mean(list(rmse.values())) < 1.0, rmse  # the network then the marker fit (the network alone: 0.8-1.2)
    for joint in ("hip_flexion_r", "hip_flexion_l", "knee_angle_r", "knee_angle_l"):
        assert rmse[joint] < 1.0, (joint, rmse[joint])
    for res in (nk, ik):  # each pose written one way through time: no wrap or Euler-branch jump survives
        steps = np.abs(np.diff(res.tracks[0].values[:, nk.rotational], axis=0))
        assert np.degrees(steps).max() < 30.0, res.method
    fixed = [names.index(n) for n in nk.fixed]
    assert set(nk.fixed) == set(UNOBSERVED) and np.abs(nk.tracks[0].values[:, fixed]).max() < 1e-6
    assert np.sqrt(np.mean(nk.tracks[0].marker_error_m ** 2)) < 0.04  # the coordinates explain the markers
    assert set(nk.tracks[0].artifacts) == {"mot", "trc", "osim", "csv", "png"}


def test_marker_fit_lands_on_opensim_ik(stage: KinematicsStage, tmp_path: Path) -> None:
    """From the network's output, the least-squares fit reaches OpenSim IK's solution on a gait it has
    never seen (legs and trunk within a degree) with a marker error no larger than IK's, frame by frame."""
    track = _bodies(stage.layer, "gait", frames=40, seed=11).tracks[0]
    names, markers, scaled = stage.subject(track, tmp_path)
    ik = scaled.model.inverse_kinematics(markers, names, 30.0)
    net, net_err = stage.fit(scaled.model, markers, stage.solve_neurik(scaled.model, markers), iterations=0)
    fit, fit_err = stage.fit(scaled.model, markers, net, iterations=10)
    m = stage.model
    legs = [i for i, n in enumerate(m.coordinate_names) if m.rotational[i] and n not in UNOBSERVED
            and not n.startswith(("arm_", "elbow_", "pro_sup"))]
    before = angle_rmse_deg(net[:, legs], ik.values[:, legs], wrap=True)
    after = angle_rmse_deg(fit[:, legs], ik.values[:, legs], wrap=True)
    assert after.max() < 1.0 and after.mean() < before.mean(), (after, before)
    assert (fit_err <= ik.marker_rms_m + 1e-4).all()  # IK's own objective: the fit is as good or better
    assert (fit_err <= net_err + 1e-9).all()
    clamped = m.clamped
    lo, hi = m.ranges[clamped].T
    assert ((fit[:, clamped] >= lo - 1e-9) & (fit[:, clamped] <= hi + 1e-9)).all()  # IK's bounds hold


def test_neurik_output_stays_inside_the_ranges_for_any_markers(stage: KinematicsStage) -> None:
    m = stage.model
    rng = np.random.default_rng(0)
    pelvis = [stage.marker_names.index(n) for n in PELVIS_MARKERS]
    rest = m.marker_positions(m.default_values()[None])[0]
    markers = rng.normal(0.0, 0.6, (40, len(stage.marker_names), 3)) + [0.0, 0.9, 0.0]  # a limb salad
    markers[:, pelvis] = rest[[m.marker_names.index(n) for n in PELVIS_MARKERS]]
    values = stage.solve_neurik(m, markers)  # the network's own output
    joints = [i for i, n in enumerate(m.coordinate_names) if not n.startswith("pelvis_")]
    lo, hi = m.ranges[joints].T
    assert ((values[:, joints] >= lo - 1e-6) & (values[:, joints] <= hi + 1e-6)).all()
    # the pelvis markers are at the model's rest: the rigid fit is the zero pose, and the residual the
    # network adds to it is bounded (0.25 rad per rotation-vector component)
    assert np.abs(values[:, :3]).max() < 0.45


def test_onnx_graph_matches_the_committed_weights(model_dir: Path) -> None:
    bundle_graph = model_dir / "bundle" / "default" / "neurik" / "1" / "model.onnx"
    backend = OrtBackend(device="cpu")
    backend.load("neurik", bundle_graph)
    net, info = load_neurik(REPO / "models" / "weights" / "neurik" / "neurik.pt")
    c = net.cfg
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 0.4, (3, c.window, c.markers, 3)), rng.uniform(size=(3, c.window, c.markers, 1))
                        > 0.1], -1).astype(np.float32)
    got = backend.run("neurik", {"markers": x})
    with torch.no_grad():
        want = dict(zip(("coordinates", "pelvis_residual", "scales"), net(torch.from_numpy(x)), strict=True))
    for name, value in want.items():
        assert np.abs(got[name] - value.numpy()).max() <= 1e-4, name
    assert len(info["coordinate_names"]) == c.coordinates


def test_without_neurik_the_default_is_a_typed_error(model_dir: Path, body: BodyStage) -> None:
    bare = KinematicsStage(model_dir, body.layer)  # no bundle graph to serve NeurIK from
    bodies = _bodies(body.layer, "gait", frames=20)
    with pytest.raises(ModelUnavailable, match="ik=opensim"):
        bare.run(bodies, 30.0, NullContext(), ik="neurik")
    assert bare.run(bodies, 30.0, NullContext(), ik="opensim").tracks[0].values.shape == (20, 40)
