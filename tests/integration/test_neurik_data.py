"""NeurIK's synthetic data: coordinates inside the model's ranges with the body model's motions,
markers that are the exact forward kinematics of the coordinates on each scaled subject (before
noise), subjects of different sizes, occlusions as NaN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kinemesh.models.assets.opensim_models import ensure_opensim_model
from kinemesh.models.biomech import OsimModel, study_markers
from kinemesh.models.biomech.neurik import UNOBSERVED
from kinemesh.models.biomech.neurik_data import generate
from kinemesh.models.body.assets import load_body_model


@pytest.fixture(scope="module")
def parts(clips: dict[str, Path], model_dir: Path, body_file: Path):
    model = OsimModel(*ensure_opensim_model(model_dir / "opensim", clips["single_cam01"].parents[1]))
    layer = load_body_model(body_file, num_shape=10)
    rest = layer(torch.eye(3).expand(1, 24, 3, 3), torch.zeros(1, 10), torch.zeros(1, 3))
    return model, layer, study_markers(rest.vertices[0].numpy(), rest.joints[0].numpy(), layer.config.joint_names)


def test_exact_markers_for_coordinates_in_range(parts, tmp_path: Path) -> None:
    model, layer, markers = parts
    d = generate(model, layer, markers, subjects=2, sequences_per_subject=2, frames=30, seed=3, noise_m=0.0,
                 occlusion=0.0, work_dir=tmp_path)
    assert d.markers.shape == (8, 30, 31, 3) and d.coordinates.shape == (8, 30, 40)
    assert d.coordinate_names == model.coordinate_names and len(d.marker_names) == 31
    assert d.kind == ["body", "fk"] * 4  # each motion twice: the body model's markers, then FK markers
    lo = np.array([c.range_min for c in model.coordinates]) - 1e-6
    hi = np.array([c.range_max for c in model.coordinates]) + 1e-6
    assert ((d.coordinates >= lo) & (d.coordinates <= hi)).all()
    fixed = [model.coordinate_names.index(n) for n in UNOBSERVED]
    assert np.abs(d.coordinates[:, :, fixed]).max() < 1e-6  # no marker moves them: left at the default
    for p in range(8):
        subject = OsimModel(tmp_path / f"subject{d.subject[p]}.osim")
        order = [subject.marker_names.index(n) for n in d.marker_names]
        fitted = subject.marker_positions(d.coordinates[p])[:, order]
        if d.kind[p] == "fk":  # the markers are the subject model's forward kinematics of the coordinates
            assert np.allclose(fitted, d.markers[p], atol=1e-4)
        else:  # the body model's own markers, labelled by OpenSim IK: a fit to within a few centimetres
            rms = np.sqrt(np.mean(np.sum((fitted - d.markers[p]) ** 2, -1)))
            assert 0.002 < rms < 0.03
    knee = d.coordinates[:, :, model.coordinate_names.index("knee_angle_r")]
    assert np.ptp(knee) > np.radians(20)  # the motions move the joints
    femur = d.scale_factors[:, d.bodies.index("femur_r")]
    assert femur[d.subject == 0][0] != pytest.approx(femur[d.subject == 1][0], abs=0.01)  # two sizes


def test_noise_and_occlusion(parts) -> None:
    model, layer, markers = parts
    d = generate(model, layer, markers, subjects=1, sequences_per_subject=4, frames=30, seed=4, occlusion=1.0)
    hidden = np.isnan(d.markers).any(-1)  # (P, T, M)
    fk = np.array(d.kind) == "fk"
    assert hidden[fk].any(axis=(1, 2)).all()  # every FK sequence lost a marker for a while
    assert not hidden[~fk].any()  # a mesh's virtual markers are always there
    assert hidden.mean() < 0.05 and np.isfinite(d.coordinates).all()


def test_training_script_writes_weights_and_a_record(parts, tmp_path: Path, model_dir: Path) -> None:
    """A tiny run of `train_neurik` end to end: data, training steps, held-out RMSE, weights, record."""
    import json

    from kinemesh.models.biomech.neurik import NeurIK, NeurIKConfig
    from kinemesh.models.training import train_neurik

    var = model_dir.parent
    out = tmp_path / "weights"
    assert train_neurik.main(["--out", str(out), "--var", str(var), "--cache-dir", str(tmp_path / "cache"),
                              "--subjects", "2", "--sequences", "2", "--frames", "20", "--steps", "6",
                              "--batch", "4"]) == 0
    record = json.loads((out / "record.json").read_text())
    assert record["seeds"]["train_data"] == 0 and record["steps"] == 6
    assert record["held_out_rmse_deg_mean"]["body"] > 0 and record["held_out_rmse_deg_mean"]["fk"] > 0
    assert "pelvis_tilt" in record["held_out_rmse_deg"]["body"]  # the pelvis's angles are judged too
    saved = torch.load(out / "neurik.pt", weights_only=False)
    assert len(saved["coordinate_names"]) == 25 and "knee_angle_r" in saved["coordinate_names"]
    assert not set(saved["coordinate_names"]) & {"neck_flexion", "wrist_flex_r", "mtp_angle_l"}
    assert len(list((tmp_path / "cache").glob("v*_seed0_2x2x20.npz"))) == 1  # generated data kept for the next run
    net = NeurIK(NeurIKConfig(**saved["config"]), torch.zeros(25), torch.ones(25))
    net.load_state_dict(saved["state_dict"])
