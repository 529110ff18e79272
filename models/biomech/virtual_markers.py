"""Virtual markers: mesh vertices at the anatomical landmarks of OpenCap's "study" marker set, so a
body-model mesh can be tracked by OpenSim like a motion-capture subject.

Each marker is one vertex of the body model's mesh, chosen once on the rest mesh (mean shape, the
model's rest pose) by an anatomical rule: the most anterior point of the pelvis a few centimetres
above the hip joint is the ASIS, the most lateral point of the leg at the knee joint's height is
the lateral femoral epicondyle, and so on. The ids are computed once per mesh topology (as OpenCap
and BioPose do with SMPL); `rigid_positions` then carries each marker with the bone its landmark is
on, and the hip joint centres come from the body model's joints.

Frame: the body model's (x = the body's left, y up, z forwards), metres.
Shape legend: V vertices, J joints, M markers.

The thigh and shank clusters of the study set are not landmarks of fixed anatomy (they are stuck on
where convenient), so they are left out: 29 surface markers (14 a side and C7) and 2 joint centres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIDES = {"L": 1.0, "r": -1.0}  # OpenCap's prefixes; the sign of x on that side of the body


# Joint centres of the study set, taken from the body model's joints (they are inside the body)
JOINT_MARKERS = {"RHJC_study": "right_hip", "LHJC_study": "left_hip"}

# The bone each marker's landmark is on, named by the body-model joint that moves that bone (SMPL
# order: the thigh turns at the hip, the shank at the knee, ...). `rigid_positions` carries a marker
# with its bone, as a marker on a bony landmark moves; a skinned vertex near a joint is a blend of two
# bones (the ASIS vertex moves 15 % with the thigh), which tilts the fitted pelvis in deep flexion.
_BONE = {"ASIS": "pelvis", "PSIS": "pelvis", "knee": "hip", "mknee": "hip", "ankle": "knee", "mankle": "knee",
         "toe": "foot", "calc": "ankle", "5meta": "ankle", "shoulder": "collar", "lelbow": "shoulder",
         "melbow": "shoulder", "lwrist": "elbow", "mwrist": "elbow"}


def marker_bone(name: str) -> str:
    """Body-model joint whose bone carries the study marker `name` (e.g. r_knee_study -> right_hip)."""
    if name == "C7_study":
        return "spine3"
    side = {"L": "left", "r": "right"}[name[0]]
    landmark = name[2:].removesuffix("_study")
    bone = _BONE[landmark]
    return bone if bone == "pelvis" else f"{side}_{bone}"


@dataclass(frozen=True)
class VirtualMarkerSet:
    names: tuple[str, ...]  # OpenSim marker names (OpenCap's study set)
    vertex_ids: np.ndarray  # (M,) int64 mesh vertex per marker

    def positions(self, vertices: np.ndarray) -> np.ndarray:
        """Mesh vertices (..., V, 3) -> marker positions (..., M, 3)."""
        return np.asarray(vertices)[..., self.vertex_ids, :]

    def with_joints(self, vertices: np.ndarray, joints: np.ndarray, joint_names: list[str] | tuple[str, ...]
                    ) -> tuple[list[str], np.ndarray]:
        """The surface markers and the joint-centre markers (JOINT_MARKERS): names and positions
        (..., M + 2, 3) from vertices (..., V, 3) and joints (..., J, 3)."""
        index = [list(joint_names).index(j) for j in JOINT_MARKERS.values()]
        points = np.concatenate([self.positions(vertices), np.asarray(joints)[..., index, :]], -2)
        return [*self.names, *JOINT_MARKERS], points


def rigid_positions(markers: VirtualMarkerSet, layer, rotations, shape, translation) -> tuple[list[str], np.ndarray]:
    """Markers carried rigidly by their bones (see `marker_bone`) plus the joint-centre markers:
    names and positions (T, M + 2, 3) for rotations (T, J, 3, 3), one shape (S,) and translations
    (T, 3) of a body-model layer. Cheaper than skinning the mesh: no vertex but the markers is posed."""
    import torch

    names = list(layer.config.joint_names)
    node_joint = np.asarray(layer.config.node_joint)
    bone_node = [int(np.flatnonzero(node_joint == names.index(marker_bone(m)))[0]) for m in markers.names]
    rot = torch.as_tensor(rotations, dtype=torch.float32)
    T = rot.shape[0]
    with torch.no_grad():
        rest, heads = layer.shaped(torch.as_tensor(shape, dtype=torch.float32)[None])  # (1, V, 3), (1, N, 3)
        g, w = layer.node_transforms(rot, heads.expand(T, -1, -1))  # (T, N, 3, 3), (T, N, 3)
        local = rest[0, markers.vertex_ids] - heads[0, bone_node]  # (M, 3) offsets from each bone's head
        surface = (g[:, bone_node] @ local[None, :, :, None])[..., 0] + w[:, bone_node]  # (T, M, 3)
        joints = torch.einsum("jn,tnc->tjc", layer.joint_from_nodes, w)  # (T, J, 3)
    transl = torch.as_tensor(translation, dtype=torch.float32)[:, None]
    centres = joints[:, [names.index(j) for j in JOINT_MARKERS.values()]]
    points = torch.cat([surface, centres], 1) + transl
    return [*markers.names, *JOINT_MARKERS], points.numpy()


def to_opensim_frame(points: np.ndarray) -> np.ndarray:
    """Body-model frame (x the body's left, y up, z forwards) -> OpenSim's ground for a subject
    facing +X (x forwards, y up, z to the right): (z, y, -x), a proper rotation."""
    p = np.asarray(points)
    return np.stack([p[..., 2], p[..., 1], -p[..., 0]], -1)


def _pick(mask: np.ndarray, score: np.ndarray, what: str) -> int:
    """The vertex with the highest score among those in mask."""
    if not mask.any():
        raise ValueError(f"no mesh vertex qualifies as {what}: is this a human body mesh in its rest pose?")
    idx = np.flatnonzero(mask)
    return int(idx[np.argmax(score[idx])])


def study_markers(vertices: np.ndarray, joints: np.ndarray, joint_names: list[str] | tuple[str, ...]
                  ) -> VirtualMarkerSet:
    """Choose the vertices of the study markers on a rest mesh (V, 3) with its joints (J, 3) named
    in SMPL's order (pelvis, left_hip, ..., right_wrist)."""
    v = np.asarray(vertices, dtype=np.float64)
    j = {n: np.asarray(p, dtype=np.float64) for n, p in zip(joint_names, joints, strict=True)}
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    out: dict[str, int] = {}

    def near(point: np.ndarray, radius: float) -> np.ndarray:
        return np.linalg.norm(v - point, axis=1) < radius

    for p, s in SIDES.items():
        side = "left" if s > 0 else "right"
        hip, knee, ankle, foot = (j[f"{side}_{k}"] for k in ("hip", "knee", "ankle", "foot"))
        shoulder, elbow, wrist = (j[f"{side}_{k}"] for k in ("shoulder", "elbow", "wrist"))
        sx = s * x  # lateral coordinate on this side
        # pelvis, 4-10 cm above the hip joint: the ASIS is the most anterior point straight above the
        # joint (up to 4 cm outside it), the PSIS the most posterior point 1.5-8 cm from the midline
        band = (y > hip[1] + 0.04) & (y < hip[1] + 0.10)
        out[f"{p}.ASIS_study"] = _pick(band & (sx > s * hip[0] - 0.01) & (sx < s * hip[0] + 0.04), z, "ASIS")
        out[f"{p}.PSIS_study"] = _pick(band & (sx > 0.015) & (sx < 0.08), -z, "PSIS")
        # knee and ankle: the leg's most lateral and most medial points at the joint's height
        for name, joint, reach in (("knee", knee, 0.09), ("ankle", ankle, 0.07)):
            ring = (np.abs(y - joint[1]) < 0.015) & near(joint, reach)
            out[f"{p}_{name}_study"] = _pick(ring, sx, f"lateral {name}")
            out[f"{p}_m{name}_study"] = _pick(ring, -sx, f"medial {name}")
        # foot: toe tip (most anterior), heel (most posterior below the ankle), fifth metatarsal head
        # (most lateral point of the forefoot)
        below = (y < ankle[1] - 0.01) & (np.abs(x - foot[0]) < 0.08)
        out[f"{p}_toe_study"] = _pick(below, z, "toe")
        out[f"{p}_calc_study"] = _pick(below & (z < ankle[2] + 0.02), -z, "heel")
        forefoot = below & (np.abs(z - foot[2]) < 0.03)
        out[f"{p}_5meta_study"] = _pick(forefoot, sx, "fifth metatarsal")
        # shoulder: the acromion, the top of the shoulder above the joint
        out[f"{p}_shoulder_study"] = _pick(near(shoulder, 0.08) & (sx > s * shoulder[0] - 0.005), y, "acromion")
        # elbow and wrist: the extremes across the limb, in the body's frontal plane
        for name, joint, nxt, reach in (("elbow", elbow, wrist, 0.05), ("wrist", wrist, j[f"{side}_hand"], 0.04)):
            axis = (nxt - joint) / np.linalg.norm(nxt - joint)
            across = np.cross(axis, np.array([0.0, 0.0, 1.0]))  # perpendicular to the limb, frontal plane
            across *= np.sign(s * across[0]) or 1.0  # pointing away from the body
            ring = near(joint, reach) & (np.abs((v - joint) @ axis) < 0.015)
            score = (v - joint) @ across
            out[f"{p}_l{name}_study"] = _pick(ring, score, f"lateral {name}")
            out[f"{p}_m{name}_study"] = _pick(ring, -score, f"medial {name}")
    # C7: the most posterior point of the back of the neck at the neck joint's height
    neck = j["neck"]
    out["C7_study"] = _pick((np.abs(y - neck[1]) < 0.03) & (np.abs(x) < 0.03), -z, "C7")
    names = tuple(out)
    return VirtualMarkerSet(names, np.array([out[n] for n in names], dtype=np.int64))
