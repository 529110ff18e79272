"""OrtBackend on a small ONNX graph built here: real ONNX Runtime sessions, dynamic batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from kinemesh.models.backends import GraphNotLoaded, OrtBackend, run_tensors
from kinemesh.models.backends.ort import ProviderUnavailable, choose_providers


@pytest.fixture(scope="module")
def affine(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """y = x @ W + b with a dynamic batch axis."""
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("g") / "affine.onnx"
    onnx.save(model, path)
    return path, w, b


@pytest.mark.parametrize("batch", [1, 7, 32])
def test_runs_any_batch_and_matches_numpy(affine, batch: int) -> None:
    path, w, b = affine
    backend = OrtBackend(device="cpu")
    backend.load("affine", path)
    x = np.random.default_rng(batch).normal(size=(batch, 4))  # float64 in: cast to the graph's float32
    y = backend.run("affine", {"x": x})["y"]
    assert y.shape == (batch, 3) and y.dtype == np.float32
    np.testing.assert_allclose(y, x.astype(np.float32) @ w + b, atol=1e-5)


def test_describes_its_tensors(affine) -> None:
    backend = OrtBackend(device="cpu")
    backend.load("affine", affine[0])
    (x,), (y,) = backend.inputs("affine"), backend.outputs("affine")
    assert (x.name, x.dtype, x.shape) == ("x", np.float32, ("batch", 4))
    assert (y.name, y.shape) == ("y", ("batch", 3))


def test_wrong_feeds_are_refused(affine) -> None:
    backend = OrtBackend(device="cpu")
    backend.load("affine", affine[0])
    with pytest.raises(ValueError, match="takes inputs"):
        backend.run("affine", {"z": np.zeros((1, 4))})
    with pytest.raises(ValueError, match="rank"):
        backend.run("affine", {"x": np.zeros(4)})
    with pytest.raises(GraphNotLoaded):
        backend.run("missing", {"x": np.zeros((1, 4))})


def test_provider_choice_on_this_machine() -> None:
    import onnxruntime as ort

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    assert choose_providers("auto")[0] == ("CUDAExecutionProvider" if has_cuda else "CPUExecutionProvider")
    if not has_cuda:
        with pytest.raises(ProviderUnavailable, match="CUDA requested"):
            choose_providers("cuda")
    with pytest.raises(ValueError):
        choose_providers("tpu")


@pytest.mark.parametrize("batch", [1, 5, 64])
def test_bound_run_on_torch_tensors_equals_the_numpy_run(affine, batch: int) -> None:
    """IO binding: inputs bound where they lie, outputs allocated by ONNX Runtime and handed to torch
    through DLPack; same numbers as `run`, no copy between devices."""
    path, w, b = affine
    backend = OrtBackend(device="cpu")
    backend.load("affine", path)
    x = torch.randn(batch, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(batch))
    y = backend.run_bound("affine", {"x": x})["y"]  # float64 in: cast to float32 on its device
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32 and tuple(y.shape) == (batch, 3)
    assert torch.equal(y, torch.from_numpy(backend.run("affine", {"x": x.numpy()})["y"]))
    np.testing.assert_allclose(y.numpy(), x.float().numpy() @ w + b, atol=1e-5)
    first = y.clone()
    backend.run_bound("affine", {"x": torch.zeros(batch, 4)})  # a later call does not overwrite earlier outputs
    assert torch.equal(y, first) and backend.host_copies == 0


def test_bound_run_refuses_wrong_feeds(affine) -> None:
    backend = OrtBackend(device="cpu")
    backend.load("affine", affine[0])
    with pytest.raises(ValueError, match="takes inputs"):
        backend.run_bound("affine", {"z": torch.zeros(1, 4)})
    with pytest.raises(ValueError, match="rank"):
        backend.run_bound("affine", {"x": torch.zeros(4)})
    with pytest.raises(GraphNotLoaded):
        backend.run_bound("missing", {"x": torch.zeros(1, 4)})


def test_bound_run_reads_non_contiguous_views(affine) -> None:
    """A transposed or sliced view is bound through a contiguous copy, not read with the wrong strides."""
    path, w, b = affine
    backend = OrtBackend(device="cpu")
    backend.load("affine", path)
    x = torch.randn(4, 10)[:, ::2].T  # (5, 4), non-contiguous
    y = run_tensors(backend, "affine", {"x": x})["y"]
    np.testing.assert_allclose(y.numpy(), x.numpy() @ w + b, atol=1e-5)


class _NumpyOnly:
    """A backend with `run` only (as TritonBackend): run_tensors goes through numpy for it."""

    def __init__(self, inner: OrtBackend) -> None:
        self.inner = inner

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.inner.run(graph, feeds)


def test_run_tensors_serves_backends_without_binding(affine) -> None:
    backend = OrtBackend(device="cpu")
    backend.load("affine", affine[0])
    x = torch.randn(3, 4)
    bound = run_tensors(backend, "affine", {"x": x})["y"]
    host = run_tensors(_NumpyOnly(backend), "affine", {"x": x})["y"]
    assert isinstance(host, torch.Tensor) and host.device == x.device
    assert torch.equal(bound, host)


CUDA = torch.cuda.is_available() and "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers()


@pytest.mark.skipif(not CUDA, reason="needs a GPU with onnxruntime-gpu (bench/gpu.sh covers the CUDA path there); "
                                     "this machine has neither")
def test_bound_run_on_cuda_tensors_stays_on_the_gpu(affine) -> None:
    path, w, b = affine
    backend = OrtBackend(device="cuda")
    backend.load("affine", path)
    x = torch.randn(64, 4, device="cuda")
    y = backend.run_bound("affine", {"x": x})["y"]
    assert y.device.type == "cuda" and backend.host_copies == 0
    first = y.clone()
    backend.run_bound("affine", {"x": torch.zeros(64, 4, device="cuda")})  # ONNX Runtime's pool reuses memory
    assert torch.equal(y, first)
    np.testing.assert_allclose(y.cpu().numpy(), x.cpu().numpy() @ w + b, atol=1e-4)
