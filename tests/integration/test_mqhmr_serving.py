"""MQ-HMR served: an untrained graph is refused with a typed error naming its checkpoint (stage,
pipeline and the HTTP API), a bundle built from an operator's checkpoint records it and serves
MQ-HMR on a real clip from person crops, and a checkpoint of the wrong shape fails the build
naming the tensor and both shapes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from kinemesh.models.backends import OrtBackend
from kinemesh.models.export.bundle import open_bundle, sha256_file
from kinemesh.models.registry import create_model
from kinemesh.services.client import ApiError, Client
from kinemesh.services.common.errors import ModelUntrained
from kinemesh.services.common.schemas import JobOptions
from kinemesh.services.common.settings import Settings
from kinemesh.services.worker.pipeline import Pipeline
from kinemesh.services.worker.stages import body as body_stage
from kinemesh.services.worker.stages import hands as hand_stage
from kinemesh.services.worker.stages.base import NullContext
from kinemesh.services.worker.stages.body import BodyStage
from kinemesh.services.worker.stages.decode import DecodeStage
from kinemesh.services.worker.stages.hands import HandStage
from kinemesh.services.worker.stages.keypoints import KeypointStage


def test_untrained_mqhmr_is_refused_naming_its_checkpoint(model_dir: Path) -> None:
    stage = BodyStage(model_dir / "bundle" / "default")
    assert stage.servable == ["genhmr"]
    with pytest.raises(ModelUntrained) as exc:
        stage.require("mq-hmr")
    err = exc.value
    assert err.code == "model_untrained" and err.http_status == 503
    assert "mqhmr_small" in err.detail and "kinemesh bundle build --config small --weights DIR" in err.detail
    assert err.extra["graph"] == "mqhmr" and "mqhmr.safetensors" in err.extra["checkpoint"]
    stage.require("genhmr")  # the trained default is served


def test_the_pipeline_refuses_before_any_work(model_dir: Path, clips: dict[str, Path]) -> None:
    class Ctx:
        stages: list[str] = []

        def progress(self, stage: str, fraction: float) -> None:
            self.stages.append(stage)

        def check_cancelled(self) -> None:
            return None

    ctx = Ctx()
    pipeline = Pipeline(Settings(model_dir=model_dir))
    try:
        with pytest.raises(ModelUntrained):
            pipeline.run(clips["single_cam01"], JobOptions(body_model="mq-hmr"), ctx)
    finally:
        pipeline.close()
    assert ctx.stages == []  # not even the decode stage started


def test_the_api_refuses_an_untrained_body_model(stack, clips: dict[str, Path]) -> None:
    client = Client(stack.url, stack.create_key("mq"))
    with pytest.raises(ApiError) as exc:
        client.submit(clips["single_cam01"], body_model="mq-hmr")
    assert (exc.value.status, exc.value.code) == (503, "model_untrained"), exc.value.problem
    assert "kinemesh bundle build" in exc.value.problem["checkpoint"]
    assert client.http.get("/v1/jobs").json()["items"] == []  # nothing was queued or stored


PARTS = {"mqhmr": ("mqhmr_small", {"shape_dim": 10}), "vit_backbone": ("vit_small_256x192", {}),
         "genhmr": ("genhmr_image_small", {"shape_dim": 10}), "pose_tokenizer": ("pose_tokenizer_small", {}),
         "hand_vit_backbone": ("vit_small_256x192", {}), "hand_transformer": ("mmhmr_hand_image_small", {}),
         "hand_tokenizer": ("hand_tokenizer_small", {})}


class CountingBackend(OrtBackend):
    """ONNX Runtime, counting the items each graph was called on."""

    def __init__(self) -> None:
        super().__init__(device="cpu")
        self.items: dict[str, int] = {}

    def run_bound(self, graph, feeds):
        self.items[graph] = self.items.get(graph, 0) + len(next(iter(feeds.values())))
        return super().run_bound(graph, feeds)


def _checkpoint(folder: Path, part: str = "mqhmr", **overrides) -> Path:
    """An operator's checkpoint for `part` of the small config (random weights: what matters here is
    that they are loaded, recorded and served)."""
    preset, defaults = PARTS[part]
    torch.manual_seed(3)
    model = create_model(preset, **{**defaults, **overrides})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{part}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _build(weights: Path, out: Path, body_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kinemesh", "bundle", "build", "--config", "small", "--weights",
                           str(weights), "--body", str(body_file), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tracks(model_dir: Path, clips: dict[str, Path]):
    video = DecodeStage().open(clips["single_cam01"], 30.0, limits=Settings())
    with KeypointStage(model_dir, max_people=1) as kps:
        return video, kps.run(video, NullContext())


def test_a_bundle_from_checkpoints_serves_both_body_models_from_crops(body_file: Path, model_dir: Path, tracks,
                                                                      tmp_path: Path, monkeypatch) -> None:
    """MQ-HMR, GenHMR conditioned on the ViT's tokens of each crop, and the hand model conditioned on its
    ViT's tokens of each hand crop (MMHMR's cross-attention), from the operator's files."""
    files = {part: _checkpoint(tmp_path / "weights", part) for part in PARTS}
    done = _build(tmp_path / "weights", tmp_path / "bundle", body_file)
    assert done.returncode == 0, done.stderr
    bundle = open_bundle(tmp_path / "bundle")
    for graph, part in (("mqhmr", "mqhmr"), ("vit_backbone", "vit_backbone"), ("genhmr_step", "genhmr"),
                        ("tokenizer_decode", "pose_tokenizer"), ("tokenizer_encode", "pose_tokenizer"),
                        ("hand_vit_backbone", "hand_vit_backbone"), ("hand_step", "hand_transformer"),
                        ("hand_tokenizer_decode", "hand_tokenizer")):
        assert bundle.weights(graph) == {"status": "checkpoint", "file": f"{part}.safetensors",
                                         "sha256": sha256_file(files[part])}, graph
    assert any(t["name"] == "image_tokens" for t in bundle.manifest["graphs"]["genhmr_step"]["inputs"])
    show = subprocess.run([sys.executable, "-m", "kinemesh", "bundle", "show", str(tmp_path / "bundle")],
                          capture_output=True, text=True, timeout=120)
    assert "operator checkpoint mqhmr.safetensors" in show.stdout and "UNTRAINED" not in show.stdout
    stage = BodyStage(tmp_path / "bundle")
    assert stage.servable == ["genhmr", "mq-hmr"]
    video, kp = tracks
    results = {}
    for body_model in ("genhmr", "mq-hmr"):
        res = results[body_model] = stage.run(kp, NullContext(), body_model=body_model, video=video)
        (tb,) = res.tracks
        assert len(tb.frame_index) == sum(1 for f in kp.frames if f.people), body_model
        assert all(torch.isfinite(torch.from_numpy(a)).all() for a in (tb.rotations, tb.joints, tb.translation))
        # the weights are random, so the start is far off; the refinement still fits the keypoints
        assert tb.reproj_after_px.mean() < 0.5 * tb.reproj_before_px.mean(), body_model
        assert "mesh_track0.glb" in res.artifacts
    # MQ-HMR's graph runs as crops accumulate: many small flushes give the bodies of one
    monkeypatch.setattr(body_stage, "CHUNK", 7)
    (flushed,) = stage.run(kp, NullContext(), body_model="mq-hmr", video=video, meshes=False).tracks
    (whole,) = results["mq-hmr"].tracks
    assert np.abs(flushed.joints - whole.joints).max() < 1e-4
    backend = CountingBackend()
    hands = HandStage(model_dir, bundle=bundle, backend=backend)
    try:
        assert hands.pose_model == "mmhmr_hand_image_small"
        found = hands.run(video, kp, NullContext())
    finally:
        hands.close()
    posed = [h for sides in found.hands.values() for h in sides.values()]
    assert len(posed) > 10 and all(h.pose is not None and h.crop is None for h in posed)
    assert backend.items["hand_vit_backbone"] == len(posed)  # one crop per found hand, read by the step
    assert backend.items["hand_step"] == 5 * len(posed)  # 5 decoding iterations
    assert all(np.isfinite(h.pose.joints_3d).all() for h in posed)
    # a long clip's hands are posed in chunks as they are found (their crops dropped): the same poses
    monkeypatch.setattr(hand_stage, "POSE_CHUNK", 7)
    hands = HandStage(model_dir, bundle=bundle, backend=backend)
    try:
        chunked = hands.run(video, kp, NullContext())
    finally:
        hands.close()
    again = [h for sides in chunked.hands.values() for h in sides.values()]
    assert len(again) == len(posed)
    assert max(float(np.abs(a.pose.joints_3d - b.pose.joints_3d).max()) for a, b in zip(again, posed, strict=True)) < 1e-4


def test_a_bundle_missing_a_checkpoint_refuses_that_model(body_file: Path, model_dir: Path, tmp_path: Path) -> None:
    _checkpoint(tmp_path / "weights", "mqhmr")
    done = _build(tmp_path / "weights", tmp_path / "bundle", body_file)
    assert done.returncode == 0, done.stderr
    assert "mqhmr trained" in done.stdout and "genhmr_step UNTRAINED" in done.stdout
    stage = BodyStage(tmp_path / "bundle")
    assert stage.servable == ["mq-hmr"]
    with pytest.raises(ModelUntrained, match=r"genhmr_image_small checkpoint: put it at DIR/genhmr\.safetensors"):
        stage.require("genhmr")
    assert "hand_step UNTRAINED" in done.stdout
    hands = HandStage(model_dir, bundle=stage.bundle, backend=stage.backend)
    try:
        assert hands.pose_model is None  # untrained hand graphs: keypoints only, never an untrained pose
    finally:
        hands.close()


def test_a_checkpoint_of_the_wrong_shape_names_the_tensor(body_file: Path, tmp_path: Path) -> None:
    _checkpoint(tmp_path / "weights", "mqhmr", dim=96)  # a decoder of another width
    done = _build(tmp_path / "weights", tmp_path / "bundle", body_file)
    assert done.returncode == 2
    assert re.search(r"bundle not built: mqhmr\.safetensors: tensor '[\w.]+' has shape \([\d, ]*96[\d, ]*\) in the "
                     r"checkpoint but \([\d, ]*128[\d, ]*\) in MQHMR", done.stderr), done.stderr
    assert not (tmp_path / "bundle").exists()  # no bundle was written
