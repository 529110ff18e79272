"""Inference backends: the one interface the worker runs exported graphs through."""

from kinemesh.models.backends.base import (
    BackendUnavailable,
    GraphNotLoaded,
    InferenceBackend,
    TensorSpec,
    run_tensors,
)
from kinemesh.models.backends.ort import OrtBackend
from kinemesh.models.backends.triton import TritonBackend

__all__ = ["BackendUnavailable", "GraphNotLoaded", "InferenceBackend", "OrtBackend", "TensorSpec", "TritonBackend", "run_tensors"]
