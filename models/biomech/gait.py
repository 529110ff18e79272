"""Gait events and spatiotemporal parameters from marker trajectories (the coordinate-based method
of Zeni et al., 2008): along the direction of progression, a heel strike is a maximum of the heel's
position ahead of the pelvis and a toe off a minimum of the toe's position relative to the pelvis.
It needs no force plate and no ground height, so it suits video.

Shape legend: T frames; positions are (T, 3) metres in any frame with the walk on a plane.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.signal import find_peaks

CADENCE_RANGE = (40.0, 200.0)  # steps per minute of walking (and slow running); outside it, no gait is reported


@dataclass(frozen=True)
class FootEvents:
    heel_strikes: np.ndarray  # (H,) frame indices
    toe_offs: np.ndarray  # (K,) frame indices


@dataclass(frozen=True)
class GaitResult:
    left: FootEvents
    right: FootEvents
    direction: np.ndarray  # (3,) unit direction of progression
    cadence_steps_per_min: float | None = None
    step_time_s: float | None = None
    step_length_m: float | None = None
    walking_speed_m_s: float | None = None
    notes: list[str] = field(default_factory=list)


def progression_direction(pelvis: np.ndarray, up: np.ndarray) -> np.ndarray | None:
    """Unit direction (3,) of the pelvis's net travel in the plane normal to `up`, or None when the
    subject travels less than 0.3 m (not a walk)."""
    travel = pelvis[-1] - pelvis[0]
    travel = travel - (travel @ up) * up
    length = float(np.linalg.norm(travel))
    return None if length < 0.3 else travel / length


def _events(signal: np.ndarray, fps: float, maxima: bool) -> np.ndarray:
    # one event per stride at most: strides last ~1 s; 0.5 s apart keeps cadences up to 120 strides/min
    peaks, _ = find_peaks(signal if maxima else -signal, distance=max(1, int(0.5 * fps)),
                          prominence=0.05)
    return peaks


def gait_events(heel_l: np.ndarray, toe_l: np.ndarray, heel_r: np.ndarray, toe_r: np.ndarray,
                pelvis: np.ndarray, fps: float, up: tuple[float, float, float] = (0.0, 1.0, 0.0)) -> GaitResult:
    """Heel strikes and toe offs of both feet, and the spatiotemporal parameters of the walk."""
    up = np.asarray(up, dtype=np.float64) / np.linalg.norm(up)
    pelvis = np.asarray(pelvis, dtype=np.float64)
    direction = progression_direction(pelvis, up)
    empty = FootEvents(np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    if direction is None:
        return GaitResult(empty, empty, np.zeros(3), notes=["no walk: the pelvis travels less than 0.3 m"])
    rel = lambda p: (np.asarray(p) - pelvis) @ direction  # noqa: E731  (T,) ahead of the pelvis
    left = FootEvents(_events(rel(heel_l), fps, True), _events(rel(toe_l), fps, False))
    right = FootEvents(_events(rel(heel_r), fps, True), _events(rel(toe_r), fps, False))
    strikes = sorted([(int(f), "l") for f in left.heel_strikes] + [(int(f), "r") for f in right.heel_strikes])
    steps = [(a, b) for a, b in zip(strikes[:-1], strikes[1:], strict=True) if a[1] != b[1]]  # alternate feet
    if len(steps) < 2:
        return GaitResult(left, right, direction, notes=["fewer than three alternating heel strikes"])
    heel = {"l": np.asarray(heel_l), "r": np.asarray(heel_r)}
    times = np.array([(b[0] - a[0]) / fps for a, b in steps])
    lengths = np.array([abs(float((heel[b[1]][b[0]] - heel[a[1]][a[0]]) @ direction)) for a, b in steps])
    span = (strikes[-1][0] - strikes[0][0]) / fps
    speed = float((pelvis[strikes[-1][0]] - pelvis[strikes[0][0]]) @ direction / span) if span > 0 else None
    cadence = float(60.0 / times.mean())
    if not CADENCE_RANGE[0] <= cadence <= CADENCE_RANGE[1]:
        return GaitResult(left, right, direction, notes=[f"not a walk: {cadence:.0f} steps/min"])
    return GaitResult(left, right, direction, cadence_steps_per_min=cadence,
                      step_time_s=float(times.mean()), step_length_m=float(lengths.mean()), walking_speed_m_s=speed)
