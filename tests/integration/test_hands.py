"""Hand keypoints: MediaPipe's hand landmarker (built from the PyPI wheel) on crops around each tracked
person's wrists, on a real clip; and the crop geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kinemesh.models.assets.mediapipe_hands import HAND_LANDMARKS, is_built
from kinemesh.services.common.settings import Settings
from kinemesh.services.worker.stages.base import NullContext
from kinemesh.services.worker.stages.decode import DecodeStage
from kinemesh.services.worker.stages.hands import CROP_SCALE, MIN_HALF_PX, POSE_HAND, HandStage, hand_box
from kinemesh.services.worker.stages.keypoints import KeypointStage


def test_hand_box_is_centred_on_the_hand_landmarks_and_scales_with_the_hand() -> None:
    lm = np.zeros((33, 2), np.float32)
    lm[[15, 17, 19, 21]] = [[100, 200], [110, 230], [100, 232], [90, 220]]  # left wrist, pinky, index, thumb
    center, half = hand_box(lm, "left")
    assert np.allclose(center, [100, 220.5])
    assert half == pytest.approx(CROP_SCALE * 32)  # the farthest: the index, 32 px from the wrist
    lm[[16, 18, 20, 22]] = [[50, 50], [51, 51], [50, 52], [49, 51]]  # a hand a few pixels wide
    assert hand_box(lm, "right")[1] == MIN_HALF_PX


@pytest.fixture(scope="module")
def found(model_dir: Path, clips: dict[str, Path]):
    assert is_built(model_dir / "mediapipe")
    video = DecodeStage().open(clips["single_cam01"], 30.0, limits=Settings())
    with KeypointStage(model_dir, max_people=1) as kps:
        tracks = kps.run(video, NullContext())
    stage = HandStage(model_dir)
    try:
        return tracks, stage.run(video, tracks, NullContext())
    finally:
        stage.close()


def test_hands_are_found_on_a_real_clip_and_sit_at_the_persons_wrists(found) -> None:
    tracks, hands = found
    frames = [f for f in tracks.frames if f.people]
    with_hands = {index for (_, index) in hands.hands}
    assert len(with_hands) >= 0.5 * len(frames), (len(with_hands), len(frames))  # 38 of 50 when written
    obs = {(tid, f.index): o for f in frames for tid, o in f.people}
    distances, palms = [], []
    for key, sides in hands.hands.items():
        for side, hand in sides.items():
            assert hand.keypoints_2d.shape == (len(HAND_LANDMARKS), 2) and hand.keypoints_3d.shape == (21, 3)
            assert 0 <= hand.score <= 1
            wrist = obs[key].landmarks_2d[POSE_HAND[side][0]]
            distances.append(np.linalg.norm(hand.keypoints_2d[0] - wrist))
            palms.append(np.linalg.norm(hand.keypoints_3d[9] - hand.keypoints_3d[0]))  # wrist to middle knuckle
    # the hand's wrist lands on the body's wrist (the person is ~900 px tall), and the palm is a palm
    assert np.median(distances) < 20 and np.max(distances) < 80, np.round(distances, 1)
    assert 0.05 < np.median(palms) < 0.13, np.median(palms)
    assert hands.searched >= len(hands.hands)
