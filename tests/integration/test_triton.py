"""The Triton backend against a real tritonserver (nvidia-pytriton's, in its own virtualenv, serving
the default bundle's ONNX files): every graph gives ONNX Runtime's outputs, calls over the model's
max_batch_size are split, the body and kinematics stages give the same results through either
backend, a server holding another interface is refused and an unreachable one is a transient error.
Every generated config.pbtxt parses into Triton's ModelConfig protobuf."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from kinemesh.models.backends import BackendUnavailable, GraphNotLoaded, OrtBackend, TritonBackend
from kinemesh.models.export.bundle import open_bundle
from kinemesh.services.devstack import free_port
from kinemesh.services.worker.stages.base import NullContext
from kinemesh.services.worker.stages.body import BodyStage
from kinemesh.services.worker.stages.decode import DecodeStage
from kinemesh.services.worker.stages.keypoints import KeypointStage
from kinemesh.services.worker.stages.kinematics import KinematicsStage
from tests.conftest import VAR
from tests.triton.server import TritonServer


@pytest.fixture(scope="module")
def bundle_dir(model_dir: Path) -> Path:
    return model_dir / "bundle" / "default"


@pytest.fixture(scope="module")
def triton(bundle_dir: Path) -> Iterator[TritonServer]:
    server = TritonServer.start(bundle_dir, VAR / "cache" / "triton-venv")
    try:
        yield server
    finally:
        server.stop()


def _feeds(backend: OrtBackend, graph: str, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for spec in backend.inputs(graph):
        shape = (batch, *[d for d in spec.shape[1:]])
        if np.issubdtype(spec.dtype, np.integer):
            feeds[spec.name] = rng.integers(0, 10, shape).astype(spec.dtype)  # valid token ids for every graph
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feeds


def test_config_pbtxt_parses_into_tritons_model_config(bundle_dir: Path) -> None:
    bundle = open_bundle(bundle_dir)
    for graph, entry in bundle.manifest["graphs"].items():
        config = text_format.Parse((bundle_dir / entry["triton_config"]).read_text(), model_config_pb2.ModelConfig())
        assert config.name == graph and config.backend == "onnxruntime" and config.max_batch_size == 256
        assert [t.name for t in config.input] == [t["name"] for t in entry["inputs"]]
        assert [t.name for t in config.output] == [t["name"] for t in entry["outputs"]]
        assert [list(t.dims) for t in config.input] == [t["dims"] for t in entry["inputs"]]
        assert config.HasField("dynamic_batching")


def test_every_graph_matches_onnx_runtime(triton: TritonServer, bundle_dir: Path) -> None:
    bundle = open_bundle(bundle_dir)
    remote, local = TritonBackend(triton.url), OrtBackend(device="cpu")
    rng = np.random.default_rng(0)
    for graph in bundle.manifest["graphs"]:
        path = bundle.graph_path(graph)
        remote.load(graph, path)
        local.load(graph, path)
        assert [(s.name, s.dtype) for s in remote.inputs(graph)] == [(s.name, s.dtype) for s in local.inputs(graph)]
        for batch in (1, 3):
            feeds = _feeds(local, graph, batch, rng)
            got, want = remote.run(graph, feeds), local.run(graph, feeds)
            assert set(got) == set(want)
            for name in want:
                assert got[name].shape == want[name].shape, (graph, name)
                assert np.abs(got[name].astype(np.float64) - want[name]).max() <= 1e-5, (graph, name)
    feeds = _feeds(local, "tokenizer_decode", 300, rng)  # over max_batch_size 256: two calls
    assert np.array_equal(remote.run("tokenizer_decode", feeds)["rot6d"], local.run("tokenizer_decode", feeds)["rot6d"])


def test_the_stages_give_the_same_results_through_triton(triton: TritonServer, model_dir: Path, bundle_dir: Path,
                                                         clips: dict[str, Path]) -> None:
    from kinemesh.services.common.settings import Settings

    video = DecodeStage().open(clips["single_cam01"], 30.0, limits=Settings())
    with KeypointStage(model_dir, max_people=1) as kps:
        tracks = kps.run(video, NullContext())
    results = {}
    for name, backend in (("triton", TritonBackend(triton.url)), ("onnxruntime", OrtBackend(device="cpu"))):
        body = BodyStage(bundle_dir, backend=backend)
        bodies = body.run(tracks, NullContext(), meshes=False)
        kinematics = KinematicsStage(model_dir, body.layer, body.bundle, body.backend).run(bodies, 30.0, NullContext())
        results[name] = (bodies.tracks[0], kinematics.tracks[0])
    (tb, tk), (ob, ok) = results["triton"], results["onnxruntime"]
    assert np.allclose(tb.rotations, ob.rotations, atol=1e-4) and np.allclose(tb.joints, ob.joints, atol=1e-4)
    assert np.allclose(tk.values, ok.values, atol=1e-4)


def test_a_server_with_another_interface_is_refused(triton: TritonServer, bundle_dir: Path) -> None:
    bundle = open_bundle(bundle_dir)
    with pytest.raises(GraphNotLoaded, match="is the server's repository this bundle"):
        TritonBackend(triton.url).load("neurik", bundle.graph_path("genhmr_step"))
    with pytest.raises(GraphNotLoaded, match="no ready model"):
        TritonBackend(triton.url).load("no_such_graph", bundle.graph_path("neurik"))


def test_an_unreachable_server_is_a_transient_error(bundle_dir: Path) -> None:
    backend = TritonBackend(f"127.0.0.1:{free_port()}", timeout_s=5)
    with pytest.raises(BackendUnavailable, match="Triton at 127.0.0.1"):
        backend.load("neurik", open_bundle(bundle_dir).graph_path("neurik"))


def test_the_pipeline_turns_a_dead_server_into_a_retryable_error(model_dir: Path) -> None:
    from kinemesh.services.common.errors import InferenceUnavailable
    from kinemesh.services.common.settings import Settings
    from kinemesh.services.worker.pipeline import Pipeline

    pipeline = Pipeline(Settings(model_dir=model_dir, inference_backend="triton", triton_url=f"127.0.0.1:{free_port()}"))
    with pytest.raises(InferenceUnavailable) as exc:
        pipeline.body_stage()
    assert exc.value.retryable and exc.value.code == "inference_unavailable"


def test_the_deployed_triton_loads_every_trained_graph_of_the_bundle(bundle_dir: Path) -> None:
    """docker-compose's and the k8s Triton load exactly the bundle's servable graphs."""
    import yaml

    compose = yaml.safe_load((Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text())
    argv = compose["services"]["triton"]["command"]
    loaded = [a.removeprefix("--load-model=") for a in argv if a.startswith("--load-model=")]
    graphs = open_bundle(bundle_dir).manifest["graphs"]
    assert sorted(loaded) == sorted(g for g, e in graphs.items() if e["trained"])
