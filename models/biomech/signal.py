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
