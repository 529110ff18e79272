"""Hand stage: 21 hand keypoints per tracked person and side, from MediaPipe's hand landmarker run on
a crop around each of the person's hands.

A person a few metres from the camera has hands of a few tens of pixels, too small for the palm
detector on the whole frame (on a Pose2Sim demo view it found a hand in 1 of 10 frames). So, as
MMHMR crops hands from the body's keypoints, each tracked person's BlazePose wrist, pinky, index and
thumb landmarks place a square crop (half-side `CROP_SCALE` times the largest wrist-to-finger
distance, at least `MIN_HALF_PX`), upsampled to 256 x 256 (`camera.person_crops`), and the landmarker
runs on it in IMAGE mode; its landmarks map back to frame pixels. The side is the one whose wrist
placed the crop (MediaPipe's handedness label assumes a mirrored selfie image and is not used); a
side whose wrist is not visible (BlazePose visibility < 0.5) is not searched.

Output per track: for every frame where a hand was found, per side: 21 landmarks in pixels (MediaPipe
order, `mediapipe_hands.HAND_LANDMARKS`), 21 world landmarks in metres about the hand's centre, and
the landmarker's score. The clip is decoded once more (the keypoint stage streams its frames).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kinemesh.models.assets.mediapipe_hands import task_path
from kinemesh.models.camera import person_crops
from kinemesh.services.common.errors import ModelUnavailable
from kinemesh.services.worker.stages.base import DecodedVideo, KeypointTracks, StageContext

STAGE = "hands"
CROP_PX = 256  # side of the square crop the landmarker sees
CROP_SCALE = 3.5  # crop half-side over the largest wrist-to-finger landmark distance
MIN_HALF_PX = 32.0
MIN_WRIST_VISIBILITY = 0.5
# BlazePose landmark ids per side: wrist, pinky, index, thumb
POSE_HAND = {"left": (15, 17, 19, 21), "right": (16, 18, 20, 22)}


@dataclass
class HandObservation:
    keypoints_2d: np.ndarray  # (21, 2) float32, pixels of the upright frame
    keypoints_3d: np.ndarray  # (21, 3) float32, metres, MediaPipe hand world frame (about the hand's centre)
    score: float  # the landmarker's confidence in the hand (its handedness classifier's score)


@dataclass
class HandsResult:
    # (track id, frame index) -> {"left" | "right": HandObservation}
    hands: dict[tuple[int, int], dict[str, HandObservation]] = field(default_factory=dict)
    searched: int = 0  # (person, frame, side) crops the landmarker looked at

    @property
    def found(self) -> int:
        return sum(len(v) for v in self.hands.values())


def hand_box(landmarks_2d: np.ndarray, side: str) -> tuple[np.ndarray, float]:
    """Crop centre (2,) and half-side (pixels) for one side's hand from a person's 33 BlazePose
    landmarks (33, 2): centred on the wrist, pinky, index and thumb landmarks."""
    points = landmarks_2d[list(POSE_HAND[side])]  # (4, 2)
    reach = float(np.linalg.norm(points[1:] - points[0], axis=1).max())
    return points.mean(0), max(CROP_SCALE * reach, MIN_HALF_PX)


class HandStage:
    """Loads MediaPipe's hand landmarker once; `run` finds the tracked people's hands in a clip."""

    name = STAGE

    def __init__(self, model_dir: Path | str, min_detection_confidence: float = 0.3) -> None:
        path = task_path(model_dir)
        if not path.is_file():
            raise ModelUnavailable(f"MediaPipe hand model not found at {path}. Build it with "
                                   f"`python -m kinemesh.models.assets.mediapipe_hands --out {path.parent}`.",
                                   model=str(path))
        from mediapipe.tasks.python import BaseOptions
        from mediapipe.tasks.python.vision import HandLandmarker, HandLandmarkerOptions, RunningMode

        options = HandLandmarkerOptions(base_options=BaseOptions(model_asset_path=str(path)),
                                        running_mode=RunningMode.IMAGE, num_hands=1,
                                        min_hand_detection_confidence=min_detection_confidence)
        try:
            self._landmarker = HandLandmarker.create_from_options(options)
        except Exception as exc:
            raise ModelUnavailable(f"MediaPipe hand model at {path} could not be loaded ({exc})",
                                   model=str(path)) from exc
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._landmarker is not None:
                self._landmarker.close()
                self._landmarker = None

    def run(self, video: DecodedVideo, tracks: KeypointTracks, ctx: StageContext) -> HandsResult:
        import mediapipe as mp

        wanted = {f.index: f.people for f in tracks.frames if f.people}
        total = max(len(wanted), 1)
        out = HandsResult()
        done = 0
        with self._lock:
            for batch in video.batches():
                ctx.check_cancelled()
                for j, index in enumerate(batch.indices):
                    people = wanted.get(int(index))
                    if not people:
                        continue
                    done += 1
                    for tid, obs in people:
                        for side, ids in POSE_HAND.items():
                            if obs.visibility[ids[0]] < MIN_WRIST_VISIBILITY:
                                continue
                            out.searched += 1
                            center, half = hand_box(obs.landmarks_2d, side)
                            crop = person_crops(torch.from_numpy(batch.images[j])[None],
                                                torch.tensor(center[None], dtype=torch.float32),
                                                torch.tensor([half], dtype=torch.float32), (CROP_PX, CROP_PX))
                            image = (crop[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                            res = self._landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB,
                                                                   data=np.ascontiguousarray(image)))
                            if not res.hand_landmarks:
                                continue
                            uv = np.array([(p.x, p.y) for p in res.hand_landmarks[0]], np.float32)  # (21, 2) in [0, 1]
                            xy = center[None] + half * (2 * uv - 1)  # crop coordinates back to frame pixels
                            world = np.array([(p.x, p.y, p.z) for p in res.hand_world_landmarks[0]], np.float32)
                            score = float(res.handedness[0][0].score) if res.handedness else 1.0
                            out.hands.setdefault((tid, int(index)), {})[side] = HandObservation(
                                xy.astype(np.float32), world, score)
                    ctx.progress(STAGE, done / total)
        return out
