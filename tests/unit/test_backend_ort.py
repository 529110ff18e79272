"""OrtBackend on a small ONNX graph built here: real ONNX Runtime sessions, dynamic batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kinemesh.models.backends import GraphNotLoaded, OrtBackend
from kinemesh.models.backends.ort import choose_providers


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
        with pytest.raises(RuntimeError, match="CUDA requested"):
            choose_providers("cuda")
    with pytest.raises(ValueError):
        choose_providers("tpu")
