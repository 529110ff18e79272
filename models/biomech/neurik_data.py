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
So the labels are exact for their markers, and the motions are the body model's, as at run time.

Shape legend: T frames, M markers, C coordinates, S shape coefficients.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kinemesh.models.biomech.neurik import PELVIS_MARKERS
from kinemesh.models.biomech.opensim_model import OsimModel
from kinemesh.models.biomech.scaling import scale_model
from kinemesh.models.biomech.virtual_markers import VirtualMarkerSet, rigid_positions, to_opensim_frame
from kinemesh.models.training.motion import MOTIONS, dofs_to_rotations, motion_sequence
from kinemesh.models.training.synth import arm_rest

STANDING = np.array([0.0, 0.9, 0.0])  # where the pelvis stands in OpenSim's ground, metres


@dataclass
class NeurIKSequences:
    markers: np.ndarray  # (P, T, M, 3) metres, OpenSim frame, NaN where occluded
    coordinates: np.ndarray  # (P, T, C) SI, inside the model's ranges
    scale_factors: np.ndarray  # (P, B) each body's scale factor (order: `bodies`)
    marker_names: list[str]
    coordinate_names: list[str]
    bodies: list[str]
    motion: list[str]  # (P,) the motion family of each sequence
    subject: np.ndarray  # (P,) int64 which subject each sequence is of


def generate(model: OsimModel, layer, markers: VirtualMarkerSet, subjects: int, sequences_per_subject: int,
             frames: int, seed: int, fps: float = 30.0, noise_m: float = 0.005, occlusion: float = 0.3,
             offset_deg: float = 4.0, max_shape: float = 1.5, work_dir: Path | str | None = None) -> NeurIKSequences:
    """`subjects` random bodies x `sequences_per_subject` motions of `frames` frames (see the module).
    The scaled subject models are kept in `work_dir` (subject<k>.osim) when given."""
    rng = np.random.default_rng(seed)
    lo, hi = model.ranges.T  # (C,) each
    out_m, out_c, out_s, kinds, who = [], [], [], [], []
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
                kind = MOTIONS[int(rng.integers(len(MOTIONS)))]
                angles = motion_sequence(kind, frames, fps, rng)
                rot = dofs_to_rotations(torch.from_numpy(angles).float(), None, rest_arms)
                _, track = rigid_positions(markers, layer, rot, shape, np.zeros((frames, 3)))
                teacher = subject.inverse_kinematics(to_opensim_frame(track) + STANDING, names, fps).values
                # a slow offset per coordinate widens the poses beyond the generator's families
                drift = np.radians(offset_deg) * np.sin(
                    np.linspace(0, rng.uniform(0.5, 2.0) * np.pi, frames)[:, None] + rng.uniform(0, 2 * np.pi, len(lo)))
                drift[:, ~model.rotational] = 0.0
                coords = np.clip(teacher + drift, lo, hi)
                pos = subject.marker_positions(coords)[:, order]  # (T, M, 3) exact, in `names` order
                pos = pos + rng.normal(0.0, noise_m, pos.shape)
                if rng.uniform() < occlusion:  # one marker hidden over a stretch (not the pelvis's six,
                    j = int(rng.choice(limb))    # which place the pelvis and are never hidden on a mesh)
                    a = int(rng.integers(frames))
                    pos[a:a + int(rng.integers(frames // 4, frames + 1)), j] = np.nan
                out_m.append(pos.astype(np.float32))
                out_c.append(coords.astype(np.float32))
                out_s.append([scaled.scale_factors[b] for b in bodies])
                kinds.append(kind)
                who.append(s)
    return NeurIKSequences(np.stack(out_m), np.stack(out_c), np.asarray(out_s, np.float32), names,
                           model.coordinate_names, bodies, kinds, np.asarray(who, np.int64))
