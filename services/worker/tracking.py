"""Multi-person tracking by frame-to-frame assignment (pure numpy + scipy).

Each frame's pose observations are matched to live tracks by an optimal assignment
(`scipy.optimize.linear_sum_assignment`) over a cost that mixes bounding-box overlap and
keypoint distance. Keypoint distance is normalised by the box size, so the same threshold
holds for a person near the camera and one far away; it separates people whose boxes overlap
(crossing, one behind the other), where IoU alone cannot. Tracks carry a constant-velocity
prediction so that two people crossing keep their identities.

A track that finds no observation coasts for up to `max_gap_frames` frames (occlusion, a
missed detection) and can be matched again; after that it ends. Ids come from a counter and
are never reused, so an ended track's person who comes back gets a new id.

Shape legend: T live tracks, O observations in the frame, L landmarks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from scipy.optimize import linear_sum_assignment

_FORBIDDEN = 1e6  # cost of a pair that fails the gates; never accepted


class Observation(Protocol):
    """What the tracker reads from a detection (PoseObservation satisfies it)."""

    landmarks_2d: np.ndarray  # (L, 2) pixels
    visibility: np.ndarray  # (L,) in [0, 1]
    bbox: np.ndarray  # (4,) x0 y0 x1 y1 pixels


@dataclass
class TrackState:
    """A live track: the last matched observation and a velocity estimate."""

    track_id: int
    bbox: np.ndarray  # (4,) last matched box
    keypoints: np.ndarray  # (L, 2) last matched landmarks
    visibility: np.ndarray  # (L,)
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))  # (2,) pixels per frame
    last_frame: int = 0  # frame counter value when last matched
    hits: int = 1  # frames matched so far

    def predicted_shift(self, frame: int) -> np.ndarray:
        """(2,) expected displacement since the last match, by constant velocity."""
        return self.velocity * float(frame - self.last_frame)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a (N, 4) and b (M, 4) in x0 y0 x1 y1 -> (N, M)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)  # (N, M)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def box_scale(boxes: np.ndarray) -> np.ndarray:
    """Size of boxes (N, 4) as sqrt(width * height), at least 1 pixel -> (N,)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w = np.clip(boxes[:, 2] - boxes[:, 0], 1.0, None)
    h = np.clip(boxes[:, 3] - boxes[:, 1], 1.0, None)
    return np.sqrt(w * h)


def keypoint_distance(
    kp_a: np.ndarray, vis_a: np.ndarray, kp_b: np.ndarray, vis_b: np.ndarray, scale: np.ndarray
) -> np.ndarray:
    """Visibility-weighted mean landmark distance over `scale` -> (N, M).

    kp_a (N, L, 2), vis_a (N, L), kp_b (M, L, 2), vis_b (M, L), scale (N, M) pixels.
    A landmark counts by the product of its two visibilities (a small floor keeps the mean
    defined when nothing is visible).
    """
    diff = kp_a[:, None, :, :] - kp_b[None, :, :, :]  # (N, M, L, 2)
    dist = np.linalg.norm(diff, axis=-1)  # (N, M, L)
    w = np.clip(vis_a, 0, 1)[:, None, :] * np.clip(vis_b, 0, 1)[None, :, :] + 1e-3  # (N, M, L)
    return (w * dist).sum(-1) / w.sum(-1) / np.maximum(scale, 1e-6)


class Tracker:
    """Assigns persistent track ids to per-frame pose observations.

    Call `update` once per sampled frame, in order, with that frame's observations (possibly
    none); it returns one id per observation, in the same order.
    """

    def __init__(
        self,
        max_gap_frames: int = 10,
        iou_weight: float = 0.5,
        min_iou: float = 0.1,
        max_keypoint_distance: float = 0.5,
        gap_gate_growth: float = 0.25,
        velocity_smoothing: float = 0.5,
        first_id: int = 0,
    ) -> None:
        """
        max_gap_frames: frames a track may go unmatched and still be matched again; a track
            unmatched for more frames ends.
        iou_weight: share of (1 - IoU) in the cost; the rest is the normalised keypoint
            distance (distance / max_keypoint_distance, capped at 1).
        min_iou: a pair passes the overlap gate at or above this IoU.
        max_keypoint_distance: a pair passes the keypoint gate when the mean landmark distance
            is at most this many box sizes (sqrt of box area). A pair must pass one gate.
        gap_gate_growth: the keypoint gate widens by this fraction per unmatched frame, since
            the prediction gets less certain while a track coasts.
        velocity_smoothing: weight of the newest displacement in the velocity estimate.
        first_id: the first id handed out.
        """
        if max_gap_frames < 0:
            raise ValueError("max_gap_frames must be >= 0")
        if not 0.0 <= iou_weight <= 1.0:
            raise ValueError("iou_weight must be in [0, 1]")
        if max_keypoint_distance <= 0:
            raise ValueError("max_keypoint_distance must be > 0")
        self.max_gap_frames = int(max_gap_frames)
        self.iou_weight = float(iou_weight)
        self.min_iou = float(min_iou)
        self.max_keypoint_distance = float(max_keypoint_distance)
        self.gap_gate_growth = float(gap_gate_growth)
        self.velocity_smoothing = float(velocity_smoothing)
        self._next_id = int(first_id)
        self._first_id = int(first_id)
        self._frame = -1
        self._tracks: list[TrackState] = []

    @property
    def tracks(self) -> list[TrackState]:
        """Live tracks (matched within the last max_gap_frames frames)."""
        return list(self._tracks)

    @property
    def frame(self) -> int:
        """Frames seen so far minus one (-1 before the first update)."""
        return self._frame

    def reset(self) -> None:
        """Forget every track and restart ids from `first_id` (a new clip)."""
        self._next_id = self._first_id
        self._frame = -1
        self._tracks = []

    def cost_matrix(self, observations: Sequence[Observation]) -> np.ndarray:
        """(T, O) assignment cost of live tracks against observations at the next frame;
        pairs failing both gates cost `_FORBIDDEN`."""
        frame = self._frame + 1
        n_t, n_o = len(self._tracks), len(observations)
        if n_t == 0 or n_o == 0:
            return np.zeros((n_t, n_o))
        shifts = np.stack([t.predicted_shift(frame) for t in self._tracks])  # (T, 2)
        t_box = np.stack([t.bbox for t in self._tracks]).astype(np.float64) + np.tile(shifts, 2)  # (T, 4)
        t_kp = np.stack([t.keypoints for t in self._tracks]).astype(np.float64) + shifts[:, None, :]
        t_vis = np.stack([t.visibility for t in self._tracks]).astype(np.float64)  # (T, L)
        o_box = np.stack([np.asarray(o.bbox, np.float64) for o in observations])  # (O, 4)
        o_kp = np.stack([np.asarray(o.landmarks_2d, np.float64) for o in observations])  # (O, L, 2)
        o_vis = np.stack([np.asarray(o.visibility, np.float64) for o in observations])  # (O, L)

        iou = box_iou(t_box, o_box)  # (T, O)
        scale = 0.5 * (box_scale(t_box)[:, None] + box_scale(o_box)[None, :])  # (T, O)
        dist = keypoint_distance(t_kp, t_vis, o_kp, o_vis, scale)  # (T, O)
        gaps = np.array([frame - t.last_frame - 1 for t in self._tracks], dtype=np.float64)  # (T,)
        gate = self.max_keypoint_distance * (1.0 + self.gap_gate_growth * gaps)[:, None]  # (T, 1)
        cost = self.iou_weight * (1.0 - iou) + (1.0 - self.iou_weight) * np.minimum(dist / gate, 1.0)
        allowed = (iou >= self.min_iou) | (dist <= gate)
        return np.where(allowed, cost, _FORBIDDEN)

    def update(self, observations: Sequence[Observation]) -> list[int]:
        """Match this frame's observations to tracks; return their ids in input order."""
        cost = self.cost_matrix(observations)
        self._frame += 1
        frame = self._frame
        ids = [-1] * len(observations)
        if cost.size:
            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols, strict=True):
                if cost[r, c] < _FORBIDDEN:
                    self._match(self._tracks[r], observations[c], frame)
                    ids[c] = self._tracks[r].track_id
        for c, obs in enumerate(observations):
            if ids[c] < 0:
                track = TrackState(
                    track_id=self._next_id,
                    bbox=np.asarray(obs.bbox, np.float64).copy(),
                    keypoints=np.asarray(obs.landmarks_2d, np.float64).copy(),
                    visibility=np.asarray(obs.visibility, np.float64).copy(),
                    last_frame=frame,
                )
                self._next_id += 1
                self._tracks.append(track)
                ids[c] = track.track_id
        self._tracks = [t for t in self._tracks if frame - t.last_frame <= self.max_gap_frames]
        return ids

    def _match(self, track: TrackState, obs: Observation, frame: int) -> None:
        new_box = np.asarray(obs.bbox, np.float64)
        new_kp = np.asarray(obs.landmarks_2d, np.float64)  # (L, 2)
        new_vis = np.asarray(obs.visibility, np.float64)  # (L,)
        elapsed = max(frame - track.last_frame, 1)
        # Mean landmark displacement, not the box centre: the box jumps when landmarks at
        # its edge change visibility.
        w = np.clip(new_vis, 0, 1) * np.clip(track.visibility, 0, 1) + 1e-3  # (L,)
        moved = (w[:, None] * (new_kp - track.keypoints)).sum(0) / w.sum() / elapsed  # (2,) px/frame
        a = self.velocity_smoothing if track.hits > 1 else 1.0
        track.velocity = a * moved + (1.0 - a) * track.velocity
        track.bbox = new_box.copy()
        track.keypoints = new_kp.copy()
        track.visibility = new_vis.copy()
        track.last_frame = frame
        track.hits += 1

