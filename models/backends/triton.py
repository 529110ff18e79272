"""Triton backend: the bundle's graphs served by a Triton Inference Server, called over gRPC (the
KServe v2 protocol) with `tritonclient`. The server's model repository is the bundle itself (each
graph's `<graph>/config.pbtxt` and `<graph>/1/model.onnx`, onnxruntime backend), so the same ONNX
files give the same outputs as the in-process ONNX Runtime backend.

`load` does not send the file: it checks that the server has the graph ready and that the model it
serves has the interface the local ONNX file declares (names, types, ranks), so a server holding
another bundle fails at start, not with wrong numbers. Calls larger than the model's
`max_batch_size` are split along the batch axis.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from kinemesh.models.backends.base import BackendUnavailable, GraphNotLoaded, TensorSpec, prepare_feeds

# KServe v2 datatypes <-> numpy
_V2_TYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32,
             "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}
_NP_TO_V2 = {np.dtype(v): k for k, v in _V2_TYPES.items()}


class TritonBackend:
    """InferenceBackend over a Triton server at `url` (host:port of its gRPC endpoint)."""

    name = "triton"

    def __init__(self, url: str, timeout_s: float = 120.0) -> None:
        import tritonclient.grpc as grpcclient  # local: only a Triton deployment needs tritonclient

        self.url = url
        self.timeout_s = timeout_s
        self._grpc = grpcclient
        self._client = grpcclient.InferenceServerClient(url)
        self._models: dict[str, tuple[list[TensorSpec], list[TensorSpec], int]] = {}
        self._lock = threading.Lock()

    def _call(self, what: str, fn, *args, **kwargs):
        from tritonclient.utils import InferenceServerException

        try:
            return fn(*args, **kwargs)
        except InferenceServerException as exc:
            raise BackendUnavailable(f"Triton at {self.url}: {what}: {exc.message()}") from None

    def load(self, graph: str, path: Path) -> None:
        """Check that the server serves `graph` with the interface of the ONNX file at `path`."""
        with self._lock:
            if graph in self._models:
                return
            if not self._call("readiness", self._client.is_model_ready, graph):
                raise GraphNotLoaded(f"Triton at {self.url} has no ready model {graph!r}")
            meta = self._call("metadata", self._client.get_model_metadata, graph, as_json=True)
            config = self._call("config", self._client.get_model_config, graph, as_json=True)["config"]

            def specs(items: list[dict]) -> list[TensorSpec]:
                return [TensorSpec(t["name"], np.dtype(_V2_TYPES[t["datatype"]]),
                                   tuple(None if int(d) < 0 else int(d) for d in t["shape"])) for t in items]

            ins, outs = specs(meta["inputs"]), specs(meta["outputs"])
            _check_interface(graph, self.url, ins + outs, path)
            self._models[graph] = (ins, outs, int(config.get("max_batch_size", 0)))

    def _model(self, graph: str) -> tuple[list[TensorSpec], list[TensorSpec], int]:
        try:
            return self._models[graph]
        except KeyError:
            raise GraphNotLoaded(f"graph {graph!r} is not loaded (loaded: {sorted(self._models)})") from None

    def inputs(self, graph: str) -> list[TensorSpec]:
        return self._model(graph)[0]

    def outputs(self, graph: str) -> list[TensorSpec]:
        return self._model(graph)[1]

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ins, outs, max_batch = self._model(graph)
        arrays = prepare_feeds(graph, ins, feeds)
        batch = next(iter(arrays.values())).shape[0]
        step = max_batch if max_batch > 0 else batch
        parts = [self._infer(graph, {k: v[i:i + step] for k, v in arrays.items()}, outs)
                 for i in range(0, max(batch, 1), max(step, 1))]
        return {o.name: np.concatenate([p[o.name] for p in parts]) for o in outs}

    def _infer(self, graph: str, arrays: dict[str, np.ndarray], outs: list[TensorSpec]) -> dict[str, np.ndarray]:
        inputs = []
        for name, array in arrays.items():
            item = self._grpc.InferInput(name, list(array.shape), _NP_TO_V2[array.dtype])
            item.set_data_from_numpy(array)
            inputs.append(item)
        wanted = [self._grpc.InferRequestedOutput(o.name) for o in outs]
        result = self._call("inference", self._client.infer, graph, inputs, outputs=wanted,
                            client_timeout=self.timeout_s)
        return {o.name: result.as_numpy(o.name) for o in outs}

    def close(self) -> None:
        self._client.close()


def _check_interface(graph: str, url: str, served: list[TensorSpec], path: Path) -> None:
    """The served model's tensors against the ONNX file's (names, dtypes and ranks)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    local = {}
    for value in [*(v for v in model.graph.input if v.name not in init), *model.graph.output]:
        t = value.type.tensor_type
        local[value.name] = (np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)), len(t.shape.dim))
    got = {s.name: (s.dtype, len(s.shape)) for s in served}
    if got != local:
        raise GraphNotLoaded(f"Triton at {url} serves {graph!r} as {sorted(got.items())}, but the bundle's "
                             f"file declares {sorted(local.items())}: is the server's repository this bundle?")
