"""Export one graph to ONNX and prove it: names, dynamic batch axis, onnx.checker, ORT parity.

    report = export_graph(
        TokenizerIndexDecoderGraph(tok), {"indices": idx}, ["rot6d"], "repo/tok_dec/1/model.onnx"
    )

The torch.export-based exporter (`dynamo=True`) is tried first; if it raises, the TorchScript
exporter is used and the report records which one produced the file and why the first failed.
Parity runs ONNX Runtime (CPU) against PyTorch on fresh random inputs at two batch sizes (one of
them 1, the other not the example's) so a batch axis baked in as a constant cannot pass.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import Tensor, nn

BATCH_AXIS = "batch"
# Above this many bytes of weights a graph is written with its weights in a side file (ONNX external
# data): one protobuf message cannot pass 2 GiB (the paper-size MQ-HMR holds 2.6 GB).
EXTERNAL_DATA_BYTES = 1 << 30


class ExportError(RuntimeError):
    """The exported graph is malformed (names, axes, checker)."""


class ParityError(ExportError):
    """ONNX Runtime and PyTorch disagree by more than the tolerance."""


@dataclass
class ExportReport:
    path: Path  # the written .onnx file (weights embedded)
    exporter: str  # "dynamo" (torch.export) or "torchscript"
    opset: int  # default-domain opset of the written model
    checker_ok: bool  # onnx.checker.check_model(full_check=True) passed
    input_names: list[str]
    output_names: list[str]
    batch_sizes: tuple[int, ...]  # batch sizes the parity check ran at
    max_abs_diff: dict[str, float]  # per output, max |ORT - PyTorch| over all batch sizes
    atol: float  # tolerance the diffs were held to
    dynamo_error: str | None = None  # why the dynamo exporter was not used, when it was not
    notes: list[str] = field(default_factory=list)


def export_graph(
    module: nn.Module,
    example_inputs: Mapping[str, Tensor],
    output_names: Sequence[str],
    path: str | Path,
    dynamic_batch: bool = True,
    opset: int = 17,
    *,
    atol: float = 1e-4,
    parity_batch_sizes: Sequence[int] = (1, 5),
    int_ranges: Mapping[str, tuple[int, int]] | None = None,
    exporter: str = "auto",
    seed: int = 0,
) -> ExportReport:
    """Export `module(*example_inputs.values())` to `path` and verify it.

    example_inputs: ordered {input name: example tensor}, in the order of module.forward's args;
        dim 0 is the batch axis when dynamic_batch.
    output_names: one name per output tensor (module returns a tensor, tuple or NamedTuple).
    int_ranges: {input name: (low, high)} half-open range for random integer inputs in the parity
        check; default: the example's [min, max].
    exporter: "auto" (dynamo, then TorchScript), "dynamo" or "torchscript".
    The module is put in eval mode (and left there).
    Raises ExportError / ParityError; returns the report otherwise.
    """
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ValueError(f"exporter must be auto, dynamo or torchscript, not {exporter!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    input_names = list(example_inputs)
    output_names = list(output_names)
    args = tuple(example_inputs.values())
    if dynamic_batch:
        # torch.export specialises size-1 dims; give it a batch of at least 2 to trace with.
        args = tuple(a if a.shape[0] >= 2 else a.expand(2, *a.shape[1:]).contiguous() for a in args)
    with torch.no_grad():
        n_out = len(_flatten_outputs(module(*args)))
    if n_out != len(output_names):
        raise ExportError(f"module returns {n_out} tensors but {len(output_names)} output names were given")

    dynamo_error: str | None = None
    used = ""
    large = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()]) > EXTERNAL_DATA_BYTES
    if exporter in ("auto", "dynamo"):
        try:
            _torch_export(module, args, input_names, output_names, path, dynamic_batch, opset, dynamo=True,
                          external_data=large)
            used = "dynamo"
        except Exception as exc:  # any exporter failure: fall back, keep the reason
            if exporter == "dynamo":
                raise ExportError(f"dynamo export failed: {exc}") from exc
            dynamo_error = (
                f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            )
    if not used:
        _torch_export(module, args, input_names, output_names, path, dynamic_batch, opset, dynamo=False,
                      external_data=large)
        used = "torchscript"

    model = onnx.load(str(path), load_external_data=False)  # the graph; weights stay in their side file
    try:
        onnx.checker.check_model(str(path) if large else model, full_check=True)  # by path past 2 GiB
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx.checker rejected {path}: {exc}") from exc
    _check_interface(model, input_names, output_names, dynamic_batch)
    model_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), -1)
    if model_opset < 17:
        raise ExportError(f"{path} has opset {model_opset}; at least 17 is required")

    batch_sizes = tuple(parity_batch_sizes) if dynamic_batch else (args[0].shape[0],)
    diffs = _parity(module, path, example_inputs, input_names, output_names, batch_sizes, int_ranges, seed)
    report = ExportReport(
        path=path,
        exporter=used,
        opset=model_opset,
        checker_ok=True,
        input_names=input_names,
        output_names=output_names,
        batch_sizes=batch_sizes,
        max_abs_diff=diffs,
        atol=atol,
        dynamo_error=dynamo_error,
    )
    worst = {k: v for k, v in diffs.items() if not v <= atol}  # `not <=` also catches NaN
    if worst:
        raise ParityError(f"{path}: ORT vs PyTorch max abs diff {worst} exceeds {atol} (report: {report})")
    return report


def _flatten_outputs(out: object) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten_outputs(o)]
    raise ExportError(f"graph outputs must be tensors or tuples of tensors, got {type(out).__name__}")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress prints, warnings and log lines (the report carries the facts)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _torch_export(
    module: nn.Module,
    args: tuple[Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    path: Path,
    dynamic_batch: bool,
    opset: int,
    dynamo: bool,
    external_data: bool = False,
) -> None:
    """One `torch.onnx.export` call; the two exporters differ only in how the batch axis is named.
    The TorchScript exporter moves weights to a side file by itself when the model passes 2 GiB."""
    if dynamo:
        batch = torch.export.Dim(BATCH_AXIS)
        options = dict(dynamic_shapes=tuple({0: batch} for _ in args) if dynamic_batch else None,
                       external_data=external_data, optimize=True)
    else:
        options = dict(dynamic_axes={n: {0: BATCH_AXIS} for n in input_names + output_names} if dynamic_batch
                       else None, do_constant_folding=True)
    with _quiet():
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                          opset_version=opset, dynamo=dynamo, **options)


def _check_interface(
    model: onnx.ModelProto, input_names: list[str], output_names: list[str], dynamic: bool
) -> None:
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    got_in = [i.name for i in graph.input if i.name not in initializers]
    got_out = [o.name for o in graph.output]
    if got_in != input_names or got_out != output_names:
        raise ExportError(f"graph interface {got_in} -> {got_out}, expected {input_names} -> {output_names}")
    if not dynamic:
        return
    for value in [i for i in graph.input if i.name in input_names] + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            raise ExportError(f"{value.name}: batch axis is not dynamic ({dims[0] if dims else 'no shape'})")


def _random_inputs(
    example_inputs: Mapping[str, Tensor],
    batch: int,
    int_ranges: Mapping[str, tuple[int, int]] | None,
    gen: torch.Generator,
) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for name, ex in example_inputs.items():
        shape = (batch, *ex.shape[1:])
        if ex.dtype.is_floating_point:
            out[name] = torch.randn(shape, generator=gen).to(ex.dtype)
        elif ex.dtype == torch.bool:
            out[name] = torch.randint(0, 2, shape, generator=gen).bool()
        else:
            low, high = (int_ranges or {}).get(name, (int(ex.min()), int(ex.max()) + 1))
            out[name] = torch.randint(low, high, shape, generator=gen, dtype=ex.dtype)
    return out


def _parity(
    module: nn.Module,
    path: Path,
    example_inputs: Mapping[str, Tensor],
    input_names: list[str],
    output_names: list[str],
    batch_sizes: tuple[int, ...],
    int_ranges: Mapping[str, tuple[int, int]] | None,
    seed: int,
) -> dict[str, float]:
    import onnxruntime as ort  # local: keep `import kinemesh.models.export` light

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    diffs = dict.fromkeys(output_names, 0.0)
    for b in batch_sizes:
        inputs = _random_inputs(example_inputs, b, int_ranges, gen)
        with torch.no_grad():
            expected = _flatten_outputs(module(*inputs.values()))
        got = session.run(output_names, {n: t.numpy() for n, t in inputs.items()})
        for name, e, g in zip(output_names, expected, got, strict=True):
            e_np = e.numpy()
            if g.shape != e_np.shape:
                raise ParityError(f"{name} at batch {b}: ORT shape {g.shape} != PyTorch {e_np.shape}")
            d = float(np.max(np.abs(g.astype(np.float64) - e_np.astype(np.float64)))) if g.size else 0.0
            diffs[name] = max(diffs[name], d)
    return diffs
