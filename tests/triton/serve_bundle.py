"""Serve a kinemesh bundle's ONNX graphs through a real tritonserver, for the Triton backend's tests.

Runs in its own virtualenv (see tests/triton/requirements.txt): nvidia-pytriton bundles a
tritonserver binary with the Python backend only (no onnxruntime backend), so each graph is served
by a Python callable that runs the graph in ONNX Runtime; batching is Triton's (`@batch`). It reads
only the bundle's manifest and ONNX files, so it needs no kinemesh install.

    python serve_bundle.py BUNDLE_DIR --grpc-port P --http-port Q --metrics-port R [--graphs a,b]

Prints "ready" once every model is loaded, then serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

DTYPES = {"TYPE_FP32": np.float32, "TYPE_FP64": np.float64, "TYPE_FP16": np.float16, "TYPE_INT64": np.int64,
          "TYPE_INT32": np.int32, "TYPE_BOOL": np.bool_, "TYPE_UINT8": np.uint8, "TYPE_INT8": np.int8}


def infer_function(session: ort.InferenceSession):
    names = [o.name for o in session.get_outputs()]

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, inputs), strict=True))

    return infer


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("bundle", type=Path)
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--metrics-port", type=int, required=True)
    p.add_argument("--graphs", default=None, help="comma-separated graphs (default: all)")
    p.add_argument("--max-batch", type=int, default=256)
    a = p.parse_args()
    manifest = json.loads((a.bundle / "manifest.json").read_text())
    graphs = a.graphs.split(",") if a.graphs else list(manifest["graphs"])
    config = TritonConfig(grpc_port=a.grpc_port, http_port=a.http_port, metrics_port=a.metrics_port,
                          log_verbose=0, exit_on_error=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with Triton(config=config) as triton:
        for graph in graphs:
            entry = manifest["graphs"][graph]
            # ONNX Runtime's default threads, as the worker's in-process backend uses them
            session = ort.InferenceSession(str(a.bundle / entry["file"]), providers=["CPUExecutionProvider"])
            spec = lambda items: [Tensor(name=t["name"], dtype=DTYPES[t["dtype"]], shape=tuple(t["dims"]))  # noqa: E731
                                  for t in items]
            triton.bind(model_name=graph, infer_func=infer_function(session), inputs=spec(entry["inputs"]),
                        outputs=spec(entry["outputs"]),
                        config=ModelConfig(max_batch_size=a.max_batch, batcher=DynamicBatcher(max_queue_delay_microseconds=0)))
        triton.run()  # start serving in the background
        print("ready", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
