"""The biomechanical model through OpenSim (the `opensim` 4.6 wheel on PyPI): its coordinates with
their OpenSim names, units and ranges; forward kinematics of its markers; OpenSim's own inverse
kinematics (InverseKinematicsTool) on marker trajectories; and the .trc / .mot files OpenSim reads.

Shape legend: T frames, C coordinates (the model's order), M markers.

Units. Inside this module and in `values` arrays coordinates are SI, as OpenSim holds them:
radians for rotational coordinates, metres for translational ones. The .mot files are written in
degrees (`inDegrees=yes`), as OpenSim's tools write them. Marker positions are metres in the
model's ground frame (OpenSim's: Y up).

OpenSim objects are not thread-safe and hold one system state: one `OsimModel` per thread.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_ROTATIONAL = 1  # OpenSim Coordinate::MotionType: Rotational = 1, Translational = 2, Coupled = 3


def _opensim():
    import opensim  # imported late: a 70 MB extension that only kinematics needs

    opensim.Logger.setLevelString("error")
    opensim.Logger.removeFileSink()  # OpenSim otherwise appends to ./opensim.log wherever the worker runs
    return opensim


@dataclass(frozen=True)
class Coordinate:
    name: str  # OpenSim name, e.g. "knee_angle_r"
    rotational: bool  # radians (True) or metres (False)
    range_min: float  # SI
    range_max: float  # SI
    default: float  # SI, the model's default value
    clamped: bool = False  # whether the model holds the coordinate inside its range (IK treats it as a bound)


@dataclass(frozen=True)
class IKResult:
    values: np.ndarray  # (T, C) SI coordinates in the model's order
    marker_rms_m: np.ndarray  # (T,) root-mean-square marker error of each frame, metres
    time_s: np.ndarray  # (T,)


class OsimModel:
    """An OpenSim model file with a marker set added to it."""

    def __init__(self, model_path: Path | str, markers_path: Path | str | None = None) -> None:
        osim = _opensim()
        self.model_path = Path(model_path)
        self._model = osim.Model(str(self.model_path))
        if markers_path is not None:
            extra = osim.MarkerSet(str(markers_path))
            for i in range(extra.getSize()):
                self._model.addMarker(extra.get(i).clone())
        self._state = self._model.initSystem()
        cs = self._model.getCoordinateSet()
        self._coords = [cs.get(i) for i in range(cs.getSize())]
        self.coordinates = [
            Coordinate(c.getName(), c.getMotionType() == _ROTATIONAL, c.getRangeMin(), c.getRangeMax(),
                       c.getDefaultValue(), bool(c.getDefaultClamped())) for c in self._coords
        ]
        ms = self._model.getMarkerSet()
        self._markers = [ms.get(i) for i in range(ms.getSize())]
        self.marker_names = [m.getName() for m in self._markers]

    def marker_set(self):
        """The model's OpenSim MarkerSet (to write it out, e.g. for the scale tool)."""
        return self._model.getMarkerSet()

    def marker_locations(self, names: list[str] | tuple[str, ...]) -> np.ndarray:
        """(n, 3) each marker's fixed location in its parent body's frame, metres."""
        ms = self._model.getMarkerSet()
        out = []
        for n in names:
            loc = ms.get(n).get_location()
            out.append((loc.get(0), loc.get(1), loc.get(2)))
        return np.asarray(out)

    @property
    def coordinate_names(self) -> list[str]:
        return [c.name for c in self.coordinates]

    @property
    def rotational(self) -> np.ndarray:
        """(C,) bool: which coordinates are angles."""
        return np.array([c.rotational for c in self.coordinates])

    @property
    def clamped(self) -> np.ndarray:
        """(C,) bool: which coordinates the model holds inside their ranges (IK treats those as bounds)."""
        return np.array([c.clamped for c in self.coordinates])

    @property
    def ranges(self) -> np.ndarray:
        """(C, 2) each coordinate's [min, max] in the model, SI."""
        return np.array([[c.range_min, c.range_max] for c in self.coordinates])

    def default_values(self) -> np.ndarray:
        """(C,) the model's default pose, SI."""
        return np.array([c.default for c in self.coordinates])

    def marker_positions(self, values: np.ndarray) -> np.ndarray:
        """Coordinates (T, C) SI -> marker positions (T, M, 3) in ground, metres."""
        values = np.atleast_2d(np.asarray(values, dtype=np.float64))
        if values.shape[1] != len(self._coords):
            raise ValueError(f"expected {len(self._coords)} coordinates per frame, got {values.shape[1]}")
        out = np.empty((len(values), len(self._markers), 3))
        for t, row in enumerate(values):
            for c, v in zip(self._coords, row, strict=True):
                c.setValue(self._state, float(v), False)  # no constraint projection: this model has none
            self._model.realizePosition(self._state)
            for j, marker in enumerate(self._markers):
                p = marker.getLocationInGround(self._state)
                out[t, j] = (p.get(0), p.get(1), p.get(2))
        return out

    def inverse_kinematics(self, markers: np.ndarray, names: list[str], fps: float,
                           weights: dict[str, float] | None = None, work_dir: Path | str | None = None,
                           mot_path: Path | str | None = None) -> IKResult:
        """OpenSim's InverseKinematicsTool on marker trajectories (T, M, 3) metres named `names`
        (a subset of the model's markers; NaN = not seen in that frame). `weights` per marker
        (default 1). Writes the .trc and the .mot in `work_dir` (a temporary folder when None), the
        .mot also to `mot_path` when given."""
        osim = _opensim()
        markers = np.asarray(markers, dtype=np.float64)
        unknown = set(names) - set(self.marker_names)
        if unknown:
            raise ValueError(f"markers not in the model: {sorted(unknown)}")
        if markers.ndim != 3 or markers.shape[1:] != (len(names), 3):
            raise ValueError(f"markers must be (T, {len(names)}, 3), got {markers.shape}")
        with tempfile.TemporaryDirectory(prefix="kinemesh-ik-") as tmp:
            folder = Path(work_dir) if work_dir is not None else Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            trc = folder / "markers.trc"
            mot = Path(mot_path) if mot_path is not None else folder / "ik.mot"
            time_s = np.arange(len(markers)) / fps
            write_trc(trc, markers, names, fps)
            tool = osim.InverseKinematicsTool()
            tool.setModel(self._model)
            tool.setMarkerDataFileName(str(trc))
            tool.setStartTime(float(time_s[0]))
            tool.setEndTime(float(time_s[-1]))
            tool.setOutputMotionFileName(str(mot))
            tool.setResultsDir(str(folder))
            tool.set_report_errors(True)
            tasks = tool.getIKTaskSet()
            for name in names:
                task = osim.IKMarkerTask()
                task.setName(name)
                task.setWeight(float((weights or {}).get(name, 1.0)))
                task.setApply(True)
                tasks.cloneAndAppend(task)
            if not tool.run():
                raise RuntimeError("OpenSim inverse kinematics failed")
            times, labels, table = read_mot(mot)
            index = {n: i for i, n in enumerate(labels)}
            values = table[:, [index[n] for n in self.coordinate_names]]
            values[:, self.rotational] = np.radians(values[:, self.rotational])
            rms = _marker_rms(folder / "_ik_marker_errors.sto", len(times))
            return IKResult(values, rms, times)


def _marker_rms(path: Path, frames: int) -> np.ndarray:
    """(T,) the RMS marker error OpenSim reports per frame (column marker_error_RMS), metres."""
    if not path.is_file():
        return np.full(frames, np.nan)
    _, labels, table = read_mot(path)
    return table[:, labels.index("marker_error_RMS")]


def write_trc(path: Path | str, markers: np.ndarray, names: list[str], fps: float) -> None:
    """Marker trajectories (T, M, 3) metres -> an OpenSim .trc file (NaN = a gap)."""
    osim = _opensim()
    table = osim.TimeSeriesTableVec3()
    table.setColumnLabels(list(names))
    for t, frame in enumerate(np.asarray(markers, dtype=np.float64)):
        table.appendRow(t / fps, osim.RowVectorVec3([osim.Vec3(*map(float, p)) for p in frame]))
    table.addTableMetaDataString("DataRate", f"{fps:g}")
    table.addTableMetaDataString("CameraRate", f"{fps:g}")
    table.addTableMetaDataString("Units", "m")
    osim.TRCFileAdapter().write(table, str(path))


def write_mot(path: Path | str, values: np.ndarray, names: list[str], rotational: np.ndarray,
              time_s: np.ndarray) -> None:
    """Coordinates (T, C) SI -> an OpenSim motion (.mot) file, angles in degrees."""
    osim = _opensim()
    data = degrees(values, rotational)
    table = osim.TimeSeriesTable()
    table.setColumnLabels(list(names))
    for t, row in zip(time_s, data, strict=True):
        table.appendRow(float(t), osim.RowVector(row.tolist()))
    table.addTableMetaDataString("inDegrees", "yes")
    osim.STOFileAdapter().write(table, str(path))


def read_mot(path: Path | str) -> tuple[np.ndarray, list[str], np.ndarray]:
    """An OpenSim .mot / .sto file -> (time (T,), column labels, values (T, K) as stored)."""
    osim = _opensim()
    table = osim.TimeSeriesTable(str(path))
    labels = list(table.getColumnLabels())
    times = np.array(table.getIndependentColumn())
    values = np.stack([table.getDependentColumn(n).to_numpy() for n in labels], 1) if labels else np.empty((len(times), 0))
    return times, labels, values


def degrees(values: np.ndarray, rotational: np.ndarray) -> np.ndarray:
    """SI coordinates (..., C) -> degrees for angles, metres unchanged."""
    out = np.asarray(values, dtype=np.float64).copy()
    out[..., rotational] = out[..., rotational] * (180.0 / math.pi)
    return out
