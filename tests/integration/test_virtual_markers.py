"""Virtual markers on the default body model's mesh (Anny): one vertex per anatomical landmark of
OpenCap's study marker set, named as in the OpenSim marker set, anatomically placed, symmetric, and
carried along by the skin when the body moves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kinemesh.models.assets.opensim_models import ensure_opensim_model
from kinemesh.models.biomech import OsimModel
from kinemesh.models.biomech.virtual_markers import study_markers
from kinemesh.models.body.assets import load_body_model


@pytest.fixture(scope="module")
def body(body_file: Path):
    layer = load_body_model(body_file, num_shape=10)
    rest = layer(torch.eye(3).expand(1, 24, 3, 3), torch.zeros(1, 10), torch.zeros(1, 3))
    markers = study_markers(rest.vertices[0].numpy(), rest.joints[0].numpy(), layer.config.joint_names)
    return layer, rest, markers


def test_every_marker_is_in_the_opensim_marker_set(body, clips: dict[str, Path], model_dir: Path) -> None:
    _, _, markers = body
    model = OsimModel(*ensure_opensim_model(model_dir / "opensim", clips["single_cam01"].parents[1]))
    assert set(markers.names) <= set(model.marker_names)
    assert len(markers.names) == 29 and len(set(markers.vertex_ids.tolist())) == 29


def test_markers_are_placed_anatomically_and_symmetrically(body) -> None:
    layer, rest, markers = body
    p = dict(zip(markers.names, markers.positions(rest.vertices[0].numpy()), strict=True))
    for side, s in (("L", 1.0), ("r", -1.0)):
        mirror = {"L": "r", "r": "L"}[side]
        for name in [n for n in markers.names if n.startswith(side)]:  # the other side's is its mirror image
            twin = mirror + name[1:]
            assert np.allclose(p[name] * [-1, 1, 1], p[twin], atol=0.005), name
        height = [p[f"{side}.ASIS_study"][1], p[f"{side}_knee_study"][1], p[f"{side}_ankle_study"][1]]
        assert height == sorted(height, reverse=True)  # pelvis above knee above ankle
        assert p[f"{side}.ASIS_study"][2] > p[f"{side}.PSIS_study"][2] + 0.1  # front and back of the pelvis
        assert p[f"{side}_toe_study"][2] > p[f"{side}_calc_study"][2] + 0.15  # a foot's length apart
        for joint in ("knee", "ankle"):  # lateral markers lie outside the medial ones
            assert s * p[f"{side}_{joint}_study"][0] > s * p[f"{side}_m{joint}_study"][0] + 0.04
        assert p[f"{side}_shoulder_study"][1] > p[f"{side}_lelbow_study"][1] > p[f"{side}_lwrist_study"][1]
    assert abs(p["C7_study"][0]) < 0.03 and p["C7_study"][2] < p["L_shoulder_study"][2]


def test_markers_ride_on_the_skin(body) -> None:
    layer, rest, markers = body
    rot = torch.eye(3).repeat(1, 24, 1, 1)
    bend = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # 90 degrees about x
    rot[0, layer.config.joint_names.index("right_knee")] = bend
    posed = layer(rot, torch.zeros(1, 10), torch.zeros(1, 3))
    a, b = markers.positions(rest.vertices[0].numpy()), markers.positions(posed.vertices[0].numpy())
    moved = dict(zip(markers.names, np.linalg.norm(b - a, axis=-1) > 0.02, strict=True))
    assert moved["r_ankle_study"] and moved["r_toe_study"] and moved["r_calc_study"]
    assert not moved["L_ankle_study"] and not moved["r.ASIS_study"] and not moved["r_shoulder_study"]
    # the lateral ankle keeps its distance to the knee joint: it moved with the shank
    k = layer.config.joint_names.index("right_knee")
    knee_rest, knee_posed = rest.joints[0, k].numpy(), posed.joints[0, k].numpy()
    i = markers.names.index("r_ankle_study")
    assert np.linalg.norm(b[i] - knee_posed) == pytest.approx(np.linalg.norm(a[i] - knee_rest), abs=0.01)


def test_rigid_markers_equal_the_mesh_at_rest_and_keep_to_their_bones(body) -> None:
    from kinemesh.models.biomech.virtual_markers import JOINT_MARKERS, marker_bone, rigid_positions

    layer, rest, markers = body
    names = list(layer.config.joint_names)
    eye = torch.eye(3).repeat(2, 24, 1, 1)
    labels, at_rest = rigid_positions(markers, layer, eye, np.zeros(10), np.zeros((2, 3)))
    assert labels == [*markers.names, *JOINT_MARKERS]
    assert np.allclose(at_rest[0, :29], markers.positions(rest.vertices[0].numpy()), atol=1e-5)
    assert np.allclose(at_rest[0, 29:], rest.joints[0, [names.index(j) for j in JOINT_MARKERS.values()]], atol=1e-5)
    rot = eye.clone()
    rot[1, names.index("right_hip")] = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])  # thigh forward 90 deg
    _, moved = rigid_positions(markers, layer, rot, np.zeros(10), np.zeros((2, 3)))
    knee = markers.names.index("r_knee_study")
    assert marker_bone("r_knee_study") == "right_hip" and marker_bone("r.ASIS_study") == "pelvis"
    hip = rest.joints[0, names.index("right_hip")].numpy()
    assert np.linalg.norm(moved[1, knee] - hip) == pytest.approx(np.linalg.norm(at_rest[0, knee] - hip), abs=1e-4)
    assert moved[1, knee, 2] > at_rest[0, knee, 2] + 0.2  # the knee marker swung forwards with the thigh
    asis = markers.names.index("r.ASIS_study")
    assert np.allclose(moved[1, asis], at_rest[0, asis], atol=1e-6)  # the pelvis did not move
