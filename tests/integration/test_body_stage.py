"""The default bundle and the body stage: manifest and parity, refinement, typed failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kinemesh.models.backends.ort import OrtBackend
from kinemesh.models.export.bundle import BundleError, load_trained, open_bundle
from kinemesh.models.export.triton import parse_pbtxt
from kinemesh.models.genhmr import BackendStepFn, TorchStepFn, masked_decode
from kinemesh.models.genhmr.inference import predict_bodies
from kinemesh.models.genhmr.refine import RefineConfig, refine_track
from kinemesh.models.training.synth import generate
from kinemesh.services.common.errors import ModelUnavailable
from kinemesh.services.worker.stages.base import NullContext
from kinemesh.services.worker.stages.body import BodyStage

REPO = Path(__file__).resolve().parents[2]
GRAPHS = ("genhmr_step", "tokenizer_decode", "tokenizer_decode_embeddings", "tokenizer_encode")


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
        assert g["trained"] and g["opset"] >= 17
        assert max(g["parity_max_abs"].values()) <= 1e-4, (name, g["parity_max_abs"])
        cfg = parse_pbtxt((bundle_dir / g["triton_config"]).read_text())
        assert cfg["name"] == name and cfg["backend"] == "onnxruntime" and cfg["max_batch_size"] >= 32
        assert "dynamic_batching" in cfg
        assert {i["name"] for i in cfg["input"]} == {i["name"] for i in g["inputs"]}
    record = json.loads((bundle_dir / "training_record.json").read_text())
    assert record["seed"] == 0 and record["transformer"]["val_pa_mpjpe_mm"] > 0
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


@pytest.mark.parametrize("frames", [1, 2, 40])
def test_tracks_of_any_length_give_bodies_and_a_mesh(stage: BodyStage, frames: int) -> None:
    out = stage.run(stage.rest_pose_track(frames), NullContext())
    (track,) = out.tracks
    assert track.joints.shape == (frames, 24, 3) and np.isfinite(track.joints).all()
    assert (track.joints[..., 2] < 0).all()  # in front of the camera
    assert np.isfinite(track.reproj_after_px).all() and (track.reproj_after_px >= 0).all()
    assert out.artifacts["mesh_track0.glb"][:4] == b"glTF" and "mesh.npz" in out.artifacts
