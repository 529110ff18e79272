"""The parts of the GPU path that run on this CPU: IO-bound graph calls on torch tensors through the
whole body stage, fp16 bundles with their measured error, batch sizes tuned into the manifest, and
the worker's device choice. (CUDA itself is exercised by bench/gpu.sh on a GPU machine.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
import torch

from kinemesh.models.backends import OrtBackend, run_tensors
from kinemesh.models.backends.base import random_inputs
from kinemesh.models.export.bundle import main as bundle_main
from kinemesh.models.export.bundle import open_bundle
from kinemesh.models.export.fp16 import build_fp16_bundle
from kinemesh.models.export.tuning import choose, tune_bundle
from kinemesh.models.genhmr.inference import full_rotations, predict_bodies
from kinemesh.models.training.synth import generate
from kinemesh.services.common.errors import ModelUnavailable
from kinemesh.services.common.settings import Settings
from kinemesh.services.worker.pipeline import Pipeline
from kinemesh.services.worker.stages.base import NullContext
from kinemesh.services.worker.stages.body import CPU_STEP_BATCH, BodyStage


@pytest.fixture(scope="module")
def bundle_dir(model_dir: Path) -> Path:
    return model_dir / "bundle" / "default"


@pytest.fixture(scope="module")
def fp16_dir(bundle_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fp16") / "bundle"
    build_fp16_bundle(bundle_dir, out)
    return out


def test_every_graph_runs_bound_to_torch_tensors_as_it_runs_on_numpy(bundle_dir: Path) -> None:
    """IO binding (inputs bound in place, outputs through DLPack) gives the numpy path's numbers
    exactly, for every graph of the default bundle, without a copy between devices."""
    bundle = open_bundle(bundle_dir)
    backend = OrtBackend(device="cpu")
    gen = torch.Generator().manual_seed(0)
    for graph in bundle.manifest["graphs"]:
        backend.load(graph, bundle.graph_path(graph))
        feeds = random_inputs(backend.inputs(graph), 3, bundle.token_range(graph), torch.device("cpu"), gen)
        bound = backend.run_bound(graph, feeds)
        plain = backend.run(graph, {k: v.numpy() for k, v in feeds.items()})
        assert set(bound) == set(plain), graph
        for name, value in plain.items():
            assert torch.equal(bound[name], torch.from_numpy(value)), (graph, name)
    assert backend.host_copies == 0


def test_fp16_bundle_keeps_the_interface_and_records_a_small_measured_error(bundle_dir: Path, fp16_dir: Path) -> None:
    src, half = open_bundle(bundle_dir).manifest, open_bundle(fp16_dir).manifest  # sha256 of every file checked
    assert half["name"] == f"{src['name']}-fp16" and set(half["graphs"]) == set(src["graphs"])
    for graph, entry in half["graphs"].items():
        assert entry["inputs"] == src["graphs"][graph]["inputs"]  # float32 in and out: callers unchanged
        weights = onnx.load(str(fp16_dir / entry["file"])).graph.initializer
        halves = sum(w.data_type == onnx.TensorProto.FLOAT16 for w in weights)
        assert halves > len(weights) / 2, (graph, halves, len(weights))
        p = entry["precision"]
        assert p["dtype"] == "float16"
        assert max(p["fp16_max_rel"].values()) > 0, graph  # measured (an untrained head's constant output is exact)
        assert max(p["fp16_max_rel"].values()) < 0.01, (graph, p["fp16_max_rel"])
        assert all(v < 0.02 for v in p.get("fp16_mismatch", {}).values()), (graph, p)


def test_fp16_bundle_decodes_nearly_the_same_bodies(bundle_dir: Path, fp16_dir: Path) -> None:
    """Task level: the fp16 step and decoder graphs pick the same pose tokens for most frames, and
    the bodies they give differ by a few millimetres."""
    full, half = BodyStage(bundle_dir), BodyStage(fp16_dir)
    data = generate(full.layer, 4, 16, seed=41, num_shape=full.layer.config.num_shape)
    a = predict_bodies(full.step_fn, full.decoder_fn, data.keypoints, full.iterations)
    b = predict_bodies(half.step_fn, half.decoder_fn, data.keypoints, half.iterations)
    agree = float((a.token_ids == b.token_ids).float().mean())
    assert agree > 0.9, agree

    def joints(p) -> torch.Tensor:
        with torch.no_grad():
            return full.layer.skeleton(full_rotations(p.body6d, p.orient6d), p.shape, torch.zeros(len(p.shape), 3))[0]

    diff_mm = float((joints(a) - joints(b)).norm(dim=-1).mean()) * 1000
    assert diff_mm < 10, diff_mm


def test_tuning_records_batches_the_stages_then_use(bundle_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    entry = tune_bundle(copy, "cpu", ["genhmr_step", "tokenizer_decode"], max_batch=8, repeats=2)
    for graph, e in entry["graphs"].items():
        curve = {int(b): v for b, v in e["items_per_s"].items()}
        assert set(curve) <= {1, 2, 4, 8} and 1 in curve and all(v > 0 for v in curve.values()), graph
        assert e["batch"] == choose(curve)
    bundle = open_bundle(copy)  # the manifest is not among the hashed files: still a valid bundle
    assert bundle.manifest["tuning"]["cpu"]["graphs"] == entry["graphs"]
    tuned = entry["graphs"]["genhmr_step"]["batch"]
    assert bundle.batch_for("genhmr_step", OrtBackend(device="cpu"), 99) == tuned
    assert bundle.batch_for("genhmr_step", object(), 99) == 99  # no device (Triton): the server batches
    assert bundle.batch_for("mqhmr", OrtBackend(device="cpu"), 99) == 99  # not tuned: the default
    assert BodyStage(copy).step_fn.max_batch == tuned
    assert BodyStage(bundle_dir).step_fn.max_batch == CPU_STEP_BATCH


def test_tuned_batch_is_the_smallest_near_the_best() -> None:
    assert choose({1: 100.0, 2: 180.0, 4: 200.0, 8: 205.0, 16: 190.0}) == 4
    assert choose({1: 50.0, 2: 40.0}) == 1
    assert choose({1: 10.0, 2: 20.0, 4: 40.0}, tolerance=0.0) == 4


def test_bundle_cli_builds_fp16_and_tunes(bundle_dir: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    assert bundle_main(["fp16", str(copy), "--graphs", "tokenizer_decode"]) == 0
    half = json.loads((tmp_path / "bundle-fp16" / "manifest.json").read_text())
    assert [g for g, e in half["graphs"].items() if "precision" in e] == ["tokenizer_decode"]
    assert bundle_main(["tune", str(copy), "--graphs", "tokenizer_decode", "--max-batch", "2"]) == 0
    assert "tokenizer_decode: batch" in capsys.readouterr().out
    assert bundle_main(["fp16", str(copy), "--graphs", "nope"]) == 2
    assert "no graph(s) ['nope']" in capsys.readouterr().err


def test_the_body_stage_runs_on_bound_tensors_end_to_end(bundle_dir: Path) -> None:
    """The stage's graph calls go through `run_tensors` (IO binding on ONNX Runtime): no feed is
    copied between devices, and the numpy path (a backend without binding) gives the same bodies."""
    backend = OrtBackend(device="cpu")
    stage = BodyStage(bundle_dir, backend=backend)
    tracks = stage.rest_pose_track(12)
    bound = stage.run(tracks, NullContext(), meshes=False).tracks[0]
    assert backend.host_copies == 0

    class NumpyOnly:  # the TritonBackend's shape of interface: run() on numpy only
        device = None

        def load(self, graph, path):
            backend.load(graph, path)

        def run(self, graph, feeds):
            return backend.run(graph, feeds)

    plain = BodyStage(bundle_dir, backend=NumpyOnly()).run(tracks, NullContext(), meshes=False).tracks[0]
    assert torch.allclose(torch.from_numpy(bound.joints), torch.from_numpy(plain.joints), atol=1e-5)
    out = run_tensors(NumpyOnly(), "tokenizer_decode", {"indices": torch.zeros(2, 32, dtype=torch.int64)})
    assert out["rot6d"].shape == (2, 21, 6)


def test_the_worker_device_setting(model_dir: Path) -> None:
    """`auto` resolves once for ONNX Runtime and PyTorch: the GPU only when both have one; `cuda` where
    either lacks it is a typed error (a worker exits at start), not a crash in a job."""
    import onnxruntime

    base = dict(model_dir=model_dir)
    gpu = torch.cuda.is_available() and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    pipeline = Pipeline(Settings(device="auto", **base))
    assert pipeline.device() == ("cuda" if gpu else "cpu")
    assert pipeline.backend().device == pipeline.device() and pipeline.torch_device().type == pipeline.device()
    cpu = Pipeline(Settings(device="cpu", **base))
    assert cpu.device() == "cpu" and cpu.torch_device() == torch.device("cpu") and cpu.backend().device == "cpu"
    if not gpu:
        with pytest.raises(ModelUnavailable, match="CUDA"):
            Pipeline(Settings(device="cuda", **base)).body_stage()
