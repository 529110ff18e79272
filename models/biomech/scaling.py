"""Scaling the OpenSim model to a subject from a static pose of markers: OpenSim's ScaleTool with a
measurement set written for the virtual study markers (segment lengths from marker pairs), then its
marker placer (the markers moved onto the subject's static pose).

Each OpenSim body is scaled uniformly by the mean ratio of its marker-pair distances, subject over
model: the thigh by hip joint centre to lateral knee, the shank by knee to ankle (lateral and
medial), the foot by heel to toe and to the fifth metatarsal, the pelvis by its ASIS and PSIS
distances, the torso by C7 to the PSIS and shoulder to shoulder, the upper arm by acromion to
lateral elbow, the forearm and hand by elbow to wrist.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kinemesh.models.biomech.opensim_model import OsimModel, _opensim, write_trc

_ARM = {s: [(f"{s}_shoulder_study", f"{s}_lelbow_study")] for s in ("r", "L")}
_FOREARM = {s: [(f"{s}_lelbow_study", f"{s}_lwrist_study"), (f"{s}_melbow_study", f"{s}_mwrist_study")]
            for s in ("r", "L")}
_FOOT = {s: [(f"{s}_calc_study", f"{s}_toe_study"), (f"{s}_calc_study", f"{s}_5meta_study")] for s in ("r", "L")}
_SIDE = {"r": "r", "L": "l"}

# OpenSim body -> the marker pairs whose subject/model distance ratio scales it
MEASUREMENTS: dict[str, list[tuple[str, str]]] = {
    "pelvis": [("r.ASIS_study", "L.ASIS_study"), ("r.ASIS_study", "r.PSIS_study"), ("L.ASIS_study", "L.PSIS_study")],
    "sacrum": [("r.ASIS_study", "L.ASIS_study"), ("r.ASIS_study", "r.PSIS_study"), ("L.ASIS_study", "L.PSIS_study")],
    "torso": [("C7_study", "r.PSIS_study"), ("C7_study", "L.PSIS_study"), ("r_shoulder_study", "L_shoulder_study")],
    "head": [("C7_study", "r.PSIS_study"), ("C7_study", "L.PSIS_study")],
    **{f"femur_{_SIDE[s]}": [(f"{'R' if s == 'r' else 'L'}HJC_study", f"{s}_knee_study")] for s in ("r", "L")},
    **{f"tibia_{_SIDE[s]}": [(f"{s}_knee_study", f"{s}_ankle_study"), (f"{s}_mknee_study", f"{s}_mankle_study")]
       for s in ("r", "L")},
    **{f"{body}_{_SIDE[s]}": _FOOT[s] for s in ("r", "L") for body in ("talus", "calcn", "toes")},
    **{f"humerus_{_SIDE[s]}": _ARM[s] for s in ("r", "L")},
    **{f"{body}_{_SIDE[s]}": _FOREARM[s] for s in ("r", "L") for body in ("ulna", "radius", "hand")},
}


@dataclass(frozen=True)
class ScaleResult:
    model_path: Path  # the scaled .osim (markers moved onto the static pose)
    model: OsimModel  # that file, loaded
    scale_factors: dict[str, float]  # OpenSim body -> uniform scale factor
    static_rms_m: float  # RMS marker error of the static pose on the scaled model, metres


# The static pose of a body model at rest is the OpenSim model's zero pose for the pelvis, trunk and
# legs: the marker placer is held to it (otherwise it may explain the markers with, e.g., the pelvis
# tilted 40 degrees and the hips extended as much, and every later angle would carry that offset).
NEUTRAL = ("pelvis_tilt", "pelvis_list", "pelvis_rotation", "hip_flexion_r", "hip_adduction_r", "hip_rotation_r",
           "knee_angle_r", "ankle_angle_r", "subtalar_angle_r", "hip_flexion_l", "hip_adduction_l",
           "hip_rotation_l", "knee_angle_l", "ankle_angle_l", "subtalar_angle_l", "L5_S1_Flex_Ext",
           "L5_S1_Lat_Bending", "L5_S1_axial_rotation")


def scale_model(model: OsimModel, static: np.ndarray, names: list[str], out_path: Path | str,
                mass_kg: float = 70.0, neutral: tuple[str, ...] = NEUTRAL) -> ScaleResult:
    """Scale `model` to the subject whose markers (M, 3) or (T, M, 3) metres, named `names`, stand
    in a static pose; write the scaled model to `out_path`. The coordinates in `neutral` are held
    at zero in the static pose while the markers are placed."""
    osim = _opensim()
    static = np.asarray(static, dtype=np.float64)
    frames = static[None] if static.ndim == 2 else static
    index = {n: i for i, n in enumerate(names)}
    measured = {body: [p for p in pairs if p[0] in index and p[1] in index] for body, pairs in MEASUREMENTS.items()}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kinemesh-scale-") as tmp:
        trc = Path(tmp) / "static.trc"
        write_trc(trc, np.repeat(frames, 2, axis=0) if len(frames) == 1 else frames, names, 30.0)
        span = osim.ArrayDouble()
        span.append(0.0)
        span.append((max(len(frames), 2) - 1) / 30.0)
        tool = osim.ScaleTool()
        tool.setSubjectMass(mass_kg)
        maker = tool.getGenericModelMaker()
        maker.setModelFileName(str(model.model_path.resolve()))
        markers_file = Path(tmp) / "markers.xml"
        marker_set = model.marker_set().clone()
        for i in range(marker_set.getSize()):  # every virtual marker is placed on the subject (the generic
            marker_set.get(i).set_fixed(False)  # set fixes the arms', which then pull the trunk off neutral)
        marker_set.printToXML(str(markers_file))
        maker.setMarkerSetFileName(str(markers_file))
        scaler = tool.getModelScaler()
        scaler.setApply(True)
        order = osim.ArrayStr()
        order.append("measurements")
        scaler.setScalingOrder(order)
        for body, pairs in measured.items():
            if not pairs:
                continue
            m = osim.Measurement()
            m.setName(body)
            m.setApply(True)
            for a, b in pairs:
                m.getMarkerPairSet().cloneAndAppend(osim.MarkerPair(a, b))
            scale = osim.BodyScale()
            scale.setName(body)
            axes = osim.ArrayStr()
            for axis in ("X", "Y", "Z"):
                axes.append(axis)
            scale.setAxisNames(axes)
            m.getBodyScaleSet().cloneAndAppend(scale)
            scaler.addMeasurement(m)
        scaler.setMarkerFileName(str(trc))
        scaler.setTimeRange(span)
        scaler.setPreserveMassDist(True)
        scaled_no_markers = Path(tmp) / "scaled.osim"
        scaler.setOutputModelFileName(str(scaled_no_markers))
        placer = tool.getMarkerPlacer()
        placer.setApply(True)
        placer.setStaticPoseFileName(str(trc))
        placer.setTimeRange(span)
        placer.setOutputModelFileName(str(out_path.resolve()))
        tasks = placer.getIKTaskSet()
        for name in names:
            task = osim.IKMarkerTask()
            task.setName(name)
            task.setWeight(1.0)
            task.setApply(True)
            tasks.cloneAndAppend(task)
        for coord in (c for c in neutral if c in model.coordinate_names):
            task = osim.IKCoordinateTask()
            task.setName(coord)
            task.setValueType(osim.IKCoordinateTask.ManualValue)
            task.setValue(0.0)
            task.setWeight(1000.0)
            task.setApply(True)
            tasks.cloneAndAppend(task)
        if not tool.run():
            raise RuntimeError("OpenSim scaling failed")
        # the factors, as the ratios of the measured distances on the scaled and the generic model
        # (markers scale with their bodies before the marker placer moves them)
        generic = _pair_lengths(model, measured)
        scaled = _pair_lengths(OsimModel(scaled_no_markers), measured)
        factors = {body: float(np.mean(scaled[body] / generic[body])) for body in generic}
    subject = OsimModel(out_path)
    ik = subject.inverse_kinematics(frames, names, fps=30.0)
    return ScaleResult(out_path, subject, factors, float(np.sqrt(np.mean(ik.marker_rms_m**2))))


def _pair_lengths(model: OsimModel, measured: dict[str, list[tuple[str, str]]]) -> dict[str, np.ndarray]:
    """Body -> distances (P,) of its measured marker pairs on `model` in its default pose."""
    pos = dict(zip(model.marker_names, model.marker_positions(model.default_values()[None])[0], strict=True))
    return {body: np.array([np.linalg.norm(pos[a] - pos[b]) for a, b in pairs])
            for body, pairs in measured.items() if pairs}
