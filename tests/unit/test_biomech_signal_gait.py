"""Coordinate filtering and limit flags; gait events and spatiotemporal parameters on a synthetic
walk whose contacts are known."""

from __future__ import annotations

import numpy as np
import pytest

from kinemesh.models.biomech.gait import gait_events
from kinemesh.models.biomech.opensim_model import Coordinate
from kinemesh.models.biomech.signal import LowPass, alternate_euler, continuous_angles, limit_violations

FPS = 30.0


def test_lowpass_keeps_slow_motion_and_removes_fast_noise() -> None:
    t = np.arange(300) / FPS
    slow = np.sin(2 * np.pi * 1.0 * t)  # 1 Hz: movement
    fast = 0.2 * np.sin(2 * np.pi * 12.0 * t)  # 12 Hz: jitter
    out = LowPass(6.0)(np.stack([slow + fast, slow], 1), FPS)
    inner = slice(30, -30)
    assert np.abs(out[inner, 0] - slow[inner]).max() < 0.02  # jitter gone, no phase lag
    assert np.abs(out[inner, 1] - slow[inner]).max() < 0.005
    assert "6 Hz" in LowPass(6.0).describe(FPS) and LowPass(20.0).describe(FPS) == "none"  # above Nyquist
    short = np.random.default_rng(0).normal(size=(8, 2))
    assert np.array_equal(LowPass(6.0)(short, FPS), short)  # too short to filter: unchanged


def _same_angles(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.allclose(np.mod(a - b + np.pi, 2 * np.pi) - np.pi, 0.0, atol=1e-9))


def test_continuous_angles_writes_each_pose_one_way_through_time() -> None:
    """A shoulder-like triple that a solver wrote on the other Euler branch for a stretch and past
    +-180 degrees elsewhere, a free angle that wraps, a bounded angle: the output runs on smoothly,
    every frame is the same orientation as its input, and the bounded angle is left alone."""
    t = np.linspace(0.0, 1.0, 60)
    truth = np.stack([0.3 + 0.5 * t, -1.2 + 0.2 * t, 0.4 * np.sin(6 * t), 3.0 + 0.5 * t, 0.5 * t], 1)  # (T, 5)
    given = truth.copy()
    given[20:35, :3] = alternate_euler(truth[20:35, :3])  # the other branch for 15 frames
    given[40:, :3] -= 2 * np.pi  # and whole turns later on
    given[:, 3] = np.mod(given[:, 3] + np.pi, 2 * np.pi) - np.pi  # the free angle wraps at +-180
    free = np.array([True, True, True, True, False])
    lower, upper = np.full(5, -2.0), np.full(5, 2.0)
    out = continuous_angles(given, free, [(0, 1, 2)], lower, upper)
    assert np.abs(np.diff(out, axis=0)).max() < 0.1  # no jump left
    assert _same_angles(out[:, :3], truth[:, :3]) and _same_angles(out[:, 3], truth[:, 3])
    assert np.array_equal(out[:, 4], given[:, 4])
    # the first frame takes the branch inside the ranges: started on the other one, it comes back
    flipped = given.copy()
    flipped[:, :3] = alternate_euler(given[:, :3])
    assert _same_angles(continuous_angles(flipped, free, [(0, 1, 2)], lower, upper)[:, :3], truth[:, :3])


def test_limit_violations_flag_only_values_outside_the_range() -> None:
    coords = [Coordinate("knee_angle_r", True, 0.0, 2.0, 0.0), Coordinate("pelvis_tx", False, -1.0, 1.0, 0.0)]
    values = np.array([[0.5, 0.0], [-0.1, 0.0], [2.0, 1.5]])
    assert limit_violations(values, coords).tolist() == [[False, False], [True, False], [False, True]]


def _walk(frames: int, hs_left: list[int], hs_right: list[int], period: int, stance: float, speed: float):
    """Heel, toe and pelvis positions (T, 3) of a walk along +x at `speed`: each foot lands at its heel
    strikes, stays put for `stance` of the cycle, then swings one stride forward (cosine profile)."""
    t = np.arange(frames) / FPS
    pelvis = np.stack([speed * t, np.full(frames, 0.9), np.zeros(frames)], 1)
    stride = speed * period / FPS
    swing = int(round((1 - stance) * period))

    def foot(strikes: list[int], z: float) -> tuple[np.ndarray, np.ndarray]:
        heel = np.zeros((frames, 3))
        first = strikes[0]
        for f in range(frames):
            k = (f - first) // period  # cycles since the first strike
            into = (f - first) % period
            land_x = speed * (first + k * period) / FPS  # the heel lands under the pelvis
            if into < period - swing:  # stance: on the ground
                heel[f] = (land_x, 0.0, z)
            else:  # swing: one stride forward, lifted
                tau = (into - (period - swing)) / swing
                heel[f] = (land_x + stride * (1 - np.cos(np.pi * tau)) / 2, 0.1 * np.sin(np.pi * tau), z)
        return heel, heel + np.array([0.25, 0.0, 0.0])

    (hl, tl), (hr, tr) = foot(hs_left, -0.1), foot(hs_right, 0.1)
    return hl, tl, hr, tr, pelvis


def test_gait_events_within_two_frames_and_spatiotemporal_parameters() -> None:
    period, stance, speed = 30, 0.6, 1.2  # 1 s strides (120 steps/min), 60 % stance
    every = lambda first, frames=150: [first + k * period for k in range(-2, 6) if 0 <= first + k * period < frames]  # noqa: E731
    hs_left, hs_right = every(10), every(25)  # the walk is periodic: it has events before the first listed
    hl, tl, hr, tr, pelvis = _walk(150, hs_left, hs_right, period, stance, speed)
    res = gait_events(hl, tl, hr, tr, pelvis, FPS)
    to_left = every(10 + int(stance * period) - period)  # toe off ends each stance
    to_right = every(25 + int(stance * period) - period)

    def matched(found: np.ndarray, truth: list[int]) -> None:
        truth = [f for f in truth if 3 <= f < 147]  # events at the very ends cannot be peaks
        assert len(found) >= len(truth) - 1
        for f in found:
            assert min(abs(int(f) - g) for g in truth) <= 2, (found, truth)

    matched(res.left.heel_strikes, hs_left)
    matched(res.right.heel_strikes, hs_right)
    matched(res.left.toe_offs, to_left)
    matched(res.right.toe_offs, to_right)
    assert res.cadence_steps_per_min == pytest.approx(120, rel=0.05)
    assert res.step_time_s == pytest.approx(0.5, abs=0.04)
    assert res.step_length_m == pytest.approx(speed * 0.5, rel=0.1)
    assert res.walking_speed_m_s == pytest.approx(speed, rel=0.05)
    assert np.allclose(res.direction, [1, 0, 0], atol=1e-6)


def test_standing_still_is_not_a_walk() -> None:
    still = np.zeros((60, 3))
    res = gait_events(still, still, still, still, still + [0, 0.9, 0], FPS)
    assert res.cadence_steps_per_min is None and "no walk" in res.notes[0]
