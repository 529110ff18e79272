"""fp16 bundles: a bundle's graphs with float16 weights and activations, for GPUs.

    python -m kinemesh.models.export.bundle fp16 var/models/bundle/default --out var/models/bundle/default-fp16

Each float graph is converted by ONNX Runtime's own float16 converter (`onnxruntime.transformers.float16`)
with its inputs and outputs kept float32, so the interface (names, dtypes, Triton configs) and every
caller stay as they are: the worker serves the fp16 bundle by pointing KINEMESH_BUNDLE at it. Nodes
the converter keeps in float32 (its default block list) get Casts around them.

The error is measured, not assumed: every converted graph runs beside its float32 original on the same
random inputs as the export's parity check (standard normal floats, integer inputs drawn over the
graph's codebook) at batch 1 and 5, and the manifest records per output the largest absolute difference
(`fp16_max_abs`) and that difference over the float32 output's largest magnitude (`fp16_max_rel`). On a
CPU, ONNX Runtime computes float16 nodes that have no float16 kernel in float32 between casts; what is
measured there is the rounding of weights and activations to float16, which is most of the error
the CUDA provider's float16 kernels (float32 accumulation in matrix products) give. The task-level
effect (decoded tokens, joint error) is in `make bench-models`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import onnx
import torch

from kinemesh.models.backends.base import random_inputs
from kinemesh.models.export.onnx_export import EXTERNAL_DATA_BYTES

FP16_BATCHES = (1, 5)


def convert_graph(src: Path, dst: Path) -> None:
    """The float32 ONNX file `src` as float16 at `dst` (inputs and outputs stay float32)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16  # local: pulls in onnxruntime
    from onnxruntime.transformers.onnx_model import OnnxModel

    # given the path, the converter infers shapes from the file: in memory, a model over 2 GB (ViT-H) cannot be
    model = convert_float_to_float16(str(src), keep_io_types=True, disable_shape_infer=False)
    OnnxModel(model).topological_sort()  # the converter appends its input casts last; the checker wants order
    dst.parent.mkdir(parents=True, exist_ok=True)
    large = sum(t.ByteSize() for t in model.graph.initializer) > EXTERNAL_DATA_BYTES
    onnx.save(model, str(dst), save_as_external_data=large, location=dst.name + ".data" if large else None)
    onnx.checker.check_model(str(dst))


def measure(fp32: Path, fp16: Path, int_high: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per float output: the largest |fp16 - fp32| over FP16_BATCHES (`max_abs`) and that over the fp32
    output's largest magnitude (`max_rel`); per integer output (token ids), the share that differ
    (`mismatch`)."""
    from kinemesh.models.backends.ort import OrtBackend

    backend = OrtBackend(device="cpu")
    backend.load("fp32", fp32)
    backend.load("fp16", fp16)
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, dict[str, float]] = {}
    for batch in FP16_BATCHES:
        feeds = random_inputs(backend.inputs("fp32"), batch, int_high, torch.device("cpu"), gen)
        want, got = backend.run_bound("fp32", feeds), backend.run_bound("fp16", feeds)
        for name, x in want.items():
            y, e = got[name], out.setdefault(name, {})
            if x.dtype.is_floating_point:
                e["max_abs"] = max(e.get("max_abs", 0.0), float((x.double() - y.double()).abs().max()))
                e["scale"] = max(e.get("scale", 0.0), float(x.abs().max()))
            else:
                e["mismatch"] = max(e.get("mismatch", 0.0), float((x != y).double().mean()))
    for e in out.values():
        if "scale" in e:
            scale = e.pop("scale")
            e["max_rel"] = e["max_abs"] / scale if scale else 0.0
    return out


def is_float_graph(path: Path) -> bool:
    return any(t.data_type == onnx.TensorProto.FLOAT
               for t in onnx.load(str(path), load_external_data=False).graph.initializer)


def build_fp16_bundle(src: Path, out: Path, graphs: list[str] | None = None) -> dict[str, Any]:
    """A copy of the bundle at `src` in `out` whose graphs (all float graphs, or `graphs`) are float16,
    each with its measured error in the manifest (`precision`). Returns the new manifest."""
    from kinemesh.models.export.bundle import BundleError, _finish, _fresh, open_bundle

    bundle = open_bundle(src)
    manifest = dict(bundle.manifest)
    chosen = graphs or [g for g in manifest["graphs"] if is_float_graph(bundle.graph_path(g))]
    unknown = sorted(set(chosen) - set(manifest["graphs"]))
    if unknown:
        raise BundleError(f"bundle {src} has no graph(s) {unknown}")
    tmp = _fresh(out)
    shutil.rmtree(tmp)
    shutil.copytree(bundle.root, tmp, ignore=shutil.ignore_patterns("manifest.json"))
    entries = {g: dict(e) for g, e in manifest["graphs"].items()}
    for graph in chosen:
        target = tmp / entries[graph]["file"]
        for stale in target.parent.glob(target.name + "*"):  # the float32 file and any external data
            stale.unlink()
        convert_graph(bundle.graph_path(graph), target)
        errors = measure(bundle.graph_path(graph), target, bundle.token_range(graph))
        entries[graph]["precision"] = {
            "dtype": "float16", "converter": "onnxruntime.transformers.float16 (keep_io_types)",
            "measured_on": "random inputs as the export parity check, batches " + ", ".join(map(str, FP16_BATCHES)),
            **{f"fp16_{key}": {n: e[key] for n, e in errors.items() if key in e}
               for key in ("max_abs", "max_rel", "mismatch") if any(key in e for e in errors.values())},
        }
    manifest.update(graphs=entries, name=f"{manifest['name']}-fp16", derived_from=f"{src}",
                    precision="float16 graphs: " + ", ".join(chosen))
    manifest.pop("tuning", None)  # batch sizes tuned for the float32 graphs do not carry over
    return _finish(tmp, out, manifest)
