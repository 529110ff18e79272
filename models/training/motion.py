"""Human motion in anatomical angles: joint limits, motion generators, and the map to SMPL-order rotations.

Synthetic training data needs poses that look like people: within anatomical joint limits and with
the correlations real movement has (a walking leg's hip, knee and ankle move together; arms swing
against legs; a squat bends hips, knees, ankles and trunk at once). So poses are generated as
trajectories of named anatomical angles (degrees), from motion families (gait, squat, sit-to-stand,
reach, gestures, random smooth motion) plus smooth noise, clipped to the limits, then turned into
the 24 SMPL-order joint rotations the body layer takes.

Shape legend: B sequences, T frames, M anatomical angles (len(DOFS)), J = 24 SMPL joints.

Rotation conventions (SMPL's frame: Y up, facing +Z, left = +X; rotations parent-relative about
world-aligned rest axes). Signs were derived from where each rotation moves the child bone:
hip flexion swings the thigh forward = rotation about -X; knee flexion = +X; ankle dorsiflexion
= -X; trunk flexion = +X; left hip abduction = +Z (right: -Z); the T-pose arm comes down to the
side by -90 deg about Z on the left (+90 on the right); left elbow flexion = -Y (right: +Y).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from kinemesh.models.rotations import axis_angle_to_matrix

SMPL_JOINTS = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hand", "right_hand",
)
BODY_JOINTS = tuple(range(1, 22))  # the 21 joints below the root that the tokenizer encodes


@dataclass(frozen=True)
class Dof:
    name: str
    lo: float  # degrees (or the root's offsets, also degrees)
    hi: float
    rest: float = 0.0  # value in a relaxed standing posture


def _sided(name: str, lo: float, hi: float, rest: float = 0.0) -> tuple[Dof, Dof]:
    return Dof(f"{name}_l", lo, hi, rest), Dof(f"{name}_r", lo, hi, rest)


DOFS: tuple[Dof, ...] = (
    Dof("root_pitch", -30, 80), Dof("root_roll", -20, 20), Dof("root_yaw", -45, 45),  # on top of the heading
    *_sided("hip_flex", -25, 125, 2), *_sided("hip_abd", -25, 45, 3), *_sided("hip_rot", -40, 40),
    *_sided("knee_flex", 0, 145, 4),
    *_sided("ankle_dorsi", -45, 25), *_sided("ankle_inv", -20, 20), *_sided("toe_ext", -10, 40),
    Dof("spine1_flex", -15, 35), Dof("spine1_bend", -15, 15), Dof("spine1_twist", -15, 15),
    Dof("spine2_flex", -10, 25), Dof("spine2_bend", -10, 10), Dof("spine2_twist", -12, 12),
    Dof("spine3_flex", -10, 20), Dof("spine3_bend", -10, 10), Dof("spine3_twist", -12, 12),
    Dof("neck_flex", -30, 40), Dof("neck_bend", -20, 20), Dof("neck_twist", -40, 40),
    Dof("head_flex", -20, 30), Dof("head_bend", -15, 15), Dof("head_twist", -30, 30),
    *_sided("collar_elev", -10, 25), *_sided("collar_prot", -15, 15),
    *_sided("sh_flex", -50, 170, 5), *_sided("sh_abd", -10, 170, 8), *_sided("sh_rot", -70, 70),
    *_sided("elbow_flex", 0, 145, 12), *_sided("forearm_pron", -80, 80),
    *_sided("wrist_flex", -60, 60), *_sided("wrist_dev", -25, 25),
)
DOF_INDEX = {d.name: i for i, d in enumerate(DOFS)}
LIMITS_LO = np.array([d.lo for d in DOFS], np.float32)  # (M,)
LIMITS_HI = np.array([d.hi for d in DOFS], np.float32)  # (M,)
REST = np.array([d.rest for d in DOFS], np.float32)  # (M,)


# -- anatomical angles -> rotations ---------------------------------------------------------------

def _axis(angle_deg: Tensor, axis: int) -> Tensor:
    """(...,) degrees about X/Y/Z -> (..., 3, 3)."""
    aa = torch.zeros(*angle_deg.shape, 3, dtype=angle_deg.dtype, device=angle_deg.device)
    aa[..., axis] = angle_deg * (math.pi / 180.0)
    return axis_angle_to_matrix(aa)


def _between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation (3, 3) taking direction a onto direction b."""
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    v, c = np.cross(a, b), float(a @ b)
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return (np.eye(3) + k + k @ k / (1.0 + c)).astype(np.float32)


@dataclass(frozen=True)
class ArmRest:
    """How a body model's rest arms differ from SMPL's T-pose, per side (left, right).

    upper (2, 3, 3) takes the T-pose upper-arm direction (+-X) onto the rest one; fore (2, 3, 3) is the
    rest elbow bend, in the T-pose frame. The identity (SMPL) is the default; Anny rests in an A-pose
    with bent elbows, measured from its joints by `from_joints`.
    """

    upper: np.ndarray
    fore: np.ndarray

    @staticmethod
    def identity() -> ArmRest:
        eye = np.tile(np.eye(3, dtype=np.float32), (2, 1, 1))
        return ArmRest(eye, eye.copy())

    @staticmethod
    def from_joints(joints: np.ndarray) -> ArmRest:
        """Rest joints (24, 3) in SMPL order -> the rest arm frames."""
        upper, fore = [], []
        for shoulder, elbow, wrist, s in ((16, 18, 20, 1.0), (17, 19, 21, -1.0)):
            c = _between(np.array([s, 0.0, 0.0]), joints[elbow] - joints[shoulder])
            forearm_t = c.T @ (joints[wrist] - joints[elbow])  # the rest forearm in the T-pose frame
            upper.append(c)
            fore.append(_between(np.array([s, 0.0, 0.0]), forearm_t))
        return ArmRest(np.stack(upper), np.stack(fore))


def dofs_to_rotations(angles: Tensor, heading: Tensor | None = None, arm_rest: ArmRest | None = None) -> Tensor:
    """Anatomical angles (..., M) degrees -> 24 SMPL-order rotations (..., 24, 3, 3).

    heading (..., 3, 3) is the root orientation the root offsets apply under (identity if None),
    e.g. the person's facing direction and the camera's elevation. arm_rest adapts the arm angles
    to a body model whose rest arms are not SMPL's T-pose (see `ArmRest`): the arm formulas are
    written for the T-pose and conjugated onto the rest frames, so "0 = arm hanging at the side"
    means the same on every model.
    """
    a = {d.name: angles[..., i] for i, d in enumerate(DOFS)}
    X, Y, Z = 0, 1, 2
    eye = torch.eye(3, dtype=angles.dtype, device=angles.device).expand(*angles.shape[:-1], 3, 3)
    rots = [eye] * 24

    def chain(*factors: Tensor) -> Tensor:
        out = factors[0]
        for f in factors[1:]:
            out = out @ f
        return out

    root = chain(_axis(a["root_yaw"], Y), _axis(a["root_pitch"], X), _axis(a["root_roll"], Z))
    rots[0] = root if heading is None else heading @ root
    for side, s in (("l", 1.0), ("r", -1.0)):
        o = 0 if side == "l" else 1
        rots[1 + o] = chain(_axis(-a[f"hip_flex_{side}"], X), _axis(s * a[f"hip_abd_{side}"], Z),
                            _axis(s * a[f"hip_rot_{side}"], Y))
        rots[4 + o] = _axis(a[f"knee_flex_{side}"], X)
        rots[7 + o] = chain(_axis(-a[f"ankle_dorsi_{side}"], X), _axis(s * a[f"ankle_inv_{side}"], Z))
        rots[10 + o] = _axis(-a[f"toe_ext_{side}"], X)
        rots[13 + o] = chain(_axis(s * a[f"collar_elev_{side}"], Z), _axis(-s * a[f"collar_prot_{side}"], Y))
        shoulder = chain(_axis(-a[f"sh_flex_{side}"], X), _axis(s * (a[f"sh_abd_{side}"] - 90.0), Z),
                         _axis(s * a[f"sh_rot_{side}"], X))
        elbow = chain(_axis(-s * a[f"elbow_flex_{side}"], Y), _axis(s * a[f"forearm_pron_{side}"], X))
        if arm_rest is not None:  # R_shoulder = S C^-1, R_elbow = C E F^-1 C^-1 (see ArmRest)
            c = torch.as_tensor(arm_rest.upper[o], dtype=angles.dtype)
            f = torch.as_tensor(arm_rest.fore[o], dtype=angles.dtype)
            shoulder = shoulder @ c.T
            elbow = c @ elbow @ f.T @ c.T
        rots[16 + o], rots[18 + o] = shoulder, elbow
        rots[20 + o] = chain(_axis(-s * a[f"wrist_flex_{side}"], Z), _axis(a[f"wrist_dev_{side}"], Y))
    for joint, prefix in ((3, "spine1"), (6, "spine2"), (9, "spine3"), (12, "neck"), (15, "head")):
        rots[joint] = chain(_axis(a[f"{prefix}_flex"], X), _axis(a[f"{prefix}_bend"], Z),
                            _axis(a[f"{prefix}_twist"], Y))
    return torch.stack(rots, -3)


# -- motion families -------------------------------------------------------------------------------

MOTIONS = ("gait", "run", "squat", "sit_to_stand", "reach", "gesture", "random")


def _smooth_noise(rng: np.random.Generator, t: np.ndarray, shape: tuple[int, ...], max_hz: float = 0.8) -> np.ndarray:
    """Sum of 4 random low-frequency sinusoids per channel, unit-ish amplitude: (T, *shape)."""
    out = np.zeros((len(t), *shape), np.float32)
    for _ in range(4):
        f = rng.uniform(0.05, max_hz, shape)
        ph = rng.uniform(0, 2 * np.pi, shape)
        out += np.sin(2 * np.pi * f * t.reshape(-1, *([1] * len(shape))) + ph) / 2.0
    return out


def _bump(x: np.ndarray, power: float) -> np.ndarray:
    """((1 + cos x) / 2) ** power: a smooth periodic peak at x = 0."""
    return ((1.0 + np.cos(x)) / 2.0) ** power


def _set(A: np.ndarray, name: str, value: np.ndarray | float) -> None:
    A[:, DOF_INDEX[name]] = value


def _add(A: np.ndarray, name: str, value: np.ndarray | float) -> None:
    A[:, DOF_INDEX[name]] += value


def motion_sequence(kind: str, frames: int, fps: float, rng: np.random.Generator) -> np.ndarray:
    """One sequence of anatomical angles (T, M), degrees, within the limits."""
    if kind not in MOTIONS:
        raise ValueError(f"unknown motion {kind!r}; known: {MOTIONS}")
    t = np.arange(frames, dtype=np.float32) / fps
    A = np.tile(REST, (frames, 1))
    A += rng.normal(0, 4, len(DOFS)).astype(np.float32)  # a personal posture
    if kind in ("gait", "run"):
        run = kind == "run"
        f = rng.uniform(1.3, 1.6) if run else rng.uniform(0.75, 1.05)  # strides per second
        phase = 2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)
        hip_amp, knee_peak = (rng.uniform(35, 50), rng.uniform(85, 115)) if run else (rng.uniform(18, 28), rng.uniform(50, 65))
        for side, ph in (("l", phase), ("r", phase + np.pi)):
            _add(A, f"hip_flex_{side}", (18 if run else 8) + hip_amp * np.sin(ph))
            _add(A, f"knee_flex_{side}", knee_peak * _bump(ph - 2.3, 2.5) + 15 * _bump(ph + 0.5, 4))
            _add(A, f"ankle_dorsi_{side}", 6 * np.sin(ph + 1.0) - 18 * _bump(ph - 1.5, 4))
            _add(A, f"toe_ext_{side}", 20 * _bump(ph - 1.2, 4))
            arm = -np.sin(ph) * (rng.uniform(30, 55) if run else rng.uniform(10, 25))  # against the same-side leg
            _add(A, f"sh_flex_{side}", arm)
            _add(A, f"elbow_flex_{side}", (rng.uniform(70, 100) if run else 12) + 10 * np.sin(ph + np.pi))
            _add(A, f"hip_abd_{side}", 3 * np.sin(ph))
        _add(A, "spine1_flex", rng.uniform(8, 20) if run else rng.uniform(0, 8))
        _add(A, "root_yaw", 6 * np.sin(phase))
        _add(A, "spine2_twist", -6 * np.sin(phase))
        _add(A, "root_roll", 3 * np.sin(2 * phase))
    elif kind == "squat":
        f, depth = rng.uniform(0.2, 0.5), rng.uniform(0.3, 1.0)
        d = depth * (1 - np.cos(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))) / 2
        arms = rng.uniform(0, 1)
        for side in ("l", "r"):
            _add(A, f"hip_flex_{side}", 110 * d * rng.uniform(0.9, 1.1))
            _add(A, f"knee_flex_{side}", 130 * d * rng.uniform(0.9, 1.1))
            _add(A, f"ankle_dorsi_{side}", 25 * d)
            _add(A, f"hip_abd_{side}", rng.uniform(0, 20) * d)
            _add(A, f"sh_flex_{side}", 85 * d * arms)
        _add(A, "root_pitch", 30 * d)  # the pelvis tilts forward
        _add(A, "spine1_flex", 15 * d)
        _add(A, "neck_flex", -15 * d)
    elif kind == "sit_to_stand":
        f = rng.uniform(0.1, 0.3)
        u = (1 - np.cos(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))) / 2  # 1 = seated
        lean = np.sin(np.pi * u) ** 2  # the trunk leans forward mid-transition
        for side in ("l", "r"):
            _add(A, f"hip_flex_{side}", rng.uniform(80, 100) * u)
            _add(A, f"knee_flex_{side}", rng.uniform(75, 105) * u)
            _add(A, f"ankle_dorsi_{side}", 10 * u)
            _add(A, f"hip_abd_{side}", rng.uniform(0, 12) * u)
            _add(A, f"elbow_flex_{side}", rng.uniform(20, 80) * u)
            _add(A, f"sh_flex_{side}", rng.uniform(0, 30) * u)
        _add(A, "root_pitch", 35 * lean - 5 * u)
        _add(A, "spine1_flex", 10 * lean + rng.uniform(0, 15) * u)
    elif kind == "reach":
        f = rng.uniform(0.15, 0.5)
        u = (1 - np.cos(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))) / 2  # 1 = at the target
        sides = [("l", "r")[rng.integers(2)]] if rng.uniform() < 0.6 else ["l", "r"]
        down = rng.uniform() < 0.25  # pick something up: bend down towards the floor
        for side in sides:
            _add(A, f"sh_flex_{side}", (rng.uniform(40, 90) if down else rng.uniform(20, 165)) * u)
            _add(A, f"sh_abd_{side}", rng.uniform(0, 110) * u)
            _add(A, f"sh_rot_{side}", rng.uniform(-40, 40) * u)
            _add(A, f"elbow_flex_{side}", rng.uniform(-10, 60) * u)
            _add(A, f"collar_elev_{side}", rng.uniform(0, 20) * u)
        if down:
            _add(A, "root_pitch", rng.uniform(30, 75) * u)
            _add(A, "spine1_flex", rng.uniform(10, 30) * u)
            for side in ("l", "r"):
                _add(A, f"knee_flex_{side}", rng.uniform(0, 60) * u)
                _add(A, f"hip_flex_{side}", rng.uniform(0, 40) * u)
        _add(A, "spine2_twist", rng.uniform(-12, 12) * u)
        _add(A, "spine1_bend", rng.uniform(-12, 12) * u)
    elif kind == "gesture":
        n = _smooth_noise(rng, t, (len(DOFS),), max_hz=1.2)
        arms = [i for i, d in enumerate(DOFS) if d.name.split("_")[0] in ("sh", "elbow", "forearm", "wrist", "collar")]
        span = (LIMITS_HI - LIMITS_LO)[arms]
        A[:, arms] += n[:, arms] * span * 0.3 + span * rng.uniform(0.0, 0.25, len(arms))
        for side in ("l", "r"):  # weight shifts
            _add(A, f"hip_abd_{side}", 4 * n[:, DOF_INDEX["root_roll"]])
            _add(A, f"knee_flex_{side}", 8 * np.abs(n[:, DOF_INDEX[f"knee_flex_{side}"]]))
    else:  # random smooth motion over the whole range
        n = _smooth_noise(rng, t, (len(DOFS),))
        mid, span = (LIMITS_HI + LIMITS_LO) / 2, (LIMITS_HI - LIMITS_LO)
        A = (mid + n * span * rng.uniform(0.15, 0.45)).astype(np.float32)
        A[:, :3] *= 0.3
    A += 3.0 * _smooth_noise(rng, t, (len(DOFS),), max_hz=1.5)  # everything jitters a little
    return np.clip(A, LIMITS_LO, LIMITS_HI)


def headings(frames: int, fps: float, rng: np.random.Generator, turning: bool) -> np.ndarray:
    """Facing direction and camera elevation per frame as (T, 3) degrees (yaw, pitch, roll)."""
    t = np.arange(frames, dtype=np.float32) / fps
    yaw = rng.uniform(0, 360) + (rng.uniform(-40, 40) * t if turning else 0)
    pitch = rng.uniform(-20, 25)  # camera above (positive: the body tips towards the camera's view)
    roll = rng.normal(0, 4)
    out = np.zeros((frames, 3), np.float32)
    out[:, 0], out[:, 1], out[:, 2] = yaw, pitch, roll
    return out


def heading_matrices(h: Tensor) -> Tensor:
    """(..., 3) degrees (yaw, pitch, roll) -> (..., 3, 3) = R_x(pitch) R_z(roll) R_y(yaw)."""
    return _axis(h[..., 1], 0) @ _axis(h[..., 2], 2) @ _axis(h[..., 0], 1)
