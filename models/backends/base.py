"""The inference-backend interface.

A backend serves named graphs (ONNX files of a bundle) and runs them on numpy arrays. The same
ONNX files serve both implementations: in-process ONNX Runtime (`OrtBackend`) and a Triton client
(`TritonBackend`, gRPC). Stages depend on this interface only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch


class GraphNotLoaded(KeyError):
    """`run` named a graph the backend has not loaded (or a server does not serve it as the bundle says)."""


class BackendUnavailable(ConnectionError):
    """A remote backend (Triton) could not be reached or failed a call: transient, the job may retry."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]  # None or a symbol name for a dynamic axis


class InferenceBackend(Protocol):
    name: str

    def load(self, graph: str, path: Path) -> None:
        """Load the ONNX file at `path` under the name `graph` (idempotent)."""

    def inputs(self, graph: str) -> list[TensorSpec]: ...

    def outputs(self, graph: str) -> list[TensorSpec]: ...

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run `graph`; every declared input must be fed with a matching dtype and rank."""


def prepare_feeds(graph: str, specs: list[TensorSpec], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`feeds` checked against a graph's inputs (names, ranks) and made contiguous in their dtypes;
    ValueError names what does not fit."""
    by_name = {s.name: s for s in specs}
    if set(feeds) != set(by_name):
        raise ValueError(f"graph {graph!r} takes inputs {sorted(by_name)}, got {sorted(feeds)}")
    prepared = {}
    for name, spec in by_name.items():
        array = np.asarray(feeds[name])
        if array.ndim != len(spec.shape):
            raise ValueError(f"{graph}.{name}: rank {array.ndim}, expected shape {spec.shape}")
        prepared[name] = np.ascontiguousarray(array, dtype=spec.dtype)
    return prepared


def run_tensors(backend: InferenceBackend, graph: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Run `graph` on torch tensors; outputs are torch tensors on the feeds' device.

    A backend that binds device memory (`OrtBackend.run_bound`: IO binding, DLPack) runs in place,
    so a CUDA job keeps its tensors on the GPU from graph to refinement; any other (Triton, whose
    gRPC transport is host memory anyway) goes through numpy."""
    bound = getattr(backend, "run_bound", None)
    if bound is not None:
        out = bound(graph, feeds)
    else:
        out = {k: torch.from_numpy(np.asarray(v))
               for k, v in backend.run(graph, {k: t.detach().cpu().numpy() for k, t in feeds.items()}).items()}
    device = next(iter(feeds.values())).device
    return {k: v.to(device) for k, v in out.items()}


def random_inputs(specs: list[TensorSpec], batch: int, int_high: int, device: torch.device,
                  gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Inputs for a graph's TensorSpecs at `batch`: standard normal floats, integers in [0, int_high)."""
    feeds = {}
    for s in specs:
        shape = (batch, *(d if isinstance(d, int) else 1 for d in s.shape[1:]))
        if s.dtype.kind in "iu":
            feeds[s.name] = torch.randint(0, int_high, shape, generator=gen).to(device)
        else:
            feeds[s.name] = torch.randn(shape, generator=gen).to(device)
    return feeds
