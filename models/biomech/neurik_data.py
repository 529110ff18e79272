"""Synthetic training data for NeurIK (BioPose's learned inverse kinematics): windows of virtual
markers paired with the OpenSim coordinates that produce them.

How a sequence is made:
  1. a subject: a random body shape of the body model; its rest-pose virtual markers scale the
     OpenSim model to it (`scale_model`), so the marker layout is the one the worker will see;
  2. coordinates with natural correlations between joints: a motion of the body model (gait,
     running, squats, sit-to-stand, reaching, gestures, random smooth motion; `motion_sequence`)
     is tracked by OpenSim IK on that subject, then a slow random offset per coordinate (a few
     degrees) is added and everything is clipped into the model's ranges;
  3. markers by OpenSim forward kinematics of those coordinates on the subject (exact), then
     marker noise and occlusion (markers missing for a stretch of frames, NaN).
Each motion gives two sequences, both labelled by what OpenSim IK gives on their markers:
  - "body": the body model's own virtual markers and the teacher's coordinates for them: exactly
    what the worker feeds NeurIK at run time (the body model's skeleton is not OpenSim's, so the
    markers fit the scaled model to ~1-2 cm, and NeurIK must reproduce how OpenSim IK resolves that);
  - "fk": the drifted coordinates' forward kinematics, with noise (1 mm: the worker's markers come
    from a mesh, and forearm rotation moves the wrist markers ~1 mm a degree, so more noise blurs
    it) and occlusion: exact labels for poses beyond the body model's motion families.
Coordinates no virtual marker moves (`UNOBSERVED`: toes, neck, wrists) get no drift: OpenSim IK
leaves them at the model's default, and so does NeurIK.

Only motions OpenSim IK tracks well-posed are kept (`well_posed`): the body model's arms reach
further than the OpenSim model's shoulder ranges (arm_flex within +-90 degrees), and where IK pins
a shoulder angle at its limit it trades the other two, flipping them by tens of degrees from one
frame to the next: no function of the markers, so neither a label nor a pose inside the model's
ranges. A rejected motion is replaced by a new draw (arm excursions are scaled by 0.3-1 to keep
more of them); the count is reported.

Shape legend: T frames, M markers, C coordinates, S shape coefficients.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kinemesh.models.biomech.neurik import PELVIS_MARKERS, UNOBSERVED
from kinemesh.models.biomech.opensim_model import OsimModel
from kinemesh.models.biomech.scaling import scale_model
from kinemesh.models.biomech.virtual_markers import VirtualMarkerSet, rigid_positions, to_opensim_frame
from kinemesh.models.training.motion import DOFS, MOTIONS, REST, dofs_to_rotations, motion_sequence
from kinemesh.models.training.synth import arm_rest

STANDING = np.array([0.0, 0.9, 0.0])  # where the pelvis stands in OpenSim's ground, metres
DATA_VERSION = 2  # bump when what `generate` makes changes (training caches generated data under it)
ARM_DOFS = np.array([d.name.split("_")[0] in ("sh", "elbow", "forearm", "wrist", "collar") for d in DOFS])
SHOULDER_COORDINATES = ("arm_flex_r", "arm_add_r", "arm_rot_r", "arm_flex_l", "arm_add_l", "arm_rot_l")
SHOULDER_MARGIN_DEG = 3.0  # a shoulder angle this close to its limit counts as pinned there
MAX_SPEED_DEG_S = 900.0  # faster than any joint of a clinical motion: an IK flip
MAX_TRIES = 40


def ik_flips(values: np.ndarray, model: OsimModel, fps: float) -> np.ndarray:
    """(T - 1,) bool: the steps between frames where some rotational coordinate of OpenSim IK's
    (T, C) moves faster than MAX_SPEED_DEG_S (an IK flip)."""
    step = np.abs(np.diff(values[:, model.rotational], axis=0))  # (T - 1, rotational)
    return step.max(1, initial=0.0) > np.radians(MAX_SPEED_DEG_S / fps)


def well_posed(values: np.ndarray, model: OsimModel, fps: float) -> bool:
    """Whether OpenSim IK's coordinates (T, C) of a motion are usable labels: no flip (`ik_flips`),
    and no shoulder angle sits at its limit."""
    if ik_flips(values, model, fps).any():
        return False
    idx = [model.coordinate_names.index(n) for n in SHOULDER_COORDINATES]
    lo, hi = model.ranges[idx].T
    margin = np.radians(SHOULDER_MARGIN_DEG)
    v = values[:, idx]
    return not ((v < lo + margin) | (v > hi - margin)).any()


@dataclass
class NeurIKSequences:
    markers: np.ndarray  # (P, T, M, 3) metres, OpenSim frame, NaN where occluded
    coordinates: np.ndarray  # (P, T, C) SI, inside the model's ranges
    scale_factors: np.ndarray  # (P, B) each body's scale factor (order: `bodies`)
    marker_names: list[str]
    coordinate_names: list[str]
    bodies: list[str]
    motion: list[str]  # (P,) the motion family of each sequence
    kind: list[str]  # (P,) "body" (the body model's markers, teacher labels) or "fk" (see the module)
    rejected: int  # motions drawn and dropped as not well-posed (`well_posed`)
    subject: np.ndarray  # (P,) int64 which subject each sequence is of


def generate(model: OsimModel, layer, markers: VirtualMarkerSet, subjects: int, sequences_per_subject: int,
             frames: int, seed: int, fps: float = 30.0, noise_m: float = 0.001, occlusion: float = 0.3,
             offset_deg: float = 4.0, max_shape: float = 1.5, work_dir: Path | str | None = None) -> NeurIKSequences:
    """`subjects` random bodies x `sequences_per_subject` motions of `frames` frames (see the module).
    The scaled subject models are kept in `work_dir` (subject<k>.osim) when given."""
    rng = np.random.default_rng(seed)
    lo, hi = model.ranges.T  # (C,) each
    out_m, out_c, out_s, kinds, who, sources = [], [], [], [], [], []
    fixed = np.array([n in UNOBSERVED for n in model.coordinate_names])
    rejected = 0
    names: list[str] = []
    bodies: list[str] = []
    S = layer.config.num_shape
    eye = torch.eye(3).expand(1, layer.config.num_joints, 3, 3)
    rest_arms = arm_rest(layer)  # the body model's rest arms (Anny: an A-pose)
    with tempfile.TemporaryDirectory(prefix="kinemesh-neurik-") as tmp:
        folder = Path(work_dir) if work_dir is not None else Path(tmp)
        for s in range(subjects):
            shape = np.clip(rng.normal(size=S), -max_shape, max_shape).astype(np.float32)
            names, static = rigid_positions(markers, layer, eye, shape, np.zeros((1, 3)))
            scaled = scale_model(model, to_opensim_frame(static[0]) + STANDING, names, folder / f"subject{s}.osim")
            subject = scaled.model
            order = [subject.marker_names.index(n) for n in names]
            limb = [i for i, n in enumerate(names) if n not in PELVIS_MARKERS]
            bodies = sorted(scaled.scale_factors)
            for _ in range(sequences_per_subject):
                for _ in range(MAX_TRIES):
                    kind = MOTIONS[int(rng.integers(len(MOTIONS)))]
                    angles = motion_sequence(kind, frames, fps, rng)
                    angles[:, ARM_DOFS] = REST[ARM_DOFS] + rng.uniform(0.3, 1.0) * (angles[:, ARM_DOFS] - REST[ARM_DOFS])
                    rot = dofs_to_rotations(torch.from_numpy(angles).float(), None, rest_arms)
                    _, track = rigid_positions(markers, layer, rot, shape, np.zeros((frames, 3)))
                    seen = to_opensim_frame(track) + STANDING
                    teacher = np.clip(subject.inverse_kinematics(seen, names, fps).values, lo, hi)
                    if well_posed(teacher, model, fps):
                        break
                    rejected += 1
                else:
                    raise RuntimeError(f"no well-posed motion in {MAX_TRIES} draws for subject {s}")
                # a slow offset per coordinate widens the poses beyond the generator's families
                drift = np.radians(offset_deg) * np.sin(
                    np.linspace(0, rng.uniform(0.5, 2.0) * np.pi, frames)[:, None] + rng.uniform(0, 2 * np.pi, len(lo)))
                drift[:, ~model.rotational | fixed] = 0.0
                coords = np.clip(teacher + drift, lo, hi)
                pos = subject.marker_positions(coords)[:, order]  # (T, M, 3) exact, in `names` order
                pos = pos + rng.normal(0.0, noise_m, pos.shape)
                if rng.uniform() < occlusion:  # one marker hidden over a stretch (not the pelvis's six,
                    j = int(rng.choice(limb))    # which place the pelvis and are never hidden on a mesh)
                    a = int(rng.integers(frames))
                    pos[a:a + int(rng.integers(frames // 4, frames + 1)), j] = np.nan
                for source, (mk, co) in (("body", (seen, teacher)), ("fk", (pos, coords))):
                    out_m.append(mk.astype(np.float32))
                    out_c.append(co.astype(np.float32))
                    out_s.append([scaled.scale_factors[b] for b in bodies])
                    kinds.append(kind)
                    who.append(s)
                    sources.append(source)
    return NeurIKSequences(np.stack(out_m), np.stack(out_c), np.asarray(out_s, np.float32), names,
                           model.coordinate_names, bodies, kinds, sources, rejected, np.asarray(who, np.int64))
