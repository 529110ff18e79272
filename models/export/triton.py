"""Triton model-repository config (`config.pbtxt`, protobuf text format of Triton's ModelConfig).

Repository layout (one directory per graph):
    <repo>/<graph>/config.pbtxt
    <repo>/<graph>/<version>/model.onnx

`dims` never include the batch axis: with max_batch_size > 0 Triton prepends it. A -1 dim is
variable. `parse_pbtxt` reads the text format back into dicts/lists (enough for checks and for
the bundle manifest; not a general protobuf implementation).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

# numpy/torch dtype names -> Triton data types
_DTYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "float64": "TYPE_FP64",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8",
    "bool": "TYPE_BOOL",
}
# ONNX TensorProto element types -> Triton data types
_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
}


@dataclass(frozen=True)
class TensorSpec:
    name: str  # tensor name in the ONNX graph
    data_type: str  # Triton type (TYPE_FP32, ...) or a dtype name (float32, torch.int64, ...)
    dims: tuple[int, ...]  # shape without the batch axis; -1 = variable

    def triton_type(self) -> str:
        if self.data_type in _DTYPES.values():
            return self.data_type
        key = str(self.data_type).removeprefix("torch.").removeprefix("numpy.")
        try:
            return _DTYPES[key]
        except KeyError:
            raise ValueError(f"{self.name}: no Triton type for dtype {self.data_type!r}") from None


def tensor_specs_from_onnx(path: str | Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of an exported graph, batch axis dropped, symbolic dims as -1."""
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        tt = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        return TensorSpec(value.name, _ONNX_DTYPES[tt.elem_type], dims[1:])

    inputs = [spec(v) for v in graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in graph.output]


def _as_spec(t: TensorSpec | tuple[str, str, Sequence[int]]) -> TensorSpec:
    if isinstance(t, TensorSpec):
        return t
    name, dtype, dims = t
    return TensorSpec(name, str(dtype), tuple(int(d) for d in dims))


def _tensor_block(key: str, specs: list[TensorSpec]) -> list[str]:
    lines = [f"{key} ["]
    for i, s in enumerate(specs):
        if not s.dims:
            raise ValueError(f"{s.name}: Triton needs at least one non-batch dim")
        lines += [
            "  {",
            f'    name: "{s.name}"',
            f"    data_type: {s.triton_type()}",
            f"    dims: [ {', '.join(str(d) for d in s.dims)} ]",
            "  }" + ("," if i < len(specs) - 1 else ""),
        ]
    return [*lines, "]"]


def render_triton_config(
    name: str,
    inputs: Iterable[TensorSpec | tuple[str, str, Sequence[int]]],
    outputs: Iterable[TensorSpec | tuple[str, str, Sequence[int]]],
    max_batch_size: int,
    dynamic_batching: bool = True,
    *,
    max_queue_delay_microseconds: int = 100,
    preferred_batch_sizes: Sequence[int] = (),
    instance_kind: str = "KIND_GPU",
    instance_count: int = 1,
    model_filename: str = "model.onnx",
) -> str:
    """The config.pbtxt text for an ONNX Runtime graph."""
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise ValueError(f"bad model name {name!r}")
    if max_batch_size < 0 or (dynamic_batching and max_batch_size < 1):
        raise ValueError("dynamic batching needs max_batch_size >= 1")
    if instance_kind not in ("KIND_GPU", "KIND_CPU", "KIND_AUTO"):
        raise ValueError(f"bad instance kind {instance_kind!r}")
    bad = [b for b in preferred_batch_sizes if not 1 <= b <= max_batch_size]
    if bad:
        raise ValueError(f"preferred batch sizes {bad} outside 1..{max_batch_size}")
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        'backend: "onnxruntime"',
        f"max_batch_size: {max_batch_size}",
        f'default_model_filename: "{model_filename}"',
        *_tensor_block("input", [_as_spec(t) for t in inputs]),
        *_tensor_block("output", [_as_spec(t) for t in outputs]),
    ]
    if dynamic_batching:
        lines.append("dynamic_batching {")
        if preferred_batch_sizes:
            lines.append(f"  preferred_batch_size: [ {', '.join(str(b) for b in preferred_batch_sizes)} ]")
        lines += [f"  max_queue_delay_microseconds: {max_queue_delay_microseconds}", "}"]
    lines += [
        "instance_group [",
        "  {",
        f"    count: {instance_count}",
        f"    kind: {instance_kind}",
        "  }",
        "]",
    ]
    return "\n".join(lines) + "\n"


def write_triton_config(
    model_dir: str | Path,
    name: str,
    inputs: Iterable[TensorSpec | tuple[str, str, Sequence[int]]],
    outputs: Iterable[TensorSpec | tuple[str, str, Sequence[int]]],
    max_batch_size: int,
    dynamic_batching: bool = True,
    **options: Any,
) -> Path:
    """Write `<model_dir>/config.pbtxt` (see render_triton_config for options); returns its path."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / "config.pbtxt"
    path.write_text(render_triton_config(name, inputs, outputs, max_batch_size, dynamic_batching, **options))
    return path


# -- reading the text format back ------------------------------------------------------------------

_TOKEN = re.compile(r'\s+|#[^\n]*|"(?:[^"\\]|\\.)*"|[{}\[\]:,;<>]|[^\s{}\[\]:,;<>"#]+')


def _tokens(text: str) -> list[str]:
    pos, out = 0, []
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"pbtxt: unexpected character {text[pos]!r} at {pos}")
        tok = m.group(0)
        if not tok.isspace() and not tok.startswith("#"):
            out.append(tok)
        pos = m.end()
    return out


def _scalar(tok: str) -> Any:
    if tok.startswith('"'):
        return bytes(tok[1:-1], "utf-8").decode("unicode_escape")
    if tok in ("true", "false"):
        return tok == "true"
    for conv in (int, float):
        try:
            return conv(tok)
        except ValueError:
            pass
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", tok):
        raise ValueError(f"pbtxt: bad value {tok!r}")
    return tok  # enum identifier


def parse_pbtxt(text: str) -> dict[str, Any]:
    """Parse protobuf text format into dicts. A field seen once maps to its value (a dict for a
    message); a field given as `[...]` or repeated maps to a list."""
    toks = _tokens(text)
    pos = 0

    def peek() -> str | None:
        return toks[pos] if pos < len(toks) else None

    def take(expected: str | None = None) -> str:
        nonlocal pos
        if pos >= len(toks):
            raise ValueError("pbtxt: unexpected end of input")
        tok = toks[pos]
        if expected is not None and tok != expected:
            raise ValueError(f"pbtxt: expected {expected!r}, got {tok!r}")
        pos += 1
        return tok

    def value() -> Any:
        if peek() in ("{", "<"):
            close = "}" if take() == "{" else ">"
            return message(close)
        return _scalar(take())

    def message(close: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while peek() != close:
            if peek() is None:
                raise ValueError(f"pbtxt: missing {close!r}")
            key = take()
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"pbtxt: bad field name {key!r}")
            if peek() == ":":
                take()
            if peek() == "[":
                take()
                items: list[Any] = []
                while peek() != "]":
                    items.append(value())
                    if peek() == ",":
                        take()
                take("]")
                val: Any = items
            else:
                val = value()
            if key in out:
                prev = out[key] if isinstance(out[key], list) else [out[key]]
                out[key] = prev + (val if isinstance(val, list) else [val])
            else:
                out[key] = val
            if peek() in (",", ";"):
                take()
        if close is not None:
            take(close)
        return out

    return message(None)
