"""SMPL through smplx behind the body-layer interface, with a synthetic SMPL-format pickle
(random arrays in the file's layout; the real file is operator-supplied)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import smplx
import torch

from kinemesh.models.body.smpl import BLAZEPOSE_LANDMARKS, create_smpl_layer
from kinemesh.models.rotations import axis_angle_to_matrix, matrix_to_rot6d  # noqa: E402

SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]
V = 6890


@pytest.fixture(scope="module")
def smpl_pkl(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    v_template = rng.normal(scale=0.3, size=(V, 3))
    weights = rng.uniform(size=(V, 24)) ** 6
    weights /= weights.sum(1, keepdims=True)
    j_reg = rng.uniform(size=(24, V)) ** 20
    j_reg /= j_reg.sum(1, keepdims=True)
    kintree = np.array([[4294967295] + SMPL_PARENTS[1:], list(range(24))], dtype=np.int64)
    data = dict(
        v_template=v_template, shapedirs=rng.normal(scale=0.01, size=(V, 3, 10)),
        posedirs=rng.normal(scale=0.001, size=(V, 3, 207)), J_regressor=j_reg, weights=weights,
        kintree_table=kintree, f=rng.integers(0, V, size=(13776, 3)).astype(np.int64),
    )
    path = tmp_path_factory.mktemp("smpl") / "SMPL_NEUTRAL.pkl"
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return str(path)


def _inputs(B: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    aa = 0.5 * torch.randn(B, 24, 3, generator=g)
    return aa, 0.5 * torch.randn(B, 10, generator=g), torch.randn(B, 3, generator=g)


@pytest.mark.parametrize("B", [1, 3])
def test_interface_shapes(smpl_pkl: str, B: int) -> None:
    layer = create_smpl_layer(smpl_pkl, kind="smpl")
    aa, betas, transl = _inputs(B)
    out = layer(axis_angle_to_matrix(aa), betas, transl)
    assert out.vertices.shape == (B, V, 3)
    assert out.joints.shape == (B, 24, 3)
    assert out.landmarks.shape == (B, len(BLAZEPOSE_LANDMARKS), 3)
    for t in out:
        assert torch.isfinite(t).all()
    assert torch.allclose(layer.landmark_regressor.sum(1), torch.ones(33), atol=1e-5)


def test_matches_smplx_and_6d(smpl_pkl: str) -> None:
    layer = create_smpl_layer(smpl_pkl, kind="smpl")
    aa, betas, transl = _inputs(2, seed=3)
    ref = smplx.SMPL(model_path=smpl_pkl, num_betas=10)(
        betas=betas, global_orient=aa[:, 0], body_pose=aa[:, 1:].reshape(2, -1), transl=transl)
    rot = axis_angle_to_matrix(aa)
    for pose in (rot, matrix_to_rot6d(rot)):
        out = layer(pose, betas, transl)
        assert torch.allclose(out.vertices, ref.vertices, atol=1e-5)
        assert torch.allclose(out.joints, ref.joints[:, :24], atol=1e-5)


def test_identity_pose_gives_template(smpl_pkl: str) -> None:
    layer = create_smpl_layer(smpl_pkl, kind="smpl")
    out = layer(torch.eye(3).expand(1, 24, 3, 3), torch.zeros(1, 10), torch.zeros(1, 3))
    assert torch.allclose(out.vertices[0], layer.inner.v_template, atol=1e-6)


def test_wrong_joint_count_is_refused(smpl_pkl: str) -> None:
    layer = create_smpl_layer(smpl_pkl, kind="smpl")
    with pytest.raises(ValueError):
        layer(torch.eye(3).expand(1, 22, 3, 3), torch.zeros(1, 10), torch.zeros(1, 3))


@pytest.fixture(scope="module")
def smplx_npz(tmp_path_factory) -> str:
    """A synthetic SMPL-X-format .npz (55 joints, 10,475 vertices; hand joints chained off the wrists)."""
    rng = np.random.default_rng(1)
    Vx, Jx = 10475, 55
    parents = SMPL_PARENTS[:22] + [15, 15, 15] + [20] * 15 + [21] * 15
    w = rng.uniform(size=(Vx, Jx)) ** 8
    w /= w.sum(1, keepdims=True)
    jr = rng.uniform(size=(Jx, Vx)) ** 20
    jr /= jr.sum(1, keepdims=True)
    data = dict(
        v_template=rng.normal(scale=0.3, size=(Vx, 3)), shapedirs=rng.normal(scale=0.01, size=(Vx, 3, 400)),
        posedirs=rng.normal(scale=1e-3, size=(Vx, 3, 486)), J_regressor=jr, weights=w,
        kintree_table=np.array([[4294967295] + parents[1:], list(range(Jx))], dtype=np.int64),
        f=rng.integers(0, Vx, size=(20908, 3)), hands_componentsl=np.eye(45), hands_componentsr=np.eye(45),
        hands_meanl=np.zeros(45), hands_meanr=np.zeros(45), lmk_faces_idx=np.arange(51),
        lmk_bary_coords=np.full((51, 3), 1 / 3), dynamic_lmk_faces_idx=np.zeros((79, 17), dtype=np.int64),
        dynamic_lmk_bary_coords=np.full((79, 17, 3), 1 / 3),
    )
    path = tmp_path_factory.mktemp("smplx") / "SMPLX_NEUTRAL.npz"
    np.savez(path, **data)
    return str(path)


def test_smplx_matches_smplx(smplx_npz: str) -> None:
    layer = create_smpl_layer(smplx_npz, kind="smplx")
    g = torch.Generator().manual_seed(5)
    aa, betas, transl = 0.4 * torch.randn(2, 22, 3, generator=g), torch.randn(2, 10, generator=g), torch.randn(2, 3)
    out = layer(axis_angle_to_matrix(aa), betas, transl)
    assert [tuple(t.shape) for t in out] == [(2, 10475, 3), (2, 22, 3), (2, 33, 3)]
    ref = smplx.SMPLX(smplx_npz, num_betas=10, use_pca=False, flat_hand_mean=True, batch_size=2)(
        betas=betas, global_orient=aa[:, 0], body_pose=aa[:, 1:].reshape(2, -1), transl=transl)
    assert torch.allclose(out.vertices, ref.vertices, atol=1e-5)
    assert torch.allclose(out.joints, ref.joints[:, :22], atol=1e-5)
