"""Export to ONNX with self-checks, and Triton model-repository configs."""

from __future__ import annotations

from kinemesh.models.export.onnx_export import ExportError, ExportReport, ParityError, export_graph
from kinemesh.models.export.triton import TensorSpec, parse_pbtxt, tensor_specs_from_onnx, write_triton_config

__all__ = [
    "ExportError",
    "ExportReport",
    "ParityError",
    "TensorSpec",
    "export_graph",
    "parse_pbtxt",
    "tensor_specs_from_onnx",
    "write_triton_config",
]
