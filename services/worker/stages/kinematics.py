"""Kinematics stage: each track's body mesh -> virtual markers -> the OpenSim model scaled to the
person -> OpenSim inverse kinematics -> filtered, range-checked joint coordinates, gait events, and
the files clinicians open (.mot, .trc, the scaled .osim, an angle CSV and a plot).

NeurIK (BioPose's learned IK, issue 4) is not trained yet: this stage runs OpenSim's own
InverseKinematicsTool, the method NeurIK is to be trained against.

Frames: markers go to OpenSim in the camera's frame turned to OpenSim's axes (`to_opensim_frame`:
x towards the camera, y the camera's up, z the image's left), so the pelvis translations are in the
camera's frame, not a floor frame; the joint angles do not depend on it.
"""

from __future__ import annotations

import csv
import io
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kinemesh.models.assets.opensim_models import MARKERS_FILE, MODEL_FILE
from kinemesh.models.biomech.gait import GaitResult, gait_events
from kinemesh.models.biomech.opensim_model import OsimModel, degrees, write_mot
from kinemesh.models.biomech.scaling import scale_model
from kinemesh.models.biomech.signal import LowPass, limit_violations
from kinemesh.models.biomech.virtual_markers import (
    JOINT_MARKERS,
    VirtualMarkerSet,
    rigid_positions,
    study_markers,
    to_opensim_frame,
)
from kinemesh.models.body.layer import BodyLayer
from kinemesh.services.common.errors import ModelUnavailable
from kinemesh.services.worker.stages.base import StageContext
from kinemesh.services.worker.stages.body import BodyResult, TrackBodies

STAGE = "kinematics"
MESH_CHUNK = 1024  # frames posed at once
SAGITTAL = ("hip_flexion_r", "hip_flexion_l", "knee_angle_r", "knee_angle_l", "ankle_angle_r", "ankle_angle_l")
MODEL_SOURCE = "Pose2Sim Model_Pose2Sim_simple.osim with OpenCap's study markers (pose2sim wheel, BSD-3-Clause)"
CONVENTION = ("OpenSim's: angles in degrees, translations in metres; flexion, adduction and internal rotation "
              "positive; knee_angle positive in flexion; ankle_angle positive in dorsiflexion")
ZERO_POSE = "upright standing, arms at the sides, feet forward (the model's default pose)"


@dataclass
class TrackKinematics:
    track_id: int
    frame_index: np.ndarray  # (T,)
    time_s: np.ndarray  # (T,)
    values: np.ndarray  # (T, C) SI, filtered
    marker_error_m: np.ndarray  # (T,) RMS marker error per frame
    violations: np.ndarray  # (T, C) bool
    scale_factors: dict[str, float]
    gait: GaitResult | None
    artifacts: dict[str, str] = field(default_factory=dict)  # kind (mot, trc, osim, csv, png) -> artifact name


@dataclass
class KinematicsResult:
    tracks: list[TrackKinematics]
    coordinate_names: list[str]
    rotational: np.ndarray  # (C,) bool
    ranges: np.ndarray  # (C, 2) SI
    marker_names: list[str]
    filter: str
    artifacts: dict[str, bytes]


class KinematicsStage:
    """Loads the OpenSim model and places the virtual markers once; runs per job."""

    name = STAGE

    def __init__(self, model_dir: Path | str, layer: BodyLayer, lowpass: LowPass | None = None,
                 min_frames: int = 2) -> None:
        folder = Path(model_dir) / "opensim"
        model_file, markers_file = folder / MODEL_FILE, folder / MARKERS_FILE
        if not (model_file.is_file() and markers_file.is_file()):
            raise ModelUnavailable(f"OpenSim model files missing in {folder}; run `make opensim`")
        self.model = OsimModel(model_file, markers_file)
        self.layer = layer
        self.lowpass = lowpass or LowPass()
        self.min_frames = min_frames
        self._rest = torch.eye(3).expand(1, layer.config.num_joints, 3, 3)  # (1, J, 3, 3)
        with torch.no_grad():
            rest = layer(self._rest, torch.zeros(1, layer.config.num_shape), torch.zeros(1, 3))
        self.markers: VirtualMarkerSet = study_markers(rest.vertices[0].numpy(), rest.joints[0].numpy(),
                                                       layer.config.joint_names)
        self.marker_names = [*self.markers.names, *JOINT_MARKERS]
        self._lock = threading.Lock()  # OpenSim objects hold one state: one job at a time

    def _track_markers(self, tb: TrackBodies) -> tuple[list[str], np.ndarray]:
        """(names, (T, M, 3) OpenSim-frame marker positions) of one track: each marker carried by its
        bone (`rigid_positions`), chunk by chunk."""
        chunks, names = [], []
        for i in range(0, len(tb.frame_index), MESH_CHUNK):
            sl = slice(i, i + MESH_CHUNK)
            names, points = rigid_positions(self.markers, self.layer, tb.rotations[sl], tb.shape, tb.translation[sl])
            chunks.append(to_opensim_frame(points))
        return names, np.concatenate(chunks)

    def run(self, body: BodyResult, fps: float, ctx: StageContext) -> KinematicsResult:
        m = self.model
        # The pelvis's position and orientation are the body's place in the camera's frame, not joint
        # angles: their model ranges describe a lab (pelvis_rotation within +-90 degrees of it), so a
        # person facing away from the camera is not "out of range". Only the joints are checked.
        anatomical = np.array([not n.startswith("pelvis_") for n in m.coordinate_names])
        out, artifacts = [], {}
        with self._lock, tempfile.TemporaryDirectory(prefix="kinemesh-kinematics-") as tmp:
            for k, tb in enumerate(body.tracks):
                ctx.check_cancelled()
                if len(tb.frame_index) < self.min_frames:
                    continue
                names, markers = self._track_markers(tb)
                _, static = rigid_positions(self.markers, self.layer, self._rest, tb.shape, np.zeros((1, 3)))
                folder = Path(tmp) / f"track{tb.track_id}"
                scaled = scale_model(m, to_opensim_frame(static[0]), names, folder / f"track{tb.track_id}.osim")
                ik = scaled.model.inverse_kinematics(markers, names, fps, work_dir=folder)
                values = self.lowpass(ik.values, fps)
                time_s = tb.timestamps_s - tb.timestamps_s[0]
                track = TrackKinematics(
                    track_id=tb.track_id, frame_index=tb.frame_index, time_s=time_s, values=values,
                    marker_error_m=ik.marker_rms_m, violations=limit_violations(values, m.coordinates) & anatomical,
                    scale_factors=scaled.scale_factors, gait=self._gait(names, markers, fps))
                stem = f"kinematics_track{tb.track_id}"
                write_mot(folder / "filtered.mot", values, m.coordinate_names, m.rotational, time_s)
                files = {"mot": (f"{stem}.mot", folder / "filtered.mot"), "trc": (f"{stem}.trc", folder / "markers.trc"),
                         "osim": (f"{stem}.osim", scaled.model_path)}
                for kind, (name, path) in files.items():
                    artifacts[name] = path.read_bytes()
                    track.artifacts[kind] = name
                artifacts[f"{stem}.csv"] = self._csv(track)
                track.artifacts["csv"] = f"{stem}.csv"
                artifacts[f"{stem}.png"] = self._plot(track)
                track.artifacts["png"] = f"{stem}.png"
                out.append(track)
                ctx.progress(STAGE, (k + 1) / len(body.tracks))
        return KinematicsResult(out, m.coordinate_names, m.rotational, m.ranges, self.marker_names,
                                self.lowpass.describe(fps), artifacts)

    @staticmethod
    def _gait(names: list[str], markers: np.ndarray, fps: float) -> GaitResult | None:
        at = {n: markers[:, names.index(n)] for n in ("L_calc_study", "L_toe_study", "r_calc_study", "r_toe_study",
                                                       "LHJC_study", "RHJC_study")}
        pelvis = 0.5 * (at["LHJC_study"] + at["RHJC_study"])
        res = gait_events(at["L_calc_study"], at["L_toe_study"], at["r_calc_study"], at["r_toe_study"], pelvis, fps)
        return res if res.cadence_steps_per_min is not None else None

    def _csv(self, track: TrackKinematics) -> bytes:
        m = self.model
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(["frame", "time_s", *[f"{n} ({'deg' if r else 'm'})" for n, r in zip(m.coordinate_names,
                                                                                         m.rotational, strict=True)]])
        shown = degrees(track.values, m.rotational)
        for f, t, row in zip(track.frame_index, track.time_s, shown, strict=True):
            w.writerow([int(f), f"{t:.4f}", *[f"{v:.4f}" for v in row]])
        return out.getvalue().encode()

    def _plot(self, track: TrackKinematics) -> bytes:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        shown = degrees(track.values, self.model.rotational)
        fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
        for ax, pair in zip(axes, (SAGITTAL[0:2], SAGITTAL[2:4], SAGITTAL[4:6]), strict=True):
            for name, style in zip(pair, ("-", "--"), strict=True):
                ax.plot(track.time_s, shown[:, self.model.coordinate_names.index(name)], style, label=name)
            ax.set_ylabel("degrees")
            ax.legend(loc="upper right", fontsize=8)
            ax.grid(alpha=0.3)
        axes[-1].set_xlabel("time (s)")
        fig.suptitle(f"track {track.track_id}: sagittal joint angles (OpenSim IK, {self.lowpass.cutoff_hz:g} Hz low-pass)")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        return buf.getvalue()
