"""MQ-HMR served: an untrained graph is refused with a typed error naming its checkpoint (stage,
pipeline and the HTTP API), a bundle built from an operator's checkpoint records it and serves
MQ-HMR on a real clip from person crops, and a checkpoint of the wrong shape fails the build
naming the tensor and both shapes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from kinemesh.models.export.bundle import open_bundle, sha256_file
from kinemesh.models.registry import create_model
from kinemesh.services.client import ApiError, Client
from kinemesh.services.common.errors import ModelUnavailable, ModelUntrained
from kinemesh.services.common.schemas import JobOptions
from kinemesh.services.common.settings import Settings
from kinemesh.services.worker.pipeline import Pipeline
from kinemesh.services.worker.stages.base import NullContext
from kinemesh.services.worker.stages.body import BodyStage
from kinemesh.services.worker.stages.decode import DecodeStage
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


def _checkpoint(folder: Path, **overrides) -> Path:
    torch.manual_seed(3)
    model = create_model("mqhmr_small", shape_dim=10, **overrides)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mqhmr.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _build(weights: Path, out: Path, body_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kinemesh", "bundle", "build", "--config", "small", "--weights",
                           str(weights), "--body", str(body_file), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)


def test_a_bundle_from_a_checkpoint_serves_mqhmr_on_a_real_clip(model_dir: Path, body_file: Path,
                                                                 clips: dict[str, Path], tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "weights")
    done = _build(ckpt.parent, tmp_path / "bundle", body_file)
    assert done.returncode == 0, done.stderr
    assert "mqhmr trained" in done.stdout
    bundle = open_bundle(tmp_path / "bundle")
    weights = bundle.weights("mqhmr")
    assert weights == {"status": "checkpoint", "file": "mqhmr.safetensors", "sha256": sha256_file(ckpt)}
    show = subprocess.run([sys.executable, "-m", "kinemesh", "bundle", "show", str(tmp_path / "bundle")],
                          capture_output=True, text=True, timeout=120)
    assert "operator checkpoint mqhmr.safetensors" in show.stdout
    stage = BodyStage(tmp_path / "bundle")
    assert stage.servable == ["mq-hmr"]
    with pytest.raises(ModelUnavailable, match="no graph 'genhmr_step'"):
        stage.require("genhmr")
    video = DecodeStage().open(clips["single_cam01"], 30.0, limits=Settings())
    with KeypointStage(model_dir, max_people=1) as kps:
        tracks = kps.run(video, NullContext())
    res = stage.run(tracks, NullContext(), body_model="mq-hmr", video=video)
    (tb,) = res.tracks
    assert len(tb.frame_index) == sum(1 for f in tracks.frames if f.people)
    assert all(torch.isfinite(torch.from_numpy(a)).all() for a in (tb.rotations, tb.joints, tb.translation))
    # the weights are random, so the start is far off; the query refinement still fits the keypoints
    assert tb.reproj_after_px.mean() < 0.5 * tb.reproj_before_px.mean()
    assert "mesh_track0.glb" in res.artifacts


def test_a_checkpoint_of_the_wrong_shape_names_the_tensor(body_file: Path, tmp_path: Path) -> None:
    _checkpoint(tmp_path / "weights", dim=96)  # a decoder of another width
    done = _build(tmp_path / "weights", tmp_path / "bundle", body_file)
    assert done.returncode == 2
    assert re.search(r"bundle not built: mqhmr\.safetensors: tensor '[\w.]+' has shape \([\d, ]*96[\d, ]*\) in the "
                     r"checkpoint but \([\d, ]*128[\d, ]*\) in MQHMR", done.stderr), done.stderr
    assert not (tmp_path / "bundle").exists()  # no bundle was written
