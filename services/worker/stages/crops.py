"""Crops through an image graph: uint8 crops, normalised as the bundle's manifest says, in batches
through the inference backend, outputs as torch tensors on the caller's device (MQ-HMR and the ViT
backbones of the body and hand models)."""

from __future__ import annotations

import numpy as np
import torch

from kinemesh.models.backends import InferenceBackend, run_tensors
from kinemesh.models.export.bundle import Bundle

CHUNK = 256  # crops per call unless the bundle was tuned on this device (the graphs' Triton max batch size)


def run_on_crops(backend: InferenceBackend, bundle: Bundle, graph: str, crops: np.ndarray,
                 device: torch.device) -> dict[str, torch.Tensor]:
    """Crops (T, 3, h, w) uint8 -> `graph`'s outputs (each (T, ...)) on `device`. The normalisation
    runs on the device (uint8 crosses to it: a quarter of the float bytes)."""
    pre = bundle.manifest["graphs"][graph]["preprocessing"]
    mean = torch.tensor(pre["mean"], dtype=torch.float32, device=device)[None, :, None, None]
    std = torch.tensor(pre["std"], dtype=torch.float32, device=device)[None, :, None, None]
    chunk = bundle.batch_for(graph, backend, CHUNK)
    parts = []
    for i in range(0, len(crops), chunk):
        image = torch.from_numpy(crops[i:i + chunk]).to(device).float() / 255.0  # (t, 3, h, w)
        parts.append(run_tensors(backend, graph, {"image": (image - mean) / std}))
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
