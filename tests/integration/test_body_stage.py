"""The default bundle and the body stage: manifest and parity, refinement, typed failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kinemesh.models.backends.ort import OrtBackend
from kinemesh.models.camera import box_intrinsics, fit_perspective_translation
from kinemesh.models.export.bundle import BundleError, load_trained, open_bundle
from kinemesh.models.export.triton import parse_pbtxt
from kinemesh.models.genhmr import BackendStepFn, TorchStepFn, masked_decode
from kinemesh.models.genhmr.inference import full_rotations, predict_bodies
from kinemesh.models.genhmr.refine import RefineConfig, bone_lengths, refine_track, track_bone_lengths
from kinemesh.models.training.synth import FOCAL_PX, generate
from kinemesh.services.common.errors import ModelUnavailable
from kinemesh.services.worker.stages.base import NullContext
from kinemesh.services.worker.stages.body import BodyStage

REPO = Path(__file__).resolve().parents[2]
GRAPHS = ("genhmr_step", "tokenizer_decode", "tokenizer_decode_embeddings", "tokenizer_encode", "neurik", "mqhmr",
          "hand_step", "hand_tokenizer_decode")
UNTRAINED = {"mqhmr"}  # exported with random weights: listed, never served


@pytest.fixture(scope="module")
def bundle_dir(model_dir: Path) -> Path:
    return model_dir / "bundle" / "default"


@pytest.fixture(scope="module")
def stage(bundle_dir: Path) -> BodyStage:
    return BodyStage(bundle_dir)


def test_manifest_lists_every_graph_with_parity_and_a_triton_config(bundle_dir: Path) -> None:
    bundle = open_bundle(bundle_dir)  # verifies every file's sha256
    m = bundle.manifest
    assert set(m["graphs"]) == set(GRAPHS)
    for name, g in m["graphs"].items():
        assert g["trained"] == (name not in UNTRAINED) and g["opset"] >= 17
        assert g["weights"]["status"] == ("untrained" if name in UNTRAINED else "trained"), (name, g["weights"])
        if g["trained"]:
            assert (bundle_dir / g["weights"]["record"]).is_file()
        else:
            assert "kinemesh bundle build" in g["weights"]["needs"]
        assert max(g["parity_max_abs"].values()) <= 1e-4, (name, g["parity_max_abs"])
        cfg = parse_pbtxt((bundle_dir / g["triton_config"]).read_text())
        assert cfg["name"] == name and cfg["backend"] == "onnxruntime" and cfg["max_batch_size"] >= 32
        assert "dynamic_batching" in cfg
        assert {i["name"] for i in cfg["input"]} == {i["name"] for i in g["inputs"]}
    record = json.loads((bundle_dir / "training_record.json").read_text())
    assert record["seed"] == 0 and record["transformer"]["val_pa_mpjpe_mm"] > 0
    neurik = json.loads((bundle_dir / m["graphs"]["neurik"]["training_record"]).read_text())
    assert neurik["seeds"]["train_data"] == 0 and neurik["held_out_rmse_deg_mean"]["body"] > 0
    assert set(m["files"]) >= {g["file"] for g in m["graphs"].values()}


def test_a_tampered_bundle_is_refused_with_a_typed_error(bundle_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    with open(copy / "tokenizer_decode" / "1" / "model.onnx", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(BundleError, match="sha256"):
        open_bundle(copy)
    with pytest.raises(ModelUnavailable):
        BodyStage(copy)
    with pytest.raises(ModelUnavailable, match="make bundle"):
        BodyStage(tmp_path / "missing")


def test_onnx_decoding_matches_the_committed_pytorch_weights(bundle_dir: Path) -> None:
    _, model, _ = load_trained(REPO / "models" / "weights" / "default")
    backend = OrtBackend(device="cpu")
    backend.load("genhmr_step", bundle_dir / "genhmr_step" / "1" / "model.onnx")
    data = generate(_layer(bundle_dir), 2, 4, seed=5, num_shape=model.cfg.shape_dim)
    eager = masked_decode(TorchStepFn(model), data.keypoints)
    onnx = masked_decode(BackendStepFn(backend, "genhmr_step", model.cfg.num_tokens, model.cfg.codebook_size),
                         data.keypoints.numpy())
    assert torch.equal(eager.token_ids, onnx.token_ids)
    assert torch.allclose(eager.orient, onnx.orient, atol=1e-4)


def _layer(bundle_dir: Path):
    from kinemesh.models.body.assets import load_body_model

    m = open_bundle(bundle_dir, verify=False).manifest
    return load_body_model(bundle_dir / m["body_model"]["file"], num_shape=m["body_model"]["shape_components"])


def test_refinement_lowers_its_objective_and_the_reprojection_error(stage: BodyStage) -> None:
    data = generate(stage.layer, 1, 40, seed=31, num_shape=stage.layer.config.num_shape)
    init = predict_bodies(stage.step_fn, stage.decoder_fn, data.keypoints, stage.iterations)
    args = (stage.layer, stage.tokenizer.decoder, stage.tokenizer.codebook.detach(), init, data.keypoints, data.world)
    res = refine_track(*args, RefineConfig(steps=15))
    assert len(res.objective) == 16
    assert res.objective[-1] < 0.8 * res.objective[0], res.objective
    assert float(res.reproj_after.mean()) < float(res.reproj_before.mean())
    tok = stage.tokenizer.cfg
    assert torch.isfinite(res.params.body6d).all() and res.embeddings.shape == (40, tok.num_tokens, tok.code_dim)
    still = refine_track(*args, RefineConfig(steps=0))  # no steps: the decoded bodies unchanged
    assert torch.allclose(still.params.body6d, init.body6d, atol=1e-5)
    assert torch.equal(still.reproj_after, still.reproj_before)
    # one shape per track
    assert torch.equal(res.params.shape, res.params.shape[:1].expand_as(res.params.shape))
    assert np.isfinite(res.objective).all()


def test_perspective_refinement_gives_a_metric_body_and_its_placement(stage: BodyStage) -> None:
    """With the camera's intrinsics and world landmarks, the refined body takes the world landmarks'
    segment lengths (its size) and the solved translation puts it at the true distance."""
    layer = stage.layer
    data = generate(layer, 1, 30, seed=32, num_shape=layer.config.num_shape)
    intr = box_intrinsics(FOCAL_PX, torch.zeros(2), data.box_center, data.box_half)  # (T, 3)
    init = predict_bodies(stage.step_fn, stage.decoder_fn, data.keypoints, stage.iterations)
    args = (layer, stage.tokenizer.decoder, stage.tokenizer.codebook.detach(), init, data.keypoints, data.world)
    res = refine_track(*args, RefineConfig(), intrinsics=intr)
    assert res.translation is not None and res.translation.shape == (30, 3)
    truth = fit_perspective_translation(data.landmarks, data.keypoints_clean, intr)  # exact (unit test)
    depth_ratio = res.translation[:, 2] / truth[:, 2]
    assert ((depth_ratio > 0.8) & (depth_ratio < 1.25)).all(), depth_ratio

    def lengths(params) -> torch.Tensor:
        with torch.no_grad():
            _, lm = layer.skeleton(full_rotations(params.body6d, params.orient6d), params.shape, torch.zeros(30, 3))
        return bone_lengths(lm).mean(0)  # (M,)

    target, seen = track_bone_lengths(data.world, data.keypoints[..., 2])
    assert seen.all()
    before = (lengths(init) - target).abs().mean()
    after = (lengths(res.params) - target).abs().mean()
    assert after < before, (float(before), float(after))
    # the size follows the world landmarks: a 30 % larger person in them gives a larger body
    big = refine_track(*args[:-1], data.world * 1.3, RefineConfig(), intrinsics=intr)
    growth = lengths(big.params).sum() / lengths(res.params).sum()
    assert 1.15 < growth < 1.45, float(growth)
    assert (big.translation[:, 2] < res.translation[:, 2]).all()  # and, seen the same size, farther away
    # without intrinsics: the weak-perspective camera, no placement
    weak = refine_track(*args, RefineConfig(steps=3))
    assert weak.translation is None and weak.params.camera.shape == (30, 3)


@pytest.mark.parametrize("frames", [1, 2, 40])
def test_tracks_of_any_length_give_bodies_and_a_mesh(stage: BodyStage, frames: int) -> None:
    out = stage.run(stage.rest_pose_track(frames), NullContext())
    (track,) = out.tracks
    assert track.joints.shape == (frames, 24, 3) and np.isfinite(track.joints).all()
    assert (track.joints[..., 2] < 0).all()  # in front of the camera
    assert np.isfinite(track.reproj_after_px).all() and (track.reproj_after_px >= 0).all()
    assert out.artifacts["mesh_track0.glb"][:4] == b"glTF" and "mesh.npz" in out.artifacts


def test_keyframe_stride_follows_the_frame_rate_and_needs_refinement(bundle_dir: Path) -> None:
    stage = BodyStage(bundle_dir)
    assert [stage.decode_stride(fps) for fps in (10.0, 30.0, 60.0)] == [1, 2, 4]
    assert BodyStage(bundle_dir, RefineConfig(steps=0)).decode_stride(60.0) == 1  # no refinement: every frame
    assert BodyStage(bundle_dir, decode_rate_hz=0).decode_stride(60.0) == 1


def test_a_track_with_a_gap_is_refined_run_by_run(stage: BodyStage) -> None:
    from kinemesh.services.worker.stages.base import KeypointTracks, TrackedFrame

    full = stage.rest_pose_track(40)
    frames = [TrackedFrame(f.index, f.timestamp_s, [] if 12 <= f.index < 25 else f.people) for f in full.frames]
    out = stage.run(KeypointTracks(full.meta, frames), NullContext())
    (track,) = out.tracks
    assert track.frame_index.tolist() == [*range(12), *range(25, 40)]
    assert np.isfinite(track.joints).all() and (track.joints[..., 2] < 0).all()
    frac = track.reproj_after_px / track.bbox_height_px
    assert frac.max() < 0.05, frac  # the frames beside the gap fit as well as the rest
