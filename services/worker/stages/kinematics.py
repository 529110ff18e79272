"""Kinematics stage: each track's body mesh -> virtual markers -> the OpenSim model scaled to the
person -> joint coordinates -> filtered, range-checked coordinates, gait events, and the files
clinicians open (.mot, .trc, the scaled .osim, an angle CSV and a plot).

Coordinates come from NeurIK (`ik="neurik"`, the default: BioPose's learned IK, the bundle's
`neurik` graph run through the worker's inference backend, every window of a track in one call,
then `fit_iterations` Levenberg-Marquardt steps of the markers' least-squares fit from its output,
every frame at once, on the scaled model's forward kinematics in PyTorch: `fit_markers`) or from
OpenSim's own InverseKinematicsTool (`ik="opensim"`: the reference NeurIK is trained against,
solved frame after frame, ~100x slower than the network). The fit minimises what OpenSim IK
minimises, within the same bounds (the model's clamped coordinates), so it lands where IK does
wherever the markers pin the pose; the network alone is 2-3 degrees off IK on real clips' legs.
Coordinates no virtual marker moves (toes, neck, wrists) stay at the model's default either way.
Angles no bound holds (the pelvis's orientation, the shoulders) are then written continuously in
time (whole turns and each three-angle joint's two equivalent Euler triples chosen frame to frame,
`continuous_angles`) so that the low-pass filter never averages two ways of writing one pose.

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
from kinemesh.models.backends.base import InferenceBackend
from kinemesh.models.biomech.gait import GaitResult, gait_events
from kinemesh.models.biomech.neurik import PELVIS_COORDINATES, PELVIS_MARKERS, UNOBSERVED, WindowFn, solve
from kinemesh.models.biomech.opensim_model import OsimModel, degrees, write_mot, write_trc
from kinemesh.models.biomech.osim_torch import TorchKinematics, fit_markers, ik_bounds, marker_rms
from kinemesh.models.biomech.scaling import ScaleResult, scale_model
from kinemesh.models.biomech.signal import LowPass, continuous_angles, limit_violations
from kinemesh.models.biomech.virtual_markers import (
    JOINT_MARKERS,
    VirtualMarkerSet,
    rigid_positions,
    study_markers,
    to_opensim_frame,
)
from kinemesh.models.body.layer import BodyLayer
from kinemesh.models.export.bundle import Bundle
from kinemesh.services.common.errors import ModelUnavailable
from kinemesh.services.common.settings import Settings
from kinemesh.services.worker.stages.base import StageContext
from kinemesh.services.worker.stages.body import BodyResult, TrackBodies

STAGE = "kinematics"
MESH_CHUNK = 1024  # frames posed at once
SAGITTAL = ("hip_flexion_r", "hip_flexion_l", "knee_angle_r", "knee_angle_l", "ankle_angle_r", "ankle_angle_l")
MODEL_SOURCE = "Pose2Sim Model_Pose2Sim_simple.osim with OpenCap's study markers (pose2sim wheel, BSD-3-Clause)"
CONVENTION = ("OpenSim's: angles in degrees, translations in metres; flexion, adduction and internal rotation "
              "positive; knee_angle positive in flexion; ankle_angle positive in dorsiflexion")
ZERO_POSE = "upright standing, arms at the sides, feet forward (the model's default pose)"
METHODS = {"neurik": "neurik", "opensim": "opensim_ik"}  # job option -> the result's method name
NEURIK_GRAPH = "neurik"
# marker-fit steps after the network, KINEMESH_NEURIK_FIT_ITERATIONS's default (bench/RESULTS.md: agreement
# with IK against the step count)
FIT_ITERATIONS: int = Settings.model_fields["neurik_fit_iterations"].default


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
    method: str  # "neurik" or "opensim_ik"
    fixed: list[str]  # coordinates held at the model's default (no marker moves them)
    fit_iterations: int = 0  # marker-fit steps after NeurIK (0 for OpenSim IK)


@dataclass(frozen=True)
class _NeurIK:
    """The bundle's NeurIK graph as the stage uses it."""

    run: WindowFn
    window: int
    coordinates: list[int]  # model-coordinate index of each graph output
    pelvis: list[int]  # model-coordinate index of pelvis tilt ... tz
    pelvis_markers: list[int]  # index of each of PELVIS_MARKERS among the markers


class KinematicsStage:
    """Loads the OpenSim model and places the virtual markers once; runs per job."""

    name = STAGE

    def __init__(self, model_dir: Path | str, layer: BodyLayer, bundle: Bundle | None = None,
                 backend: InferenceBackend | None = None, lowpass: LowPass | None = None, min_frames: int = 2,
                 fit_iterations: int = FIT_ITERATIONS) -> None:
        folder = Path(model_dir) / "opensim"
        model_file, markers_file = folder / MODEL_FILE, folder / MARKERS_FILE
        if not (model_file.is_file() and markers_file.is_file()):
            raise ModelUnavailable(f"OpenSim model files missing in {folder}; run `make opensim`")
        self.model = OsimModel(model_file, markers_file)
        self.layer = layer
        self.lowpass = lowpass or LowPass()
        self.min_frames = min_frames
        self.fit_iterations = fit_iterations
        self._rest = torch.eye(3).expand(1, layer.config.num_joints, 3, 3)  # (1, J, 3, 3)
        with torch.no_grad():
            rest = layer(self._rest, torch.zeros(1, layer.config.num_shape), torch.zeros(1, 3))
        self.markers: VirtualMarkerSet = study_markers(rest.vertices[0].numpy(), rest.joints[0].numpy(),
                                                       layer.config.joint_names)
        self.marker_names = [*self.markers.names, *JOINT_MARKERS]
        self.fixed = [n for n in self.model.coordinate_names if n in UNOBSERVED]
        # angles no bound holds (pelvis, shoulders) are written continuously in time before filtering
        self._triples = TorchKinematics(self.model, self.marker_names).euler_triples()
        self._free_angles = self.model.rotational & ~self.model.clamped
        self.neurik = self._load_neurik(bundle, backend)
        self._lock = threading.Lock()  # OpenSim objects hold one state: one job at a time

    def _load_neurik(self, bundle: Bundle | None, backend: InferenceBackend | None) -> _NeurIK | None:
        """The bundle's NeurIK graph loaded into the backend, or None when the bundle has none."""
        if bundle is None or backend is None or NEURIK_GRAPH not in bundle.manifest["graphs"]:
            return None
        entry = bundle.manifest["graphs"][NEURIK_GRAPH]
        if list(entry["marker_names"]) != self.marker_names:
            raise ModelUnavailable(f"bundle {bundle.root}: its NeurIK graph was trained on markers "
                                   f"{entry['marker_names']}, this worker places {self.marker_names}")
        unknown = set(entry["coordinate_names"]) - set(self.model.coordinate_names)
        if unknown:
            raise ModelUnavailable(f"bundle {bundle.root}: NeurIK predicts coordinates the model lacks: {sorted(unknown)}")
        backend.load(NEURIK_GRAPH, bundle.graph_path(NEURIK_GRAPH))
        names = self.model.coordinate_names

        batch = bundle.batch_for(NEURIK_GRAPH, backend, None)  # windows per call: all, unless tuned on this device

        def run(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            step = batch or max(len(windows), 1)
            parts = [backend.run(NEURIK_GRAPH, {"markers": windows[i:i + step]})
                     for i in range(0, len(windows), step)] or [backend.run(NEURIK_GRAPH, {"markers": windows})]
            return (np.concatenate([o["coordinates"] for o in parts]),
                    np.concatenate([o["pelvis_residual"] for o in parts]))

        return _NeurIK(run, int(entry["config"]["window"]), [names.index(n) for n in entry["coordinate_names"]],
                       [names.index(n) for n in PELVIS_COORDINATES],
                       [self.marker_names.index(n) for n in PELVIS_MARKERS])

    def _require_neurik(self) -> _NeurIK:
        if self.neurik is None:
            raise ModelUnavailable("ik=neurik: the bundle has no NeurIK graph (build it with `make bundle`, "
                                   "which adds models/weights/neurik), or ask for ik=opensim")
        return self.neurik

    def solve_neurik(self, subject: OsimModel, markers: np.ndarray) -> np.ndarray:
        """NeurIK on one track's markers (T, M, 3) (the stage's marker order) on its scaled model:
        coordinates (T, C) SI in the model's order, unpredicted ones at the model's default."""
        nk = self._require_neurik()
        pelvis, joints = solve(nk.run, markers, nk.pelvis_markers, subject.marker_locations(PELVIS_MARKERS), nk.window)
        values = np.repeat(subject.default_values()[None], len(markers), 0)
        values[:, nk.pelvis] = pelvis
        values[:, nk.coordinates] = joints
        return values

    def fit(self, subject: OsimModel, markers: np.ndarray, start: np.ndarray, iterations: int | None = None,
            names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`iterations` (default: the stage's `fit_iterations`) steps of the least-squares marker fit
        on the subject's model from `start` (T, C), every frame at once, within the model's clamped
        ranges (as OpenSim IK), the fixed coordinates held, for markers (T, M, 3) named `names`
        (default: the stage's order): the coordinates (T, C) and each frame's RMS marker error (T,),
        metres (`start` itself and its error for 0 steps)."""
        steps = self.fit_iterations if iterations is None else iterations
        fk = TorchKinematics(subject, names or self.marker_names)
        if steps <= 0:
            return start, marker_rms(fk, start, markers)
        return fit_markers(fk, markers, start, *ik_bounds(subject), steps)

    def _track_markers(self, tb: TrackBodies) -> tuple[list[str], np.ndarray]:
        """(names, (T, M, 3) OpenSim-frame marker positions) of one track: each marker carried by its
        bone (`rigid_positions`), chunk by chunk."""
        chunks, names = [], []
        for i in range(0, len(tb.frame_index), MESH_CHUNK):
            sl = slice(i, i + MESH_CHUNK)
            names, points = rigid_positions(self.markers, self.layer, tb.rotations[sl], tb.shape, tb.translation[sl])
            chunks.append(to_opensim_frame(points))
        return names, np.concatenate(chunks)

    def subject(self, tb: TrackBodies, folder: Path) -> tuple[list[str], np.ndarray, ScaleResult]:
        """One track's marker names, markers (T, M, 3) in OpenSim's axes, and the OpenSim model scaled
        to the person (written to `folder`) from their markers in the body model's rest pose."""
        names, markers = self._track_markers(tb)
        _, static = rigid_positions(self.markers, self.layer, self._rest, tb.shape, np.zeros((1, 3)))
        scaled = scale_model(self.model, to_opensim_frame(static[0]), names, folder / f"track{tb.track_id}.osim")
        return names, markers, scaled

    def run(self, body: BodyResult, fps: float, ctx: StageContext, ik: str = "neurik") -> KinematicsResult:
        if ik not in METHODS:
            raise ValueError(f"ik must be one of {sorted(METHODS)}, not {ik!r}")
        if ik == "neurik":
            self._require_neurik()  # fail before any work
        m = self.model
        # The pelvis's position and orientation are the body's place in the camera's frame, not joint
        # angles: their model ranges describe a lab (pelvis_rotation within +-90 degrees of it), so a
        # person facing away from the camera is not "out of range". Only the joints are checked.
        anatomical = np.array([not n.startswith("pelvis_") for n in m.coordinate_names])
        lo, hi = m.ranges.T
        out, artifacts = [], {}
        with self._lock, tempfile.TemporaryDirectory(prefix="kinemesh-kinematics-") as tmp:
            for k, tb in enumerate(body.tracks):
                ctx.check_cancelled()
                if len(tb.frame_index) < self.min_frames:
                    continue
                folder = Path(tmp) / f"track{tb.track_id}"
                names, markers, scaled = self.subject(tb, folder)
                if ik == "opensim":
                    solved = scaled.model.inverse_kinematics(markers, names, fps, work_dir=folder)
                    raw, error = solved.values, solved.marker_rms_m
                else:
                    raw, error = self.fit(scaled.model, markers, self.solve_neurik(scaled.model, markers), names=names)
                    write_trc(folder / "markers.trc", markers, names, fps)
                values = self.lowpass(continuous_angles(raw, self._free_angles, self._triples, lo, hi), fps)
                time_s = tb.timestamps_s - tb.timestamps_s[0]
                track = TrackKinematics(
                    track_id=tb.track_id, frame_index=tb.frame_index, time_s=time_s, values=values,
                    marker_error_m=error, violations=limit_violations(values, m.coordinates) & anatomical,
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
                artifacts[f"{stem}.png"] = self._plot(track, METHODS[ik])
                track.artifacts["png"] = f"{stem}.png"
                out.append(track)
                ctx.progress(STAGE, (k + 1) / len(body.tracks))
        return KinematicsResult(out, m.coordinate_names, m.rotational, m.ranges, self.marker_names,
                                self.lowpass.describe(fps), artifacts, METHODS[ik], self.fixed,
                                self.fit_iterations if ik == "neurik" else 0)

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

    def _plot(self, track: TrackKinematics, method: str) -> bytes:
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
        fig.suptitle(f"track {track.track_id}: sagittal joint angles ({method}, {self.lowpass.cutoff_hz:g} Hz low-pass)")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        return buf.getvalue()
