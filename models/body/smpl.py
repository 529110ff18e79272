"""SMPL and SMPL-X (operator-supplied model files, through `smplx`) behind the body-layer interface.

forward(pose, shape, transl) -> BodyOutput, as `BodyLayer`:
    pose   (B, J, 3, 3) rotations or (B, J, 6) 6D rotations; J = 24 for SMPL (global orient
           + 23 body joints), 22 for SMPL-X (global orient + 21 body joints; hands, jaw and
           eyes held at rest, expression zero)
    shape  (B, S) betas
    transl (B, 3)
    -> vertices (B, V, 3), joints (B, J, 3) (the kinematic joints only, not smplx's extra
       keypoints), landmarks (B, 33, 3) in BlazePose order.

The model file is the operator's (SMPL's licence forbids redistribution): this module only
wraps `smplx.SMPLLayer` / `smplx.SMPLXLayer`, which read it. Building the wrapped layer is
the factory's job (`create_smpl_layer`), so the module itself does no I/O.

Landmarks: a (33, V) vertex regressor. By default it is built from smplx's own vertex ids
(nose, eyes, ears, toes, heels, fingertips) and the joint regressor's rows (shoulders,
elbows, wrists, hips, knees, ankles); the points SMPL has no vertex id for are affine
combinations of those that sum to one, so they move rigidly with the head or hand:
eye corners = eye -/+ 0.25 (left eye - right eye); mouth corners = 1.8 nose - 0.4 (left eye
+ right eye) +/- 0.4 (left eye - right eye); pinky/index knuckles = 0.6 hand joint + 0.4
fingertip; thumb = 0.5 wrist + 0.5 thumb tip. These are approximations; an operator with a
measured regressor passes it as `landmark_regressor`.

Shape legend: B batch, V vertices, S betas, J pose joints, L landmarks (33).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from kinemesh.models.body.layer import BodyOutput
from kinemesh.models.landmarks import BLAZEPOSE_LANDMARKS
from kinemesh.models.rotations import rot6d_to_matrix

SMPL_JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar",
    "right_collar", "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hand", "right_hand",
)
SMPLX_BODY_JOINT_NAMES = SMPL_JOINT_NAMES[:22]


def default_landmark_regressor(j_regressor: np.ndarray, vertex_ids: dict[str, int],
                               hand_joints: tuple[int, int] | None) -> np.ndarray:
    """(33, V) from a (J, V) joint regressor and smplx's keypoint vertex ids (see module doc).
    `hand_joints`: the (left, right) hand joint rows (SMPL 22/23); None uses the wrists."""
    V = j_regressor.shape[1]

    def vert(name: str) -> np.ndarray:
        row = np.zeros(V)
        row[vertex_ids[name]] = 1.0
        return row

    J = j_regressor
    le, re, nose = vert("leye"), vert("reye"), vert("nose")
    hand_l = J[hand_joints[0]] if hand_joints else J[20]
    hand_r = J[hand_joints[1]] if hand_joints else J[21]
    rows = {
        "nose": nose,
        "left_eye_inner": le - 0.25 * (le - re), "left_eye": le, "left_eye_outer": le + 0.25 * (le - re),
        "right_eye_inner": re + 0.25 * (le - re), "right_eye": re, "right_eye_outer": re - 0.25 * (le - re),
        "left_ear": vert("lear"), "right_ear": vert("rear"),
        "mouth_left": 1.8 * nose - 0.4 * (le + re) + 0.4 * (le - re),
        "mouth_right": 1.8 * nose - 0.4 * (le + re) - 0.4 * (le - re),
        "left_shoulder": J[16], "right_shoulder": J[17], "left_elbow": J[18], "right_elbow": J[19],
        "left_wrist": J[20], "right_wrist": J[21],
        "left_pinky": 0.6 * hand_l + 0.4 * vert("lpinky"), "right_pinky": 0.6 * hand_r + 0.4 * vert("rpinky"),
        "left_index": 0.6 * hand_l + 0.4 * vert("lindex"), "right_index": 0.6 * hand_r + 0.4 * vert("rindex"),
        "left_thumb": 0.5 * J[20] + 0.5 * vert("lthumb"), "right_thumb": 0.5 * J[21] + 0.5 * vert("rthumb"),
        "left_hip": J[1], "right_hip": J[2], "left_knee": J[4], "right_knee": J[5],
        "left_ankle": J[7], "right_ankle": J[8], "left_heel": vert("LHeel"), "right_heel": vert("RHeel"),
        "left_foot_index": vert("LBigToe"), "right_foot_index": vert("RBigToe"),
    }
    return np.stack([rows[n] for n in BLAZEPOSE_LANDMARKS]).astype(np.float32)


class SMPLBodyLayer(nn.Module):
    """Wraps a built `smplx.SMPLLayer` or `smplx.SMPLXLayer` (`kind` "smpl" or "smplx")."""

    def __init__(self, smplx_layer: nn.Module, kind: str, landmark_regressor: torch.Tensor) -> None:
        super().__init__()
        if kind not in ("smpl", "smplx"):
            raise ValueError(f"kind must be 'smpl' or 'smplx', got {kind!r}")
        self.inner = smplx_layer
        self.kind = kind
        self.num_joints = 24 if kind == "smpl" else 22
        self.joint_names = SMPL_JOINT_NAMES if kind == "smpl" else SMPLX_BODY_JOINT_NAMES
        self.landmark_names = BLAZEPOSE_LANDMARKS
        V = smplx_layer.v_template.shape[0]
        if tuple(landmark_regressor.shape) != (len(BLAZEPOSE_LANDMARKS), V):
            raise ValueError(f"landmark_regressor must be (33, {V}), got {tuple(landmark_regressor.shape)}")
        self.register_buffer("landmark_regressor", landmark_regressor.to(smplx_layer.shapedirs.dtype))

    @property
    def faces(self) -> np.ndarray:
        return self.inner.faces  # (F, 3)

    def forward(self, pose: torch.Tensor, shape: torch.Tensor, transl: torch.Tensor) -> BodyOutput:
        rot = rot6d_to_matrix(pose) if pose.shape[-1] == 6 else pose  # (B, J, 3, 3)
        if rot.shape[1] != self.num_joints:
            raise ValueError(f"{self.kind}: pose needs {self.num_joints} joints, got {rot.shape[1]}")
        out = self.inner(betas=shape, global_orient=rot[:, :1], body_pose=rot[:, 1:], transl=transl)
        vertices = out.vertices  # (B, V, 3)
        joints = out.joints[:, : self.num_joints]  # (B, J, 3); smplx appends extra keypoints after these
        landmarks = torch.einsum("lv,bvc->blc", self.landmark_regressor, vertices)  # (B, L, 3)
        return BodyOutput(vertices, joints, landmarks)


def create_smpl_layer(model_path: str | os.PathLike, kind: str = "smpl", num_betas: int = 10,
                      gender: str = "neutral", landmark_regressor: np.ndarray | None = None) -> SMPLBodyLayer:
    """Factory: read the operator's model file (SMPL .pkl, SMPL-X .npz/.pkl) through smplx."""
    import smplx
    from smplx.vertex_ids import vertex_ids

    path = os.fspath(model_path)
    ext = os.path.splitext(path)[1].lstrip(".") or "pkl"
    if kind == "smpl":
        inner = smplx.SMPLLayer(model_path=path, num_betas=num_betas, gender=gender)
        hand_joints: tuple[int, int] | None = (22, 23)
    elif kind == "smplx":
        inner = smplx.SMPLXLayer(model_path=path, num_betas=num_betas, gender=gender, ext=ext,
                                 use_pca=False, flat_hand_mean=True)
        hand_joints = None
    else:
        raise ValueError(f"kind must be 'smpl' or 'smplx', got {kind!r}")
    if landmark_regressor is None:
        ids = vertex_ids["smplh" if kind == "smpl" else "smplx"]
        landmark_regressor = default_landmark_regressor(inner.J_regressor.numpy(), ids, hand_joints)
    return SMPLBodyLayer(inner, kind, torch.as_tensor(landmark_regressor, dtype=torch.float32))
