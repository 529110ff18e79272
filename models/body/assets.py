"""The compact body-model file: one .npz of float32 arrays plus a JSON header.

Arrays (legend as in `layer.py`):
    v_template (V, 3), shapedirs (V, 3, S), node_regressor (N, V), skin_weights (V, N),
    joint_from_nodes (J, N), landmark_regressor (L, V), faces (F, 3) int32
Header (`header` entry, a JSON string): format and version, model name, frame and units,
joint names, node names / parents / driving joint, landmark names and how each was defined,
shape-parameter meaning, the accuracy measured at conversion, and provenance (source
package and version, build command, build time).

Loading takes well under a second and needs nothing but numpy and torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kinemesh.models.body.layer import BodyLayer, BodyModelConfig

FORMAT = "kinemesh-body-model"
FORMAT_VERSION = 1
ARRAYS = ("v_template", "shapedirs", "node_regressor", "skin_weights", "joint_from_nodes",
          "landmark_regressor", "faces")


class BodyModelFileError(ValueError):
    """The file is not a body-model file this code can read."""


def save_body_model(path: str | os.PathLike, arrays: dict[str, np.ndarray], header: dict[str, Any]) -> Path:
    """Write the file atomically (a temporary name, then a rename). Returns the path."""
    path = Path(path)
    missing = [k for k in ARRAYS if k not in arrays]
    if missing:
        raise ValueError(f"missing arrays: {missing}")
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, **header}
    out = {k: np.ascontiguousarray(arrays[k], dtype=np.int32 if k == "faces" else np.float32) for k in ARRAYS}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, header=np.array(json.dumps(header, sort_keys=True)), **out)
    os.replace(tmp, path)
    return path


def read_body_model(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and the header, checked for format and version."""
    with np.load(path, allow_pickle=False) as z:
        if "header" not in z.files:
            raise BodyModelFileError(f"{path}: no header; not a {FORMAT} file")
        header = json.loads(str(z["header"]))
        arrays = {k: z[k] for k in ARRAYS if k in z.files}
    if header.get("format") != FORMAT or header.get("format_version") != FORMAT_VERSION:
        raise BodyModelFileError(
            f"{path}: format {header.get('format')!r} v{header.get('format_version')}, "
            f"expected {FORMAT!r} v{FORMAT_VERSION}")
    missing = [k for k in ARRAYS if k not in arrays]
    if missing:
        raise BodyModelFileError(f"{path}: missing arrays {missing}")
    return arrays, header


def config_from_header(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> BodyModelConfig:
    return BodyModelConfig(
        name=header["name"],
        num_vertices=arrays["v_template"].shape[0],
        num_shape=arrays["shapedirs"].shape[2],
        num_joints=len(header["joint_names"]),
        num_nodes=len(header["node_parents"]),
        num_landmarks=len(header["landmark_names"]),
        node_parents=tuple(header["node_parents"]),
        node_joint=tuple(header["node_joint"]),
        joint_names=tuple(header["joint_names"]),
        landmark_names=tuple(header["landmark_names"]),
    )


def load_body_model(path: str | os.PathLike, num_shape: int | None = None) -> BodyLayer:
    """A `BodyLayer` from a compact file; `num_shape` keeps only the first S shape components
    (PCA order, so truncating is the best S-component approximation)."""
    arrays, header = read_body_model(path)
    if num_shape is not None:
        if not 0 < num_shape <= arrays["shapedirs"].shape[2]:
            raise ValueError(f"num_shape must be in 1..{arrays['shapedirs'].shape[2]}")
        arrays["shapedirs"] = arrays["shapedirs"][:, :, :num_shape]
    config = config_from_header(header, arrays)
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}
    layer = BodyLayer(config, t["v_template"], t["shapedirs"], t["node_regressor"], t["skin_weights"],
                      t["joint_from_nodes"], t["landmark_regressor"], faces=t["faces"])
    layer.header = header  # provenance travels with the layer (plain attribute, not a buffer)
    return layer
