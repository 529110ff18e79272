"""Write an animated, skinned mesh as a glTF 2.0 binary (.glb), with numpy, struct and json only.

Shape legend (V vertices, F triangles, N skeleton nodes / glTF joints, T animation frames):

    rest_vertices     (V, 3)        x_v: the mesh in its bind (rest) pose, metres, Y up
    faces             (F, 3)        triangle vertex indices
    skin_weights      (V, N)        W: linear blend skinning weights, rows sum to 1
    node_parents      (N,)          parent index, -1 for the root (node 0); parents come before children
    rest_heads        (N, 3)        h_n: bind-pose pivot of node n
    global_rotations  (T, N, 3, 3)  G_n: per frame, node n's global rotation (world from bind)
    posed_heads       (T, N, 3)     w_n: per frame, node n's posed pivot
    times_s           (T,)          strictly increasing, non-negative timestamps in seconds

Posed vertex at frame t:  sum_n W[v, n] * (G_n (x_v - h_n) + w_n).

glTF mapping: joint n's inverse bind matrix is the translation by -h_n. Its local transform is the
rotation G_parent^T G_n (root: G_0) and the translation h_n - h_parent (root: h_0 at rest, w_0 when
animated), so its global transform rotates by G_n and takes h_n to w_n whenever the chain is rigid,
i.e. G_parent^T (w_n - w_parent) == h_n - h_parent. Only the root then needs a translation channel; a
node whose posed offset departs from its rest offset by more than ``_RIGID_TOL`` gets one too, so the
file reproduces the formula for any input. glTF keeps 4 influences per vertex: the 4 largest weights,
renormalised to sum 1 (JOINTS_0 / WEIGHTS_0).

Layout: one buffer (the GLB BIN chunk), one bufferView per accessor, every bufferView 4-byte aligned.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence

import numpy as np

__all__ = ["animated_mesh_glb"]

_GLB_MAGIC, _CHUNK_JSON, _CHUNK_BIN = 0x46546C67, 0x4E4F534A, 0x004E4942  # b"glTF", b"JSON", b"BIN\0"
_FLOAT, _USHORT, _UINT = 5126, 5123, 5125
_DTYPES = {_FLOAT: "<f4", _USHORT: "<u2", _UINT: "<u4"}
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_TYPES = {1: "SCALAR", 3: "VEC3", 4: "VEC4", 16: "MAT4"}
_ROT_TOL = 1e-3  # max |G^T G - I| accepted for an input rotation
_WEIGHT_SUM_TOL = 1e-3  # max |sum_n W[v, n] - 1|
_RIGID_TOL = (
    1e-6  # metres: posed offset vs rest offset beyond which a non-root node gets a translation channel
)


class _Bin:
    """The BIN chunk with its bufferViews and accessors, one bufferView per accessor."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.views: list[dict] = []
        self.accessors: list[dict] = []

    def add(
        self, values: np.ndarray, component: int, target: int | None = None, min_max: bool = False
    ) -> int:
        """Append ``values`` ((count,) or (count, ...)) and return its accessor index."""
        arr = np.ascontiguousarray(values, dtype=_DTYPES[component])
        count = arr.shape[0]
        flat = arr.reshape(count, -1)
        self.data += b"\0" * (-len(self.data) % 4)
        view: dict = {"buffer": 0, "byteOffset": len(self.data), "byteLength": arr.nbytes}
        if target is not None:
            view["target"] = target
        self.data += arr.tobytes()
        self.views.append(view)
        accessor: dict = {
            "bufferView": len(self.views) - 1,
            "componentType": component,
            "count": count,
            "type": _TYPES[flat.shape[1] if arr.ndim > 1 else 1],
        }
        if min_max:
            accessor["min"] = flat.min(axis=0).tolist()
            accessor["max"] = flat.max(axis=0).tolist()
        self.accessors.append(accessor)
        return len(self.accessors) - 1


def _floats(name: str, value: object, shape: tuple[int, ...], legend: str) -> np.ndarray:
    """``value`` as finite float64 of exactly ``shape`` (a -1 entry matches any positive size)."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array of shape {legend}: {exc}") from None
    if arr.ndim != len(shape) or any(
        s != d if d >= 0 else s < 1 for s, d in zip(arr.shape, shape, strict=True)
    ):
        raise ValueError(f"{name} must have shape {legend}, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return arr


def _quaternions_xyzw(m: np.ndarray) -> np.ndarray:
    """Unit quaternions (..., 4) as (x, y, z, w) of rotation matrices (..., 3, 3).

    Each row of ``k`` is 4q_i * (w, x, y, z) for one component q_i; the row with the largest
    diagonal entry (>= 1 for a rotation) is the numerically safe one to normalise.
    """
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    k = np.stack(
        [
            np.stack([1 + m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01], axis=-1),
            np.stack([m21 - m12, 1 + m00 - m11 - m22, m01 + m10, m02 + m20], axis=-1),
            np.stack([m02 - m20, m01 + m10, 1 - m00 + m11 - m22, m12 + m21], axis=-1),
            np.stack([m10 - m01, m02 + m20, m12 + m21, 1 - m00 - m11 + m22], axis=-1),
        ],
        axis=-2,
    )
    best = np.argmax(np.diagonal(k, axis1=-2, axis2=-1), axis=-1)
    wxyz = np.take_along_axis(k, best[..., None, None], axis=-2)[..., 0, :]
    wxyz /= np.linalg.norm(wxyz, axis=-1, keepdims=True)
    return wxyz[..., [1, 2, 3, 0]]


def _sign_consistent(q: np.ndarray) -> np.ndarray:
    """Flip quaternions (T, ..., 4) so consecutive frames have a non-negative dot product."""
    if len(q) < 2:
        return q
    steps = np.where(np.sum(q[1:] * q[:-1], axis=-1) < 0, -1.0, 1.0)
    out = q.copy()
    out[1:] *= np.cumprod(steps, axis=0)[..., None]
    return out


def _vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (V, 3); +Y for vertices with no (non-degenerate) face."""
    tri = vertices[faces]
    face_normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = 2 * area
    normals = np.zeros_like(vertices)
    for corner in range(3):
        np.add.at(normals, faces[:, corner], face_normals)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return np.where(length > 1e-12, normals / np.maximum(length, 1e-300), [0.0, 1.0, 0.0])


def _top4(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """JOINTS_0 (V, 4) and WEIGHTS_0 (V, 4): the 4 largest weights per vertex, renormalised to sum 1."""
    k = min(4, weights.shape[1])
    order = np.argsort(-weights, axis=1, kind="stable")[:, :k]
    kept = np.take_along_axis(weights, order, axis=1)
    kept = kept / kept.sum(axis=1, keepdims=True)
    joints = np.zeros((len(weights), 4), dtype=np.int64)
    values = np.zeros((len(weights), 4))
    joints[:, :k] = np.where(kept > 0, order, 0)  # glTF: unused influences point at joint 0
    values[:, :k] = kept
    return joints, values


def animated_mesh_glb(
    rest_vertices: np.ndarray,
    faces: np.ndarray,
    skin_weights: np.ndarray,
    node_parents: Sequence[int],
    rest_heads: np.ndarray,
    global_rotations: np.ndarray,
    posed_heads: np.ndarray,
    times_s: np.ndarray,
    node_names: Sequence[str] | None = None,
    name: str = "kinemesh",
) -> bytes:
    """A .glb with one skinned mesh, its skeleton (one glTF node per skeleton node) and one animation.

    See the module docstring for shapes and semantics. Raises ValueError on malformed input.
    """
    vertices = _floats("rest_vertices", rest_vertices, (-1, 3), "(V, 3)")
    num_vertices = len(vertices)
    tris = np.asarray(faces)
    if tris.ndim != 2 or tris.shape[1] != 3 or len(tris) < 1:
        raise ValueError(f"faces must have shape (F, 3) with F >= 1, got {tris.shape}")
    if not np.issubdtype(tris.dtype, np.integer):
        raise ValueError(f"faces must hold integers, got dtype {tris.dtype}")
    if tris.min() < 0 or tris.max() >= num_vertices:
        raise ValueError(f"faces index vertices outside [0, {num_vertices})")
    parents = np.asarray(node_parents)
    if parents.ndim != 1 or len(parents) < 1 or not np.issubdtype(parents.dtype, np.integer):
        raise ValueError(f"node_parents must be a non-empty sequence of ints, got {node_parents!r}")
    num_nodes = len(parents)
    if num_nodes > 65535:
        raise ValueError(f"at most 65535 nodes fit JOINTS_0 (unsigned short), got {num_nodes}")
    if parents[0] != -1 or np.any(parents[1:] < 0) or np.any(parents[1:] >= np.arange(1, num_nodes)):
        raise ValueError("node_parents must be -1 for node 0 and, for node n > 0, a parent index in [0, n)")
    weights = _floats(
        "skin_weights", skin_weights, (num_vertices, num_nodes), f"(V, N) = ({num_vertices}, {num_nodes})"
    )
    if weights.min() < 0:
        raise ValueError("skin_weights must be non-negative")
    if np.abs(weights.sum(axis=1) - 1).max() > _WEIGHT_SUM_TOL:
        raise ValueError("skin_weights rows must sum to 1")
    heads = _floats("rest_heads", rest_heads, (num_nodes, 3), f"(N, 3) = ({num_nodes}, 3)")
    rotations = _floats(
        "global_rotations",
        global_rotations,
        (-1, num_nodes, 3, 3),
        f"(T, N, 3, 3) with T >= 1, N = {num_nodes}",
    )
    num_frames = len(rotations)
    if np.abs(np.swapaxes(rotations, -1, -2) @ rotations - np.eye(3)).max() > _ROT_TOL or np.any(
        np.linalg.det(rotations) <= 0
    ):
        raise ValueError("global_rotations must be rotation matrices (orthonormal, determinant +1)")
    posed = _floats(
        "posed_heads", posed_heads, (num_frames, num_nodes, 3), f"(T, N, 3) = ({num_frames}, {num_nodes}, 3)"
    )
    times = _floats("times_s", times_s, (num_frames,), f"(T,) = ({num_frames},)")
    times32 = times.astype(np.float32)
    if times32[0] < 0 or np.any(np.diff(times32) <= 0):
        raise ValueError("times_s must be non-negative and strictly increasing (also as float32)")
    names = [f"node_{n}" for n in range(num_nodes)] if node_names is None else [str(s) for s in node_names]
    if len(names) != num_nodes:
        raise ValueError(f"node_names must have N = {num_nodes} entries, got {len(names)}")

    # Local joint transforms per frame: rotation G_parent^T G_n, translation G_parent^T (w_n - w_parent).
    child, parent = np.arange(1, num_nodes), parents[1:]
    parent_rot = rotations[:, parent]
    local_rot = np.concatenate(
        [rotations[:, :1], np.swapaxes(parent_rot, -1, -2) @ rotations[:, child]], axis=1
    )
    quats = _sign_consistent(_quaternions_xyzw(local_rot))
    rest_offset = np.concatenate([heads[:1], heads[child] - heads[parent]])
    posed_offset = np.concatenate(
        [posed[:, :1], np.einsum("tnji,tnj->tni", parent_rot, posed[:, child] - posed[:, parent])], axis=1
    )
    translated = [0] + [n for n in child if np.abs(posed_offset[:, n] - rest_offset[n]).max() > _RIGID_TOL]

    out = _Bin()
    joints, joint_weights = _top4(weights)
    attributes = {
        "POSITION": out.add(vertices, _FLOAT, _ARRAY_BUFFER, min_max=True),
        "NORMAL": out.add(_vertex_normals(vertices, tris), _FLOAT, _ARRAY_BUFFER),
        "JOINTS_0": out.add(joints, _USHORT, _ARRAY_BUFFER),
        "WEIGHTS_0": out.add(joint_weights, _FLOAT, _ARRAY_BUFFER),
    }
    indices = out.add(tris.reshape(-1), _UINT, _ELEMENT_ARRAY_BUFFER)
    inverse_bind = np.tile(np.eye(4), (num_nodes, 1, 1))
    inverse_bind[:, :3, 3] = -heads
    inverse_bind_accessor = out.add(
        np.swapaxes(inverse_bind, -1, -2), _FLOAT
    )  # glTF matrices are column-major
    time_accessor = out.add(times32, _FLOAT, min_max=True)
    samplers, channels = [], []
    for path, node, values in [("rotation", n, quats[:, n]) for n in range(num_nodes)] + [
        ("translation", n, posed_offset[:, n]) for n in translated
    ]:
        samplers.append(
            {"input": time_accessor, "output": out.add(values, _FLOAT), "interpolation": "LINEAR"}
        )
        channels.append({"sampler": len(samplers) - 1, "target": {"node": int(node), "path": path}})

    nodes: list[dict] = [{"name": names[n], "translation": rest_offset[n].tolist()} for n in range(num_nodes)]
    for n in child:
        nodes[parents[n]].setdefault("children", []).append(int(n))
    nodes.append({"name": name, "mesh": 0, "skin": 0})  # skinned mesh node: at the scene root, no transform
    out.data += b"\0" * (-len(out.data) % 4)
    document = {
        "asset": {"version": "2.0", "generator": "kinemesh"},
        "scene": 0,
        "scenes": [{"name": name, "nodes": [num_nodes, 0]}],
        "nodes": nodes,
        "meshes": [{"name": name, "primitives": [{"attributes": attributes, "indices": indices, "mode": 4}]}],
        "skins": [
            {
                "name": name,
                "joints": list(range(num_nodes)),
                "skeleton": 0,
                "inverseBindMatrices": inverse_bind_accessor,
            }
        ],
        "animations": [{"name": name, "samplers": samplers, "channels": channels}],
        "accessors": out.accessors,
        "bufferViews": out.views,
        "buffers": [{"byteLength": len(out.data)}],
    }
    text = json.dumps(document, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    total = 12 + 8 + len(text) + 8 + len(out.data)
    return b"".join(
        [
            struct.pack("<III", _GLB_MAGIC, 2, total),
            struct.pack("<II", len(text), _CHUNK_JSON),
            text,
            struct.pack("<II", len(out.data), _CHUNK_BIN),
            bytes(out.data),
        ]
    )
