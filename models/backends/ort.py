"""In-process ONNX Runtime backend: CUDA execution provider on a GPU, CPU otherwise."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort

from kinemesh.models.backends.base import GraphNotLoaded, TensorSpec, prepare_feeds

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
}


def choose_providers(device: str = "auto") -> list[str]:
    """`auto`: CUDA when this onnxruntime build has it, else CPU; `cpu`/`cuda` force one."""
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise RuntimeError(f"CUDA requested but this onnxruntime offers only {available}")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device != "auto":
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    return (["CUDAExecutionProvider", "CPUExecutionProvider"] if "CUDAExecutionProvider" in available
            else ["CPUExecutionProvider"])


def _specs(args) -> list[TensorSpec]:
    return [TensorSpec(a.name, np.dtype(_ORT_TYPES.get(a.type, np.float32)),
                       tuple(d if isinstance(d, int) else (d or None) for d in a.shape)) for a in args]


class OrtBackend:
    """One InferenceSession per graph, created once and shared by the worker's jobs."""

    name = "onnxruntime"

    def __init__(self, device: str = "auto", intra_op_threads: int = 0) -> None:
        self.providers = choose_providers(device)
        self.intra_op_threads = intra_op_threads
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._lock = threading.Lock()

    def load(self, graph: str, path: Path) -> None:
        with self._lock:
            if graph in self._sessions:
                return
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = self.intra_op_threads
            self._sessions[graph] = ort.InferenceSession(str(path), options, providers=self.providers)

    def _session(self, graph: str) -> ort.InferenceSession:
        try:
            return self._sessions[graph]
        except KeyError:
            raise GraphNotLoaded(f"graph {graph!r} is not loaded (loaded: {sorted(self._sessions)})") from None

    def inputs(self, graph: str) -> list[TensorSpec]:
        return _specs(self._session(graph).get_inputs())

    def outputs(self, graph: str) -> list[TensorSpec]:
        return _specs(self._session(graph).get_outputs())

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._session(graph)
        prepared = prepare_feeds(graph, _specs(session.get_inputs()), feeds)
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, prepared), strict=True))
