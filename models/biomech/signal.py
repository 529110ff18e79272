"""Filtering and limit checks of coordinate trajectories.

Shape legend: T frames, C coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import butter, sosfiltfilt

from kinemesh.models.biomech.opensim_model import Coordinate


@dataclass(frozen=True)
class LowPass:
    cutoff_hz: float = 6.0  # a common choice for video-based gait kinematics (OpenCap filters at 6 Hz)
    order: int = 4  # Butterworth order of each pass; run forwards and backwards (zero phase)

    def describe(self, fps: float) -> str:
        if not self.applies(fps):
            return "none"
        return f"Butterworth low-pass, order {self.order}, cut-off {self.cutoff_hz:g} Hz, zero phase (forward-backward)"

    def applies(self, fps: float) -> bool:
        return 0 < self.cutoff_hz < fps / 2

    def __call__(self, values: np.ndarray, fps: float) -> np.ndarray:
        """Trajectories (T, C) sampled at fps -> filtered (T, C). Unchanged when the cut-off is at or
        above the Nyquist frequency or the track is too short to pad (fewer than ~3 * order * 2 frames)."""
        values = np.asarray(values, dtype=np.float64)
        if not self.applies(fps):
            return values.copy()
        sos = butter(self.order, self.cutoff_hz, btype="low", fs=fps, output="sos")
        pad = 3 * (2 * len(sos) + 1)  # what sosfiltfilt pads by default
        if values.shape[0] <= pad:
            return values.copy()
        return sosfiltfilt(sos, values, axis=0)


def limit_violations(values: np.ndarray, coordinates: list[Coordinate], tolerance: float = 1e-6) -> np.ndarray:
    """(T, C) bool: where a coordinate (SI) lies outside its model range by more than `tolerance`."""
    values = np.asarray(values)
    lo = np.array([c.range_min for c in coordinates]) - tolerance
    hi = np.array([c.range_max for c in coordinates]) + tolerance
    return (values < lo) | (values > hi)


def _wrap(a: np.ndarray) -> np.ndarray:
    """Angles -> the same angles in (-pi, pi]."""
    return np.pi - np.mod(np.pi - a, 2 * np.pi)


def _nearest(a: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """`a` shifted by whole turns to lie within half a turn of `ref`."""
    return ref + _wrap(a - ref)


def alternate_euler(a: np.ndarray) -> np.ndarray:
    """(..., 3) angles of three successive rotations about distinct orthogonal axes -> the other
    triple that gives the same orientation: (a1 + pi, pi - a2, a3 + pi)."""
    return np.stack([a[..., 0] + np.pi, np.pi - a[..., 1], a[..., 2] + np.pi], -1)


def continuous_angles(values: np.ndarray, free: np.ndarray, triples: list[tuple[int, int, int]],
                      lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """One representation of each pose that runs on smoothly in time, for angles (T, C) radians
    that no bound holds (`free` (C,) bool: the unclamped rotational coordinates): each is moved by
    whole turns to within half a turn of the previous frame, and each of `triples` (the model's
    three-angle joints, `TorchKinematics.euler_triples`) takes, of its two equivalent triples
    (`alternate_euler`), the one nearer the previous frame; in the first frame, the one closer to
    the model's ranges [lower, upper] (C,). The poses are unchanged; a filter run afterwards no
    longer mixes two ways of writing one orientation. Other coordinates are left as they are."""
    out = np.asarray(values, dtype=np.float64).copy()
    if not len(out):
        return out
    joint = [list(t) for t in triples if all(free[list(t)])]
    single = [c for c in np.flatnonzero(free) if not any(c in t for t in joint)]

    def outside(a: np.ndarray, idx: list[int]) -> float:
        return float(np.sum(np.maximum(lower[idx] - a, 0.0) + np.maximum(a - upper[idx], 0.0)))

    for idx in joint:
        a = _wrap(out[0, idx])
        b = _wrap(alternate_euler(a))
        out[0, idx] = b if outside(b, idx) < outside(a, idx) else a
    out[0, single] = _wrap(out[0, single])
    for t in range(1, len(out)):
        prev = out[t - 1]
        for idx in joint:
            a = _nearest(out[t, idx], prev[idx])
            b = _nearest(alternate_euler(out[t, idx]), prev[idx])
            out[t, idx] = b if np.sum((b - prev[idx]) ** 2) < np.sum((a - prev[idx]) ** 2) else a
        out[t, single] = _nearest(out[t, single], prev[single])
    return out
