"""BodyLayer invariants on a small synthetic model: shapes, no NaN, 6D = matrices, identity pose
gives the template, zero shape, agreement with a plain 4x4 forward-kinematics reference, file
round trip, and ONNX export parity with ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kinemesh.models.body import (
    BodyLayer,
    BodyModelConfig,
    load_body_model,
    read_body_model,
    save_body_model,
)
from kinemesh.models.rotations import axis_angle_to_matrix, matrix_to_rot6d, rot6d_to_matrix

# A chain with a branch, where joint 2 drives two nodes with their own pivots (like Anny's toes).
PARENTS = (-1, 0, 1, 2, 2, 0, 5)
NODE_JOINT = (0, 1, 2, 3, 3, 4, 5)
J, N, V, S, L = 6, len(PARENTS), 120, 4, 33


def _synthetic(seed: int = 0) -> tuple[BodyModelConfig, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    verts = torch.randn(V, 3, generator=g)
    shapedirs = 0.05 * torch.randn(V, 3, S, generator=g)
    reg = torch.rand(N, V, generator=g) ** 8
    reg = reg / reg.sum(1, keepdim=True)
    w = torch.rand(V, N, generator=g) ** 4
    w = w / w.sum(1, keepdim=True)
    jfn = torch.zeros(J, N)
    for n, j in enumerate(NODE_JOINT):
        jfn[j, n] = 1.0
    jfn = jfn / jfn.sum(1, keepdim=True)
    lm = torch.rand(L, V, generator=g) ** 8
    lm = lm / lm.sum(1, keepdim=True)
    cfg = BodyModelConfig(name="synthetic", num_vertices=V, num_shape=S, num_joints=J, num_nodes=N,
                          num_landmarks=L, node_parents=PARENTS, node_joint=NODE_JOINT,
                          joint_names=tuple(f"j{i}" for i in range(J)),
                          landmark_names=tuple(f"l{i}" for i in range(L)))
    t = dict(v_template=verts, shapedirs=shapedirs, node_regressor=reg, skin_weights=w,
             joint_from_nodes=jfn, landmark_regressor=lm, faces=torch.randint(0, V, (10, 3), generator=g))
    return cfg, t


def _layer(seed: int = 0) -> BodyLayer:
    cfg, t = _synthetic(seed)
    return BodyLayer(cfg, **t)


def _random_inputs(B: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rot = axis_angle_to_matrix(0.8 * torch.randn(B, J, 3, generator=g))  # (B, J, 3, 3)
    return rot, torch.randn(B, S, generator=g), torch.randn(B, 3, generator=g)


def _reference(layer: BodyLayer, rot: torch.Tensor, shape: torch.Tensor, transl: torch.Tensor) -> torch.Tensor:
    """Textbook LBS with 4x4 matrices, node by node (float64)."""
    d = torch.float64
    v = layer.v_template.to(d) + torch.einsum("vcs,bs->bvc", layer.shapedirs.to(d).reshape(V, 3, S), shape.to(d))
    h = torch.einsum("nv,bvc->bnc", layer.node_regressor.to(d), v)
    B = rot.shape[0]
    world = []
    for n, p in enumerate(PARENTS):
        local = torch.eye(4, dtype=d).repeat(B, 1, 1)
        local[:, :3, :3] = rot[:, NODE_JOINT[n]].to(d)
        local[:, :3, 3] = h[:, n] - (h[:, p] if p >= 0 else 0)
        world.append(local if p < 0 else world[p] @ local)
    A = torch.stack(world, 1)  # (B, N, 4, 4)
    rest = torch.eye(4, dtype=d).repeat(B, N, 1, 1)
    rest[..., :3, 3] = h
    T = A @ torch.linalg.inv(rest)
    Tv = torch.einsum("vn,bnij->bvij", layer.skin_weights.to(d), T)
    vh = torch.cat([v, torch.ones(B, V, 1, dtype=d)], -1)
    return (Tv @ vh[..., None])[..., :3, 0] + transl.to(d)[:, None]


@pytest.mark.parametrize("B", [1, 3])
def test_shapes_and_finite(B: int) -> None:
    layer = _layer()
    out = layer(*_random_inputs(B))
    assert out.vertices.shape == (B, V, 3)
    assert out.joints.shape == (B, J, 3)
    assert out.landmarks.shape == (B, L, 3)
    for t in out:
        assert torch.isfinite(t).all()


def test_matches_reference_lbs() -> None:
    layer = _layer()
    rot, shape, transl = _random_inputs(4)
    ref = _reference(layer, rot, shape, transl)
    assert torch.allclose(layer(rot, shape, transl).vertices.double(), ref, atol=1e-5)


def test_6d_equals_matrices() -> None:
    layer = _layer()
    rot, shape, transl = _random_inputs(2)
    r6 = matrix_to_rot6d(rot)
    assert torch.allclose(rot6d_to_matrix(r6), rot, atol=1e-6)
    a, b = layer(rot, shape, transl), layer(r6, shape, transl)
    for x, y in zip(a, b, strict=True):
        assert torch.allclose(x, y, atol=1e-5)


def test_identity_pose_gives_template_and_zero_shape() -> None:
    layer = _layer()
    B = 2
    eye = torch.eye(3).expand(B, J, 3, 3)
    zero_shape, zero_t = torch.zeros(B, S), torch.zeros(B, 3)
    out = layer(eye, zero_shape, zero_t)
    assert torch.allclose(out.vertices, layer.v_template.expand(B, V, 3), atol=1e-5)
    _, shape, transl = _random_inputs(B)
    v_shaped, heads = layer.shaped(shape)
    out = layer(eye, shape, transl)
    assert torch.allclose(out.vertices, v_shaped + transl[:, None], atol=1e-5)
    assert torch.allclose(out.joints, torch.einsum("jn,bnc->bjc", layer.joint_from_nodes, heads)
                          + transl[:, None], atol=1e-5)


def test_config_rejects_bad_tree() -> None:
    with pytest.raises(ValueError):
        BodyModelConfig(num_joints=2, num_nodes=2, node_parents=(-1, 1), node_joint=(0, 1))
    cfg, t = _synthetic()
    t["skin_weights"] = t["skin_weights"][:, :-1]
    with pytest.raises(ValueError):
        BodyLayer(cfg, **t)


def test_file_round_trip(tmp_path) -> None:
    cfg, t = _synthetic()
    header = {"name": cfg.name, "joint_names": list(cfg.joint_names), "node_parents": list(PARENTS),
              "node_joint": list(NODE_JOINT), "landmark_names": list(cfg.landmark_names)}
    path = save_body_model(tmp_path / "m.npz", {k: v.numpy() for k, v in t.items()}, header)
    arrays, back = read_body_model(path)
    assert back["node_parents"] == list(PARENTS) and arrays["faces"].dtype == np.int32
    layer = load_body_model(path)
    inputs = _random_inputs(2)
    assert torch.allclose(layer(*inputs).vertices, BodyLayer(cfg, **t)(*inputs).vertices)
    assert load_body_model(path, num_shape=2).shapedirs.shape == (V * 3, 2)


@pytest.mark.parametrize("rep", ["matrix", "6d"])
def test_onnx_export_parity(tmp_path, rep: str) -> None:
    import onnx
    import onnxruntime as ort
    layer = _layer().eval()
    rot, shape, transl = _random_inputs(2)
    pose = rot if rep == "matrix" else matrix_to_rot6d(rot)
    path = tmp_path / "body.onnx"
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(
        layer, (pose, shape, transl), str(path), dynamo=True,
        input_names=["pose", "shape", "transl"], output_names=["vertices", "joints", "landmarks"],
        dynamic_shapes=({0: batch}, {0: batch}, {0: batch}),
    )
    onnx.checker.check_model(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for B in (2, 5):  # a batch size other than the traced one
        rot, shape, transl = _random_inputs(B, seed=B)
        pose = rot if rep == "matrix" else matrix_to_rot6d(rot)
        got = sess.run(None, {"pose": pose.numpy(), "shape": shape.numpy(), "transl": transl.numpy()})
        with torch.no_grad():
            want = layer(pose, shape, transl)
        for g_, w_ in zip(got, want, strict=True):
            assert np.abs(g_ - w_.numpy()).max() <= 1e-4
