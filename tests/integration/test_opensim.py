"""The biomechanical model through the real OpenSim: names, units and ranges of its coordinates;
forward kinematics of its anatomical markers; OpenSim's inverse kinematics recovers a known motion
(marker error <= 1 cm RMS); the .trc and .mot files load back in OpenSim."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kinemesh.models.assets.opensim_models import ensure_opensim_model
from kinemesh.models.biomech import OsimModel, read_mot, write_mot

OPENSIM_NAMES = ("pelvis_tilt", "pelvis_list", "pelvis_rotation", "pelvis_tx", "pelvis_ty", "pelvis_tz",
                 "hip_flexion_r", "hip_adduction_r", "hip_rotation_r", "knee_angle_r", "ankle_angle_r",
                 "subtalar_angle_r", "arm_flex_r", "arm_add_r", "arm_rot_r", "elbow_flex_r", "pro_sup_r",
                 "hip_flexion_l", "knee_angle_l", "ankle_angle_l", "elbow_flex_l")
LOWER_LIMB = ("hip_flexion_r", "hip_adduction_r", "knee_angle_r", "ankle_angle_r",
              "hip_flexion_l", "hip_adduction_l", "knee_angle_l", "ankle_angle_l")


@pytest.fixture(scope="module")
def model(clips: dict[str, Path], model_dir: Path) -> OsimModel:
    osim_file, markers = ensure_opensim_model(model_dir / "opensim", clips["single_cam01"].parents[1])
    return OsimModel(osim_file, markers)


def _motion(model: OsimModel, frames: int, seed: int) -> np.ndarray:
    """Smooth coordinates (T, C) SI inside every range: a sway about the default pose."""
    rng = np.random.default_rng(seed)
    lo = np.array([c.range_min for c in model.coordinates])
    hi = np.array([c.range_max for c in model.coordinates])
    phase = np.linspace(0, 2 * np.pi, frames)[:, None] + rng.uniform(0, 2 * np.pi, len(lo))
    values = model.default_values() + 0.15 * (hi - lo) * np.sin(phase) * rng.uniform(0.3, 1.0, len(lo))
    return np.clip(values, lo + 0.02 * (hi - lo), hi - 0.02 * (hi - lo))


def test_coordinates_carry_opensim_names_units_and_ranges(model: OsimModel) -> None:
    names = model.coordinate_names
    assert set(OPENSIM_NAMES) <= set(names) and len(names) == 40
    by_name = {c.name: c for c in model.coordinates}
    assert not by_name["pelvis_tx"].rotational and by_name["knee_angle_r"].rotational
    knee = by_name["knee_angle_r"]
    assert knee.range_min == pytest.approx(0.0) and np.degrees(knee.range_max) == pytest.approx(155, abs=1)
    assert all(c.range_min < c.range_max for c in model.coordinates)
    assert {"r.ASIS_study", "L.PSIS_study", "r_knee_study", "r_mknee_study", "r_ankle_study", "r_calc_study",
            "r_toe_study", "C7_study", "r_shoulder_study", "r_lelbow_study", "r_lwrist_study"} <= set(model.marker_names)


def test_forward_kinematics_moves_the_right_markers(model: OsimModel) -> None:
    rest = model.default_values()
    bent = rest.copy()
    bent[model.coordinate_names.index("knee_angle_r")] = np.radians(60)
    a, b = model.marker_positions(np.stack([rest, bent]))
    moved = np.linalg.norm(b - a, axis=-1) > 1e-4  # (M,)
    names = np.array(model.marker_names)
    assert "r_ankle_study" in names[moved] and "r_toe_study" in names[moved]
    assert "L_ankle_study" not in names[moved] and "r.ASIS_study" not in names[moved]
    # the shank moves as one rigid body: the distances between its markers do not change
    shank = [model.marker_names.index(n) for n in ("r_sh1_study", "r_sh2_study", "r_sh3_study", "r_ankle_study")]
    da = np.linalg.norm(a[shank][:, None] - a[shank][None], axis=-1)
    db = np.linalg.norm(b[shank][:, None] - b[shank][None], axis=-1)
    assert np.allclose(da, db, atol=1e-9) and not np.allclose(a[shank], b[shank], atol=1e-3)


def test_inverse_kinematics_recovers_a_known_motion(model: OsimModel, tmp_path: Path) -> None:
    truth = _motion(model, 30, seed=1)
    markers = model.marker_positions(truth)
    noisy = markers + np.random.default_rng(2).normal(0, 0.002, markers.shape)  # 2 mm marker noise
    res = model.inverse_kinematics(noisy, model.marker_names, fps=30.0, work_dir=tmp_path)
    assert res.values.shape == truth.shape and np.isfinite(res.values).all()
    assert float(np.sqrt(np.mean(res.marker_rms_m**2))) <= 0.01  # OpenSim's own report: <= 1 cm RMS
    refit = model.marker_positions(res.values)
    assert float(np.sqrt(np.mean(np.sum((refit - markers) ** 2, -1)))) <= 0.01
    idx = [model.coordinate_names.index(n) for n in LOWER_LIMB]
    err = np.degrees(np.abs(res.values[:, idx] - truth[:, idx]))
    assert err.max() < 3.0, dict(zip(LOWER_LIMB, err.max(0).round(2), strict=True))
    # the .trc and .mot it wrote load back in OpenSim
    import opensim

    trc = opensim.TimeSeriesTableVec3(str(tmp_path / "markers.trc"))
    assert trc.getNumRows() == 30 and len(trc.getColumnLabels()) == len(model.marker_names)
    times, labels, table = read_mot(tmp_path / "ik.mot")
    assert len(times) == 30 and set(model.coordinate_names) <= set(labels)


def test_mot_round_trip_in_degrees(model: OsimModel, tmp_path: Path) -> None:
    values = _motion(model, 12, seed=3)
    path = tmp_path / "coords.mot"
    write_mot(path, values, model.coordinate_names, model.rotational, np.arange(12) / 30.0)
    assert "inDegrees=yes" in path.read_text()
    times, labels, table = read_mot(path)
    assert labels == model.coordinate_names and np.allclose(times, np.arange(12) / 30.0)
    expected = values.copy()
    expected[:, model.rotational] = np.degrees(expected[:, model.rotational])
    assert np.allclose(table, expected, atol=1e-6)
