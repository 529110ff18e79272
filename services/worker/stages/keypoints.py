"""Keypoint stage: MediaPipe BlazePose landmarks for up to `max_people` people per frame,
with persistent person tracks.

The Tasks API PoseLandmarker runs in VIDEO mode (it tracks each pose's region of interest
from frame to frame, so the detector runs only when a pose is lost), created once per stage
object and reused across clips. VIDEO mode needs strictly increasing timestamps for the life
of the landmarker, so each clip is placed on a running millisecond clock after the previous
one, and a blank frame in between drops regions still tracked from the previous clip.

Shape legend: L = 33 landmarks, B frames in a batch, H/W upright image size.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from kinemesh.models.assets.mediapipe_pose import build_command, task_path
from kinemesh.services.common.errors import ModelUnavailable
from kinemesh.services.worker.stages.base import (
    NUM_LANDMARKS,
    DecodedVideo,
    KeypointTracks,
    PoseObservation,
    StageContext,
    TrackedFrame,
)
from kinemesh.services.worker.tracking import Tracker

STAGE = "keypoints"
# TFLite logs this once per sparse tensor (~40 lines) on every landmarker load; it is harmless.
_KNOWN_NOISE = b"Sparsity tensors may not yet be fully supported"
_CLIP_GAP_MS = 10_000  # clock gap between clips: no temporal filter carries across it


class KeypointStage:
    """Per-frame 2D/3D BlazePose landmarks and track ids for a decoded clip."""

    name = STAGE

    def __init__(
        self,
        model_path: Path | str,
        max_people: int = 2,
        *,
        min_detection_confidence: float = 0.5,
        min_presence_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
        visibility_threshold: float = 0.5,
        bbox_padding: float = 0.1,
        max_gap_s: float = 0.5,
        tracker_options: dict | None = None,
    ) -> None:
        """
        model_path: the .task file, its folder, or the settings' model_dir (which holds
            `mediapipe/pose_landmarker_full.task`).
        max_people: most people reported per frame (the landmarker's num_poses).
        min_*_confidence: the landmarker's detection, pose-presence and tracking thresholds.
        visibility_threshold: landmarks above it span the person's bounding box.
        bbox_padding: the box grows by this fraction of its size on each side.
        max_gap_s: a person unseen for longer gets a new track id.
        tracker_options: extra `Tracker` arguments.
        """
        if max_people < 1:
            raise ValueError("max_people must be >= 1")
        self.model_path = task_path(model_path)
        self.max_people = int(max_people)
        self.min_detection_confidence = float(min_detection_confidence)
        self.min_presence_confidence = float(min_presence_confidence)
        self.min_tracking_confidence = float(min_tracking_confidence)
        self.visibility_threshold = float(visibility_threshold)
        self.bbox_padding = float(bbox_padding)
        self.max_gap_s = float(max_gap_s)
        self.tracker_options = dict(tracker_options or {})
        self._lock = threading.Lock()
        self._clock_ms = 0  # last timestamp given to the landmarker
        self._dirty = False  # a previous clip may have left tracked regions behind
        self._landmarker = self._create_landmarker()

    # --- landmarker life cycle --------------------------------------------------------------

    def _create_landmarker(self):
        if not self.model_path.is_file():
            raise ModelUnavailable(
                f"MediaPipe pose model not found at {self.model_path}. "
                f"Build it with `{build_command(self.model_path.parent)}`.",
                model=str(self.model_path),
            )
        try:
            from mediapipe.tasks.python import BaseOptions
            from mediapipe.tasks.python.vision import PoseLandmarker, PoseLandmarkerOptions, RunningMode
        except ImportError as exc:  # the runtime is a declared dependency; say so if missing
            raise ModelUnavailable(f"mediapipe is not importable: {exc}") from exc
        options = PoseLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(self.model_path)),
            running_mode=RunningMode.VIDEO,
            num_poses=self.max_people,
            min_pose_detection_confidence=self.min_detection_confidence,
            min_pose_presence_confidence=self.min_presence_confidence,
            min_tracking_confidence=self.min_tracking_confidence,
            output_segmentation_masks=False,
        )
        try:
            with _filtered_native_stderr(_KNOWN_NOISE):
                landmarker = PoseLandmarker.create_from_options(options)
        except Exception as exc:  # the runtime raises RuntimeError/ValueError on bad files
            raise ModelUnavailable(
                f"MediaPipe pose model at {self.model_path} could not be loaded ({exc}). "
                f"Rebuild it with `{build_command(self.model_path.parent)} --force`.",
                model=str(self.model_path),
            ) from exc
        self._clock_ms = 0
        self._dirty = False
        return landmarker

    def reset(self) -> None:
        """Recreate the landmarker: clears all temporal state (after an error, say)."""
        with self._lock:
            self._close()
            self._landmarker = self._create_landmarker()

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def __enter__(self) -> KeypointStage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- running ----------------------------------------------------------------------------

    def run(self, video: DecodedVideo, ctx: StageContext) -> KeypointTracks:
        """Landmarks and track ids for every sampled frame of `video`."""
        with self._lock:
            if self._landmarker is None:
                self._landmarker = self._create_landmarker()
            try:
                return self._run(video, ctx)
            except BaseException:
                self._dirty = True  # the next clip starts from a flushed state
                raise

    def _run(self, video: DecodedVideo, ctx: StageContext) -> KeypointTracks:
        import mediapipe as mp

        meta = video.meta
        expected = max(meta.source_frames * meta.target_fps / max(meta.source_fps, 1e-9), 1.0)
        tracker = Tracker(
            max_gap_frames=max(1, round(self.max_gap_s * meta.target_fps)), **self.tracker_options
        )
        if self._dirty:
            self._flush(mp, self._clock_ms + _CLIP_GAP_MS, meta.width, meta.height)
        base_ms = self._clock_ms + _CLIP_GAP_MS if self._clock_ms else 0
        first_ts: float | None = None
        frames: list[TrackedFrame] = []
        for batch in video.batches():
            ctx.check_cancelled()
            for index, ts_s, image in zip(batch.indices, batch.timestamps_s, batch.images, strict=True):
                if first_ts is None:
                    first_ts = float(ts_s)
                ts_ms = max(base_ms + round((float(ts_s) - first_ts) * 1000.0), self._clock_ms + 1)
                self._clock_ms = ts_ms
                height, width = image.shape[:2]
                mp_image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))
                result = self._landmarker.detect_for_video(mp_image, ts_ms)
                people = [
                    self._observation(lms, world, width, height)
                    for lms, world in zip(result.pose_landmarks, result.pose_world_landmarks, strict=True)
                ]
                ids = tracker.update(people)
                frames.append(TrackedFrame(
                    index=int(index), timestamp_s=float(ts_s), people=list(zip(ids, people, strict=True))
                ))
            ctx.progress(STAGE, min(max(len(frames) / expected, 0.0), 1.0))
        ctx.progress(STAGE, 1.0)
        self._dirty = True
        return KeypointTracks(meta=meta, frames=frames)

    def _flush(self, mp, ts_ms: int, width: int, height: int) -> None:
        """Run one blank frame so no pose region tracked in the last clip survives."""
        ts_ms = max(ts_ms, self._clock_ms + 1)
        blank = np.zeros((max(height, 1), max(width, 1), 3), np.uint8)
        self._landmarker.detect_for_video(mp.Image(image_format=mp.ImageFormat.SRGB, data=blank), ts_ms)
        self._clock_ms = ts_ms
        self._dirty = False

    def _observation(self, landmarks, world_landmarks, width: int, height: int) -> PoseObservation:
        """One person's Tasks API landmarks -> PoseObservation in upright-image pixels."""
        arr = np.array(
            [(lm.x, lm.y, _or0(lm.visibility), _or0(lm.presence)) for lm in landmarks], dtype=np.float32
        )  # (L, 4) normalised x, y, visibility, presence
        world = np.array([(lm.x, lm.y, lm.z) for lm in world_landmarks], dtype=np.float32)  # (L, 3)
        if arr.shape[0] != NUM_LANDMARKS or world.shape[0] != NUM_LANDMARKS:
            raise ModelUnavailable(
                f"pose model returned {arr.shape[0]} landmarks, expected {NUM_LANDMARKS}",
                model=str(self.model_path),
            )
        xy = arr[:, :2] * np.array([width, height], dtype=np.float32)  # (L, 2) pixels
        visibility = np.clip(arr[:, 2], 0.0, 1.0)
        presence = np.clip(arr[:, 3], 0.0, 1.0)
        return PoseObservation(
            landmarks_2d=xy,
            visibility=visibility,
            presence=presence,
            world=world,
            bbox=self._bbox(xy, visibility, width, height),
            score=float(visibility.mean()),
        )

    def _bbox(self, xy: np.ndarray, visibility: np.ndarray, width: int, height: int) -> np.ndarray:
        """(4,) x0 y0 x1 y1 around the visible landmarks, padded, clipped to the image."""
        pts = xy[visibility > self.visibility_threshold]
        if len(pts) < 2:  # nothing confidently visible: use every landmark
            pts = xy
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        pad = (hi - lo) * self.bbox_padding
        lo = np.clip(lo - pad, 0.0, [width, height])
        hi = np.clip(hi + pad, 0.0, [width, height])
        return np.array([lo[0], lo[1], hi[0], hi[1]], dtype=np.float32)


def _or0(value: float | None) -> float:
    return 0.0 if value is None else float(value)


@contextmanager
def _filtered_native_stderr(noise: bytes) -> Iterator[None]:
    """Capture what native code writes to fd 2 meanwhile; pass on every line but `noise`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().splitlines(keepends=True) if noise not in line]
            if kept:
                os.write(2, b"".join(kept))
