"""Scaling the OpenSim model to a subject (OpenSim's ScaleTool with the study-marker measurement
set), and inverse kinematics of the default body model's virtual markers through the scaled model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kinemesh.models.assets.opensim_models import ensure_opensim_model
from kinemesh.models.biomech import OsimModel, study_markers
from kinemesh.models.biomech.scaling import NEUTRAL, scale_model
from kinemesh.models.biomech.virtual_markers import rigid_positions, to_opensim_frame
from kinemesh.models.body.assets import load_body_model
from kinemesh.models.training.motion import DOF_INDEX, dofs_to_rotations, motion_sequence
from kinemesh.models.training.synth import arm_rest

STANDING = np.array([0.0, 0.9, 0.0])  # pelvis height above OpenSim's ground, metres


@pytest.fixture(scope="module")
def model(clips: dict[str, Path], model_dir: Path) -> OsimModel:
    return OsimModel(*ensure_opensim_model(model_dir / "opensim", clips["single_cam01"].parents[1]))


def test_a_smaller_subject_scales_every_body_by_its_size(model: OsimModel, tmp_path: Path) -> None:
    pos = model.marker_positions(model.default_values()[None])[0]
    origin = pos[model.marker_names.index("r.ASIS_study")]
    res = scale_model(model, (pos - origin) * 0.85 + origin, model.marker_names, tmp_path / "scaled.osim")
    assert res.model_path.is_file() and res.static_rms_m < 0.001
    assert {"pelvis", "femur_r", "tibia_l", "torso", "humerus_r", "radius_l"} <= set(res.scale_factors)
    assert all(f == pytest.approx(0.85, abs=0.01) for f in res.scale_factors.values()), res.scale_factors


def test_virtual_markers_of_a_squat_track_through_the_scaled_model(model: OsimModel, body_file: Path,
                                                                  tmp_path: Path) -> None:
    layer = load_body_model(body_file, num_shape=10)
    names = layer.config.joint_names
    rest = layer(torch.eye(3).expand(1, 24, 3, 3), torch.zeros(1, 10), torch.zeros(1, 3))
    markers = study_markers(rest.vertices[0].numpy(), rest.joints[0].numpy(), names)
    labels, static = markers.with_joints(rest.vertices[0].numpy(), rest.joints[0].numpy(), names)
    scaled = scale_model(model, to_opensim_frame(static) + STANDING, labels, tmp_path / "subject.osim")
    assert 0.7 < scaled.scale_factors["femur_r"] < 1.1  # Anny's mean body is a small adult
    angles = motion_sequence("squat", 45, 30.0, np.random.default_rng(0))
    rotations = dofs_to_rotations(torch.from_numpy(angles).float(), None, arm_rest(layer))
    _, track = rigid_positions(markers, layer, rotations, np.zeros(10), np.zeros((45, 3)))
    subject = OsimModel(scaled.model_path)
    still = subject.inverse_kinematics(np.repeat(to_opensim_frame(static)[None] + STANDING, 3, 0), labels, fps=30.0)
    legs = [subject.coordinate_names.index(c) for c in NEUTRAL]  # (the rest arms hang in an A, not at the sides)
    assert np.abs(np.degrees(still.values[:, legs])).max() < 1.0  # the rest pose is the zero pose
    ik = subject.inverse_kinematics(to_opensim_frame(track) + STANDING, labels, fps=30.0)
    assert float(np.sqrt(np.mean(ik.marker_rms_m**2))) < 0.02  # mesh and OpenSim skeletons differ a little
    # OpenSim's knee and hip flexion follow the body model's (same sign: flexion positive). The motion
    # generator's zero pose is not quite the rest pose (pelvis 7 degrees forward), hence a few degrees.
    for coord, dof in (("knee_angle_r", "knee_flex_r"), ("knee_angle_l", "knee_flex_l"), ("hip_flexion_r", "hip_flex_r"),
                       ("hip_flexion_l", "hip_flex_l")):
        opensim_deg = np.degrees(ik.values[:, subject.coordinate_names.index(coord)])
        truth_deg = angles[:, DOF_INDEX[dof]]
        assert np.ptp(truth_deg) > 30  # the squat moves it
        assert np.corrcoef(opensim_deg, truth_deg)[0, 1] > 0.98, coord
        assert np.abs(opensim_deg - truth_deg).mean() < 8, (coord, np.abs(opensim_deg - truth_deg).mean())
    lo = np.array([c.range_min for c in subject.coordinates]) - 1e-6
    hi = np.array([c.range_max for c in subject.coordinates]) + 1e-6
    assert ((ik.values >= lo) & (ik.values <= hi)).all()
