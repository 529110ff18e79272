"""Inference backends: the one interface the worker runs exported graphs through."""

from kinemesh.models.backends.base import GraphNotLoaded, InferenceBackend, TensorSpec
from kinemesh.models.backends.ort import OrtBackend

__all__ = ["GraphNotLoaded", "InferenceBackend", "OrtBackend", "TensorSpec"]
