"""Crops for the image graphs (MQ-HMR and the ViT backbones of the body and hand models): cut around
a set of keypoints' box as uint8, then normalised as the bundle's manifest says and run in batches
through the inference backend, outputs as torch tensors on the caller's device."""

from __future__ import annotations

import numpy as np
import torch

from kinemesh.models.backends import InferenceBackend, run_tensors
from kinemesh.models.camera import normalize_keypoints, person_crops
from kinemesh.models.export.bundle import Bundle

CHUNK = 256  # crops per call unless the bundle was tuned on this device (the graphs' Triton max batch size)


def box_crops(image: np.ndarray, xy: np.ndarray, conf: np.ndarray, size: tuple[int, int],
              whole_box: bool = False) -> np.ndarray:
    """Crops (P, 3, h, w) uint8 of one frame (H, W, 3) uint8 around each of P keypoint sets (P, L, 2)
    with confidences (P, L): the box the keypoints are normalised to (`normalize_keypoints`), its
    height across the crop's height (`person_crops`: crop units = box units), or with `whole_box` the
    box whole (its width too, the crop taller than the box when h > w)."""
    norm = normalize_keypoints(torch.from_numpy(xy.astype(np.float32)), torch.from_numpy(conf.astype(np.float32)))
    h, w = size
    half = norm.half * max(1.0, h / w) if whole_box else norm.half
    frames = torch.from_numpy(image).expand(len(xy), -1, -1, -1)
    return (person_crops(frames, norm.center, half, size) * 255).round().to(torch.uint8).numpy()


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
