"""The animated GLB writer: container layout, JSON consistency, and glTF skinning read back from the
file (hierarchy x sampled TRS x inverse bind, blended by JOINTS_0/WEIGHTS_0) equals the LBS formula."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from kinemesh.services.worker.artifacts_glb import animated_mesh_glb

_COMPONENTS = {5126: "<f4", 5123: "<u2", 5125: "<u4"}
_WIDTHS = {"SCALAR": 1, "VEC3": 3, "VEC4": 4, "MAT4": 16}


# --- a small rig -----------------------------------------------------------------------------------


def _rodrigues(axis_angle: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) of axis-angle vectors (..., 3)."""
    angle = np.linalg.norm(axis_angle, axis=-1, keepdims=True)[..., None]
    axis = axis_angle / np.maximum(np.linalg.norm(axis_angle, axis=-1, keepdims=True), 1e-12)
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zero = np.zeros_like(x)
    skew = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1).reshape(*axis.shape[:-1], 3, 3)
    return np.eye(3) + np.sin(angle) * skew + (1 - np.cos(angle)) * skew @ skew


def _rig(parents: list[int], frames: int, rigid: bool = True, seed: int = 0) -> dict:
    """Random mesh around a skeleton, smoothly changing rotations (one node spins past 2 pi)."""
    rng = np.random.default_rng(seed)
    n = len(parents)
    heads = np.zeros((n, 3))
    for j in range(1, n):
        heads[j] = heads[parents[j]] + rng.normal(0, 0.2, 3) + [0, 0.25, 0]
    heads += [0.1, 0.9, -0.2]
    vertices = (heads[rng.integers(0, n, 14)] + rng.normal(0, 0.08, (14, 3))).astype(np.float32)
    faces = np.array([rng.permutation(13)[:3] for _ in range(10)])  # vertex 13 belongs to no face
    weights = rng.random((14, n)) ** 3
    weights /= weights.sum(axis=1, keepdims=True)

    phase = np.linspace(0.0, 1.0, frames)[:, None, None]
    axis_angle = phase * rng.normal(0, 1.2, (1, n, 3)) + rng.normal(0, 0.3, (1, n, 3))
    axis_angle[:, min(1, n - 1)] = phase[:, 0] * np.array(
        [0.0, 7.0, 0.0]
    )  # crosses pi: quaternion sign flips
    local = _rodrigues(axis_angle)
    rotations = np.zeros((frames, n, 3, 3))
    posed = np.zeros((frames, n, 3))
    rotations[:, 0] = local[:, 0]
    posed[:, 0] = heads[0] + phase[:, 0] * [0.3, -0.05, 0.5]
    for j in range(1, n):
        p = parents[j]
        rotations[:, j] = rotations[:, p] @ local[:, j]
        posed[:, j] = posed[:, p] + rotations[:, p] @ (heads[j] - heads[p])
    if not rigid:
        posed[:, 1:] += rng.normal(0, 0.05, (frames, n - 1, 3))
    return {
        "rest_vertices": vertices,
        "faces": faces,
        "skin_weights": weights,
        "node_parents": parents,
        "rest_heads": heads,
        "global_rotations": rotations,
        "posed_heads": posed,
        "times_s": 0.04 + np.arange(frames) / 30.0,
    }


def _expected_vertices(rig: dict) -> np.ndarray:
    """(T, V, 3): sum_n W4[v, n] (G_n (x_v - h_n) + w_n), W4 = 4 largest weights renormalised."""
    weights = rig["skin_weights"]
    w4 = np.zeros_like(weights)
    for v, row in enumerate(weights):
        top = np.argsort(row)[::-1][:4]
        w4[v, top] = row[top] / row[top].sum()
    x = rig["rest_vertices"].astype(np.float64)
    rel = x[None, :, None, :] - rig["rest_heads"][None, None]  # (1, V, N, 3)
    moved = np.einsum(
        "tnij,tvnj->tvni",
        rig["global_rotations"],
        np.broadcast_to(rel, (len(rig["times_s"]), *rel.shape[1:])),
    )
    moved = moved + rig["posed_heads"][:, None]
    return np.einsum("vn,tvni->tvi", w4, moved)


# --- reading the GLB back --------------------------------------------------------------------------


def _parse(glb: bytes) -> tuple[dict, bytes]:
    magic, version, length = struct.unpack_from("<4sII", glb, 0)
    assert (magic, version, length) == (b"glTF", 2, len(glb))
    json_length, json_type = struct.unpack_from("<II", glb, 12)
    assert json_type == 0x4E4F534A and json_length % 4 == 0
    document = json.loads(glb[20 : 20 + json_length])
    bin_length, bin_type = struct.unpack_from("<II", glb, 20 + json_length)
    assert bin_type == 0x004E4942 and bin_length % 4 == 0
    assert 28 + json_length + bin_length == len(glb)
    return document, glb[28 + json_length :]


def _read(document: dict, blob: bytes, index: int) -> np.ndarray:
    """Accessor ``index`` as (count,) or (count, width), checked against its bufferView."""
    accessor = document["accessors"][index]
    view = document["bufferViews"][accessor["bufferView"]]
    dtype = np.dtype(_COMPONENTS[accessor["componentType"]])
    width = _WIDTHS[accessor["type"]]
    offset = accessor.get("byteOffset", 0)
    start = view["byteOffset"] + offset
    assert start % dtype.itemsize == 0 and view["byteOffset"] % 4 == 0
    assert view.get("byteStride", width * dtype.itemsize) == width * dtype.itemsize
    assert offset + accessor["count"] * width * dtype.itemsize <= view["byteLength"]
    values = np.frombuffer(blob, dtype=dtype, count=accessor["count"] * width, offset=start)
    return values if width == 1 else values.reshape(accessor["count"], width)


def _quat_matrix(q: np.ndarray) -> np.ndarray:
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _skinned_vertices(document: dict, blob: bytes, frame: int) -> np.ndarray:
    """glTF skinning at keyframe ``frame``, from the parsed file only."""
    nodes = document["nodes"]
    trs = [
        [np.array(nd.get("translation", [0, 0, 0]), float), np.array(nd.get("rotation", [0, 0, 0, 1]), float)]
        for nd in nodes
    ]
    animation = document["animations"][0]
    for channel in animation["channels"]:
        sampler = animation["samplers"][channel["sampler"]]
        assert sampler["interpolation"] == "LINEAR"
        times, values = _read(document, blob, sampler["input"]), _read(document, blob, sampler["output"])
        assert len(values) == len(times)
        slot = {"translation": 0, "rotation": 1}[channel["target"]["path"]]
        trs[channel["target"]["node"]][slot] = values[frame].astype(np.float64)

    world: dict[int, np.ndarray] = {}

    def visit(index: int, parent: np.ndarray) -> None:
        local = np.eye(4)
        local[:3, :3] = _quat_matrix(trs[index][1])
        local[:3, 3] = trs[index][0]
        world[index] = parent @ local
        for c in nodes[index].get("children", []):
            visit(c, world[index])

    for root in document["scenes"][document["scene"]]["nodes"]:
        visit(root, np.eye(4))
    assert len(world) == len(nodes)  # every node reached exactly once through the hierarchy

    mesh_node = next(nd for nd in nodes if "mesh" in nd)
    assert not {"translation", "rotation", "scale", "matrix"} & set(mesh_node)
    skin = document["skins"][mesh_node["skin"]]
    inverse_bind = _read(document, blob, skin["inverseBindMatrices"]).reshape(-1, 4, 4).transpose(0, 2, 1)
    skin_matrices = np.stack([world[j] for j in skin["joints"]]) @ inverse_bind
    attributes = document["meshes"][mesh_node["mesh"]]["primitives"][0]["attributes"]
    positions = _read(document, blob, attributes["POSITION"]).astype(np.float64)
    joints = _read(document, blob, attributes["JOINTS_0"]).astype(np.int64)
    weights = _read(document, blob, attributes["WEIGHTS_0"]).astype(np.float64)
    blended = np.einsum("vk,vkij->vij", weights, skin_matrices[joints])
    return np.einsum("vij,vj->vi", blended[:, :3, :3], positions) + blended[:, :3, 3]


# --- tests -----------------------------------------------------------------------------------------

CHAIN = [-1, 0, 1]
TREE = [-1, 0, 1, 1, 0, 4]


@pytest.mark.parametrize(
    ("parents", "frames", "rigid"),
    [(CHAIN, 5, True), (TREE, 5, True), (TREE, 1, True), (TREE, 6, False)],
    ids=["chain", "tree", "single-frame", "non-rigid"],
)
def test_glb_skinning_reproduces_lbs(parents: list[int], frames: int, rigid: bool) -> None:
    rig = _rig(parents, frames, rigid)
    glb = animated_mesh_glb(**rig, node_names=[f"j{n}" for n in range(len(parents))], name="clip")
    document, blob = _parse(glb)
    n, v = len(parents), len(rig["rest_vertices"])

    assert document["asset"] == {"version": "2.0", "generator": "kinemesh"}
    assert document["buffers"] == [{"byteLength": len(blob)}]
    for view in document["bufferViews"]:
        assert view["buffer"] == 0 and view["byteOffset"] + view["byteLength"] <= len(blob)
    primitive = document["meshes"][0]["primitives"][0]
    attributes = primitive["attributes"]
    counts = {key: document["accessors"][index]["count"] for key, index in attributes.items()}
    assert counts == {"POSITION": v, "NORMAL": v, "JOINTS_0": v, "WEIGHTS_0": v}
    assert document["accessors"][primitive["indices"]]["componentType"] == 5125
    np.testing.assert_array_equal(_read(document, blob, primitive["indices"]), rig["faces"].reshape(-1))
    positions = _read(document, blob, attributes["POSITION"])
    np.testing.assert_array_equal(positions, rig["rest_vertices"])
    position_accessor = document["accessors"][attributes["POSITION"]]
    assert position_accessor["min"] == positions.min(axis=0).tolist()
    assert position_accessor["max"] == positions.max(axis=0).tolist()
    normals = _read(document, blob, attributes["NORMAL"])
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(_read(document, blob, attributes["WEIGHTS_0"]).sum(axis=1), 1.0, atol=1e-6)
    assert document["accessors"][attributes["JOINTS_0"]]["componentType"] == 5123

    skin = document["skins"][0]
    assert (
        skin["joints"] == list(range(n)) and document["accessors"][skin["inverseBindMatrices"]]["count"] == n
    )
    assert [nd["name"] for nd in document["nodes"][:n]] == [f"j{k}" for k in range(n)]
    for child, parent in enumerate(parents[1:], start=1):
        assert child in document["nodes"][parent]["children"]

    animation = document["animations"][0]
    targets = [(c["target"]["node"], c["target"]["path"]) for c in animation["channels"]]
    assert sorted(k for k, path in targets if path == "rotation") == list(range(n))
    translated = sorted(k for k, path in targets if path == "translation")
    assert translated == ([0] if rigid else list(range(n)))
    time_accessors = {s["input"] for s in animation["samplers"]}
    assert len(time_accessors) == 1
    time_accessor = time_accessors.pop()
    times = _read(document, blob, time_accessor)
    np.testing.assert_allclose(times, rig["times_s"], rtol=1e-6)
    assert document["accessors"][time_accessor]["min"] == [float(times[0])]
    assert document["accessors"][time_accessor]["max"] == [float(times[-1])]
    for channel in animation["channels"]:
        if channel["target"]["path"] == "rotation":
            q = _read(document, blob, animation["samplers"][channel["sampler"]]["output"]).astype(np.float64)
            assert q.shape == (frames, 4)
            np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-6)
            assert np.all(np.sum(q[1:] * q[:-1], axis=1) >= 0)  # sign-consistent for LINEAR interpolation

    expected = _expected_vertices(rig)
    for t in range(frames):
        np.testing.assert_allclose(_skinned_vertices(document, blob, t), expected[t], rtol=0, atol=1e-5)


def test_normals_are_area_weighted_and_unit() -> None:
    # two triangles sharing vertex 0: a large one facing +Z, a small one facing +X
    vertices = np.array([[0, 0, 0], [2, 0, 0], [0, 2, 0], [0, 0, 0.1], [0, 0.1, 0]], dtype=np.float32)
    faces = np.array([[0, 1, 2], [0, 4, 3]])
    rig = {
        "rest_vertices": vertices,
        "faces": faces,
        "skin_weights": np.ones((5, 1)),
        "node_parents": [-1],
        "rest_heads": np.zeros((1, 3)),
        "global_rotations": np.eye(3)[None, None],
        "posed_heads": np.zeros((1, 1, 3)),
        "times_s": np.zeros(1),
    }
    document, blob = _parse(animated_mesh_glb(**rig))
    normals = _read(document, blob, document["meshes"][0]["primitives"][0]["attributes"]["NORMAL"])
    expected_0 = np.array([0.01, 0, 4.0]) / np.linalg.norm([0.01, 0, 4.0])
    np.testing.assert_allclose(normals, [expected_0, [0, 0, 1], [0, 0, 1], [1, 0, 0], [1, 0, 0]], atol=1e-6)


def _bad(key: str, value: object) -> dict:
    rig = _rig(CHAIN, 5)
    rig[key] = value(rig) if callable(value) else value
    return rig


@pytest.mark.parametrize(
    ("rig", "match"),
    [
        (_bad("rest_vertices", lambda r: r["rest_vertices"][:, :2]), "rest_vertices"),
        (
            _bad(
                "rest_vertices", lambda r: np.where(np.arange(14)[:, None] == 3, np.nan, r["rest_vertices"])
            ),
            "rest_vertices",
        ),
        (_bad("faces", lambda r: r["faces"] + 14), "faces"),
        (_bad("faces", lambda r: r["faces"].astype(float)), "faces"),
        (_bad("skin_weights", lambda r: r["skin_weights"][:, :2]), "skin_weights"),
        (_bad("skin_weights", lambda r: r["skin_weights"] * 2), "skin_weights"),
        (_bad("node_parents", [-1, 2, 0]), "node_parents"),
        (_bad("node_parents", [0, 0, 1]), "node_parents"),
        (_bad("rest_heads", lambda r: r["rest_heads"][:2]), "rest_heads"),
        (_bad("global_rotations", lambda r: r["global_rotations"][:4]), "posed_heads"),
        (_bad("global_rotations", lambda r: r["global_rotations"] * 1.1), "global_rotations"),
        (_bad("global_rotations", lambda r: r["global_rotations"][:0]), "global_rotations"),
        (_bad("posed_heads", lambda r: np.full_like(r["posed_heads"], np.inf)), "posed_heads"),
        (_bad("posed_heads", lambda r: r["posed_heads"][:, :2]), "posed_heads"),
        (_bad("times_s", lambda r: r["times_s"][::-1]), "times_s"),
        (_bad("times_s", lambda r: np.array([0.0, 0.1, 0.1, 0.2, 0.3])), "times_s"),
        (_bad("times_s", lambda r: r["times_s"][:4]), "times_s"),
        (_bad("times_s", lambda r: r["times_s"] - 1.0), "times_s"),
        (_bad("times_s", lambda r: np.full(5, np.nan)), "times_s"),
    ],
)
def test_bad_input_raises_value_error(rig: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        animated_mesh_glb(**rig)


def test_node_names_must_match_node_count() -> None:
    with pytest.raises(ValueError, match="node_names"):
        animated_mesh_glb(**_rig(CHAIN, 2), node_names=["a", "b"])
