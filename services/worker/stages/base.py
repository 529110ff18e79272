"""Typed values passed between pipeline stages, and the stage protocol.

Shape legend: T frames in a clip, B frames in a batch, H/W image height/width in pixels,
L = 33 BlazePose landmarks, P people in one frame.

Stages stream: decode yields frame batches, the keypoint stage consumes them one batch at
a time, so a clip is never held in memory whole and cancellation is checked per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

NUM_LANDMARKS = 33


@dataclass(frozen=True)
class ClipMeta:
    """What the container says about a clip, after rotation is applied."""

    width: int  # upright width in pixels (after rotation metadata)
    height: int  # upright height in pixels
    rotation_deg: int  # clockwise rotation applied to the stored frames: 0, 90, 180, 270
    source_fps: float  # average frame rate of the stored stream
    target_fps: float  # frame rate the pipeline samples at (<= source_fps)
    duration_s: float
    source_frames: int  # frame count the container reports, or an estimate
    codec: str
    container: str


@dataclass(frozen=True)
class FrameBatch:
    """A run of consecutive sampled frames."""

    indices: np.ndarray  # (B,) int64, index on the sampled timeline (0, 1, 2, ...)
    timestamps_s: np.ndarray  # (B,) float64, presentation time of each frame
    images: np.ndarray  # (B, H, W, 3) uint8 RGB, upright


@dataclass
class DecodedVideo:
    """A clip opened for decoding; `batches()` decodes lazily."""

    meta: ClipMeta
    batches: Callable[[], Iterator[FrameBatch]]


@dataclass(frozen=True)
class PoseObservation:
    """One person's landmarks in one frame, in the upright image."""

    landmarks_2d: np.ndarray  # (L, 2) float32, pixels (x right, y down)
    visibility: np.ndarray  # (L,) float32 in [0, 1]
    presence: np.ndarray  # (L,) float32 in [0, 1]
    world: np.ndarray  # (L, 3) float32, metres, origin at the hip centre (MediaPipe world)
    bbox: np.ndarray  # (4,) float32, x0 y0 x1 y1 pixels, around the visible landmarks
    score: float  # mean visibility; a detection quality in [0, 1]


@dataclass
class TrackedFrame:
    """Everything the keypoint stage found in one sampled frame."""

    index: int
    timestamp_s: float
    people: list[tuple[int, PoseObservation]] = field(default_factory=list)  # (track id, obs)


@dataclass
class KeypointTracks:
    """Output of the keypoint stage for a whole clip."""

    meta: ClipMeta
    frames: list[TrackedFrame]  # one per sampled frame, including frames with nobody


class StageContext(Protocol):
    """What a stage may ask of whoever runs it (Celery task or the CLI)."""

    def progress(self, stage: str, fraction: float) -> None:
        """Report progress of `stage` in [0, 1]; cheap, may be rate-limited."""

    def check_cancelled(self) -> None:
        """Raise JobCancelled if the job was cancelled; called between frame batches."""


class NullContext:
    """A context that reports nowhere and never cancels (tests, benchmarks)."""

    def progress(self, stage: str, fraction: float) -> None:  # noqa: D102
        return None

    def check_cancelled(self) -> None:  # noqa: D102
        return None
