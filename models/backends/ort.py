"""In-process ONNX Runtime backend: CUDA execution provider on a GPU, CPU otherwise.

Two ways to run a graph:
  * `run`: numpy in, numpy out (host memory), the `InferenceBackend` interface;
  * `run_bound`: torch tensors in, torch tensors out, on the feeds' device, through ONNX Runtime's
    IO binding. Inputs are bound where they lie (their data pointers, no copy); outputs are
    allocated by ONNX Runtime on the same device and handed to torch through DLPack (no copy). With
    the CUDA execution provider and CUDA tensors, nothing crosses to the host between graphs and
    the PyTorch refinement. A feed on a device the session cannot read (a CUDA tensor for a CPU-only
    onnxruntime build) is copied and counted in `host_copies`, so tests and benchmarks can assert
    there were none.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from kinemesh.models.backends.base import GraphNotLoaded, TensorSpec, prepare_feeds

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
}


class ProviderUnavailable(RuntimeError):
    """The execution provider asked for is not in this onnxruntime build (e.g. cuda on a CPU wheel)."""


def choose_providers(device: str = "auto") -> list[str]:
    """`auto`: CUDA when this onnxruntime build has it, else CPU; `cpu`/`cuda` force one."""
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ProviderUnavailable(f"CUDA requested but this onnxruntime offers only {available} "
                                      "(install onnxruntime-gpu)")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device != "auto":
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    return (["CUDAExecutionProvider", "CPUExecutionProvider"] if "CUDAExecutionProvider" in available
            else ["CPUExecutionProvider"])


_NUMPY_OF_TORCH = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64,
                   torch.int64: np.int64, torch.int32: np.int32, torch.bool: np.bool_}
_TORCH_OF_NUMPY = {np.dtype(v): k for k, v in _NUMPY_OF_TORCH.items()}


def _specs(args) -> list[TensorSpec]:
    return [TensorSpec(a.name, np.dtype(_ORT_TYPES.get(a.type, np.float32)),
                       tuple(d if isinstance(d, int) else (d or None) for d in a.shape)) for a in args]


class OrtBackend:
    """One InferenceSession per graph, created once and shared by the worker's jobs."""

    name = "onnxruntime"

    def __init__(self, device: str = "auto", intra_op_threads: int = 0, device_id: int = 0) -> None:
        self.providers = choose_providers(device)
        self.intra_op_threads = intra_op_threads
        self.device_id = device_id  # the CUDA device the sessions run on
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._lock = threading.Lock()
        self.host_copies = 0  # feeds `run_bound` had to copy between devices (0 on a matched setup)

    @property
    def device(self) -> str:
        """Where the sessions run: "cuda" with the CUDA execution provider, else "cpu"."""
        return "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"

    def load(self, graph: str, path: Path) -> None:
        with self._lock:
            if graph in self._sessions:
                return
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = self.intra_op_threads
            options.log_severity_level = 3  # errors only: optimiser notes (e.g. fp16 nodes left unfolded) are noise
            providers: list = [(p, {"device_id": self.device_id}) if p == "CUDAExecutionProvider" else p
                               for p in self.providers]
            session = ort.InferenceSession(str(path), options, providers=providers)
            if session.get_providers()[0] != self.providers[0]:  # onnxruntime fell back (e.g. no GPU, CUDA libs)
                raise ProviderUnavailable(f"{graph}: {self.providers[0]} did not start (the session runs on "
                                          f"{session.get_providers()}); check the GPU and its CUDA libraries")
            self._sessions[graph] = session

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

    def run_bound(self, graph: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run `graph` on torch tensors through IO binding; outputs are torch tensors on the session's
        device (the feeds' device when it matches). Feeds are checked as `run` checks them (names,
        ranks), cast to the graph's dtypes, and moved to the session's device only when they are not
        on it (counted in `host_copies`)."""
        session = self._session(graph)
        specs = {s.name: s for s in _specs(session.get_inputs())}
        if set(feeds) != set(specs):
            raise ValueError(f"graph {graph!r} takes inputs {sorted(specs)}, got {sorted(feeds)}")
        device = torch.device(self.device, self.device_id) if self.device == "cuda" else torch.device("cpu")
        binding = session.io_binding()
        keep = []  # the bound tensors must outlive the call
        for name, spec in specs.items():
            t = feeds[name]
            if t.dim() != len(spec.shape):
                raise ValueError(f"{graph}.{name}: rank {t.dim()}, expected shape {spec.shape}")
            if t.device != device:
                self.host_copies += 1
            t = t.detach().to(device=device, dtype=_TORCH_OF_NUMPY[spec.dtype]).contiguous()
            keep.append(t)
            binding.bind_input(name, device.type, device.index or 0, spec.dtype, tuple(t.shape), t.data_ptr())
        if device.type == "cuda":  # the feeds were written on torch's stream; ONNX Runtime runs on its own
            torch.cuda.current_stream(device).synchronize()
        names = [o.name for o in session.get_outputs()]
        for name in names:
            binding.bind_output(name, device.type, device.index or 0)
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return {name: torch.from_dlpack(value) for name, value in zip(names, binding.get_outputs(), strict=True)}
