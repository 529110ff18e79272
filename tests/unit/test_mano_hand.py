"""MANO through smplx as the hand model's skeleton, with a synthetic MANO-format pickle (random arrays
in the file's layout; the real MANO_RIGHT.pkl is operator-supplied and never shipped)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from kinemesh.models.hands.mano_hand import MANO_OF_OURS, main, mano_layer, mano_skeleton, to_mano_pose
from kinemesh.models.hands.skeleton import KEYPOINTS, HandSkeleton
from kinemesh.models.rotations import axis_angle_to_matrix, matrix_to_axis_angle

V = 778
MANO_PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]
TIPS = {744: 15, 320: 3, 443: 6, 554: 12, 671: 9}  # smplx's fingertip vertices -> their distal MANO joint


@pytest.fixture(scope="module")
def mano_pkl(tmp_path_factory) -> Path:
    """Tip vertices skinned wholly to their distal joint with no pose correctives, so MANO's tips are
    rigid with that bone, as the skeleton's are."""
    rng = np.random.default_rng(0)
    weights = rng.uniform(size=(V, 16)) ** 6
    posedirs = rng.normal(scale=0.001, size=(V, 3, 135))
    for vertex, joint in TIPS.items():
        weights[vertex] = np.eye(16)[joint]
        posedirs[vertex] = 0.0
    weights /= weights.sum(1, keepdims=True)
    j_reg = rng.uniform(size=(16, V)) ** 20
    j_reg /= j_reg.sum(1, keepdims=True)
    data = dict(
        v_template=rng.normal(scale=0.04, size=(V, 3)), shapedirs=rng.normal(scale=0.002, size=(V, 3, 10)),
        posedirs=posedirs, J_regressor=j_reg, weights=weights,
        kintree_table=np.array([[4294967295] + MANO_PARENTS[1:], list(range(16))], dtype=np.int64),
        f=rng.integers(0, V, size=(1538, 3)).astype(np.int64),
        hands_components=np.eye(45), hands_mean=rng.normal(scale=0.1, size=45),
    )
    path = tmp_path_factory.mktemp("mano") / "MANO_RIGHT.pkl"
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return path


def test_rest_joints_are_manos_in_the_projects_order(mano_pkl: Path) -> None:
    layer = mano_layer(mano_pkl)
    skeleton = mano_skeleton(mano_pkl)
    joints = torch.from_numpy(pickle.load(open(mano_pkl, "rb"))["J_regressor"]).float() @ layer.v_template  # (16, 3)
    assert torch.allclose(skeleton.rest, (joints - joints[0])[MANO_OF_OURS], atol=1e-6)
    assert torch.equal(skeleton.rest[0], torch.zeros(3))
    assert skeleton.rest.shape == (16, 3) and skeleton.tips.shape == (5, 3)


def test_the_skeleton_poses_as_mano_does(mano_pkl: Path) -> None:
    """Random rotations of every joint: the skeleton's 21 keypoints are MANO's posed joints and tips."""
    layer, skeleton = mano_layer(mano_pkl), mano_skeleton(mano_pkl)
    g = torch.Generator().manual_seed(1)
    rotations = axis_angle_to_matrix(0.6 * torch.randn(4, 16, 3, generator=g))  # (B, 16, 3, 3), project's order
    orient, fingers = to_mano_pose(rotations)
    with torch.no_grad():
        out = layer(betas=torch.zeros(4, 10), global_orient=matrix_to_axis_angle(orient),
                    hand_pose=matrix_to_axis_angle(fingers).reshape(4, 45))
        rest_wrist = layer(betas=torch.zeros(1, 10), global_orient=torch.zeros(1, 3),
                           hand_pose=torch.zeros(1, 45)).joints[0, 0]
    joints = out.joints[:, :16] - rest_wrist  # (B, 16, 3) MANO's order, wrist at the origin
    tips = out.vertices[:, list(TIPS)] - rest_wrist  # (B, 5, 3) thumb first
    expected = torch.stack([joints[:, MANO_OF_OURS[k]] if k >= 0 else tips[:, -1 - k] for k in KEYPOINTS], 1)
    got = skeleton(rotations)
    assert got.shape == (4, 21, 3)
    assert torch.allclose(got, expected, atol=1e-5), float((got - expected).abs().max())
    assert not torch.allclose(got, skeleton(torch.eye(3).expand(4, 16, 3, 3)), atol=1e-3)  # the pose mattered


def test_the_command_writes_a_skeleton_file_the_hand_model_reads(mano_pkl: Path, tmp_path: Path) -> None:
    out = tmp_path / "weights" / "hand_skeleton.json"
    assert main(["--mano", str(mano_pkl), "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert "MANO (MANO_RIGHT.pkl, sha256 " in data["source"] and data["joints"][1] == "thumb1"
    read = HandSkeleton.from_file(out)
    assert torch.allclose(read.rest, mano_skeleton(mano_pkl).rest, atol=1e-6)
    assert main(["--mano", str(tmp_path / "missing.pkl"), "--out", str(out)]) == 2


def test_the_hand_model_trains_on_the_mano_skeleton_and_keeps_it(mano_pkl: Path, tmp_path: Path) -> None:
    """`train_hands --skeleton`: synthetic hands posed on MANO's skeleton, and the skeleton file copied
    beside the weights (a bundle built from them poses MANO's joints). A few steps only: the run, not the fit."""
    from kinemesh.models.training.train_hands import main as train

    skeleton = tmp_path / "mano_skeleton.json"
    assert main(["--mano", str(mano_pkl), "--out", str(skeleton)]) == 0
    out = tmp_path / "weights"
    assert train(["--skeleton", str(skeleton), "--out", str(out), "--samples", "256", "--val", "32",
                  "--tokenizer-steps", "2", "--transformer-steps", "2", "--batch", "16"]) == 0
    assert (out / "hand_skeleton.json").read_text() == skeleton.read_text()
    record = json.loads((out / "record.json").read_text())
    assert record["skeleton"] == "hand_skeleton.json" and np.isfinite(record["hand_pa_mpjpe_mm_synth"])
