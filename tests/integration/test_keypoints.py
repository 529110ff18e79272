"""Keypoint stage on real footage: Pose2Sim demo clips through the built BlazePose .task.

Fixtures build the model and extract the clips into caches, so this runs from a clean
checkout (the first run downloads two wheels from PyPI, ~40 MB, unless
$KINEMESH_MEDIAPIPE_WHEEL / $KINEMESH_POSE2SIM_WHEEL name local copies).
Caches: $KINEMESH_MODEL_DIR (else <repo>/var/models) and <repo>/var/cache.

The demo clips are portrait 1080/1088 x 1920 at 60 fps, 100 frames, sampled here at 30 fps.
Demo_SinglePerson: one subject (a bystander stands far back on the left and is not detected).
Demo_MultiPerson: two subjects, a man walking and a woman standing in front; he is missed
for the first few frames (his face is blurred for privacy and the detector keys on faces).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from kinemesh.models.assets import mediapipe_pose
from kinemesh.models.assets.pose2sim_clips import ensure_demo_clips
from kinemesh.services.common.errors import JobCancelled, ModelUnavailable
from kinemesh.services.common.media import MediaLimits
from kinemesh.services.worker.stages.base import NUM_LANDMARKS, DecodedVideo, KeypointTracks
from kinemesh.services.worker.stages.decode import DecodeStage
from kinemesh.services.worker.stages.keypoints import KeypointStage

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "var" / "cache"
TARGET_FPS = 30.0
MULTI_PEOPLE = 2
# BlazePose indices
L_SHOULDER, R_SHOULDER, L_HIP, R_HIP, L_ANKLE, R_ANKLE = 11, 12, 23, 24, 27, 28


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pose_task() -> Path:
    model_dir = Path(os.environ.get("KINEMESH_MODEL_DIR") or REPO / "var" / "models")
    result = mediapipe_pose.build(model_dir / mediapipe_pose.SUBDIR, cache_dir=CACHE / "wheels")
    return result.task_path


@pytest.fixture(scope="session")
def clips() -> dict[str, Path]:
    return ensure_demo_clips(CACHE / "pose2sim", keys=("single_cam01", "multi_cam01"))


@pytest.fixture(scope="module")
def stage(pose_task: Path):
    with KeypointStage(pose_task, max_people=MULTI_PEOPLE) as s:
        yield s


@pytest.fixture(scope="module")
def single_run(stage: KeypointStage, clips) -> tuple[KeypointTracks, RecordingContext]:
    ctx = RecordingContext()
    return stage.run(decode(clips["single_cam01"]), ctx), ctx


@pytest.fixture(scope="module")
def multi_run(stage: KeypointStage, clips) -> KeypointTracks:
    return stage.run(decode(clips["multi_cam01"]), RecordingContext())


# --- helpers ---------------------------------------------------------------------------------


def decode(path: Path, target_fps: float = TARGET_FPS, batch_frames: int = 16) -> DecodedVideo:
    """The real decode stage (PyAV, threaded, resampled to target_fps)."""
    limits = MediaLimits(max_duration_s=600, max_pixels=3840 * 2160, max_side=4096)
    return DecodeStage(batch_frames=batch_frames).open(path, target_fps, limits=limits)


class RecordingContext:
    """Records progress calls; optionally cancels at the n-th cancellation check."""

    def __init__(self, cancel_at_check: int | None = None) -> None:
        self.fractions: list[float] = []
        self.checks = 0
        self.cancel_at_check = cancel_at_check

    def progress(self, stage: str, fraction: float) -> None:
        assert stage == "keypoints"
        self.fractions.append(fraction)

    def check_cancelled(self) -> None:
        self.checks += 1
        if self.cancel_at_check is not None and self.checks >= self.cancel_at_check:
            raise JobCancelled()


def track_frames(tracks: KeypointTracks) -> dict[int, list[tuple[int, np.ndarray]]]:
    """track id -> [(frame index, hip-centre pixel position)]"""
    out: dict[int, list[tuple[int, np.ndarray]]] = {}
    for frame in tracks.frames:
        for tid, obs in frame.people:
            hip = obs.landmarks_2d[[L_HIP, R_HIP]].mean(0)
            out.setdefault(tid, []).append((frame.index, hip))
    return out


def landmark_arrays(tracks: KeypointTracks) -> list[list[tuple[int, np.ndarray]]]:
    return [[(tid, obs.landmarks_2d.copy()) for tid, obs in f.people] for f in tracks.frames]


# --- tests -----------------------------------------------------------------------------------


def test_single_person_landmarks(single_run):
    tracks, ctx = single_run
    meta = tracks.meta
    n = len(tracks.frames)
    assert n == 50  # 100 frames at 60 fps sampled at 30 fps
    assert [f.index for f in tracks.frames] == list(range(n))
    assert np.all(np.diff([f.timestamp_s for f in tracks.frames]) > 0)

    with_person = [f for f in tracks.frames if f.people]
    assert len(with_person) >= 0.95 * n
    coverage = {tid: len(v) for tid, v in track_frames(tracks).items()}
    assert max(coverage.values()) >= 0.95 * n  # one track follows the subject throughout

    for frame in with_person:
        for _, obs in frame.people:
            assert obs.landmarks_2d.shape == (NUM_LANDMARKS, 2) and obs.landmarks_2d.dtype == np.float32
            assert obs.world.shape == (NUM_LANDMARKS, 3)
            assert obs.visibility.shape == obs.presence.shape == (NUM_LANDMARKS,)
            assert np.isfinite(obs.landmarks_2d).all() and np.isfinite(obs.world).all()
            assert (0 <= obs.visibility).all() and (obs.visibility <= 1).all()
            visible = obs.landmarks_2d[obs.visibility > 0.5]
            assert len(visible) >= 20
            assert (visible >= -2).all() and (visible[:, 0] <= meta.width + 2).all()
            assert (visible[:, 1] <= meta.height + 2).all()
            assert np.linalg.norm(obs.world, axis=1).max() < 1.5  # metres from the hip centre
            x0, y0, x1, y1 = obs.bbox
            assert 0 <= x0 < x1 <= meta.width and 0 <= y0 < y1 <= meta.height
            assert 0 < obs.score <= 1

    # Anatomy sanity: shoulders above hips above ankles (image y grows downwards), in the
    # image and in the world frame (MediaPipe world y also points down).
    main = max(coverage, key=coverage.get)
    obs_main = [o for f in tracks.frames for t, o in f.people if t == main]
    for pts in ([o.landmarks_2d for o in obs_main], [o.world[:, :2] for o in obs_main]):
        y = np.median(np.stack(pts)[:, :, 1], axis=0)  # (L,)
        assert y[[L_SHOULDER, R_SHOULDER]].mean() < y[[L_HIP, R_HIP]].mean() < y[[L_ANKLE, R_ANKLE]].mean()

    # Progress: one report per batch, non-decreasing in [0, 1], ending at 1; one cancellation
    # check per batch.
    assert ctx.checks == 4  # 50 frames in batches of 16
    assert ctx.fractions == sorted(ctx.fractions)
    assert all(0.0 <= f <= 1.0 for f in ctx.fractions) and ctx.fractions[-1] == 1.0
    assert ctx.fractions[0] == pytest.approx(16 / 50)


def test_multi_person_stable_tracks(multi_run):
    tracks = multi_run
    n = len(tracks.frames)
    assert all(len(f.people) <= MULTI_PEOPLE for f in tracks.frames)
    per_track = track_frames(tracks)
    long_tracks = {tid: v for tid, v in per_track.items() if len(v) >= 0.5 * n}
    assert len(long_tracks) == MULTI_PEOPLE

    # No identity switch: a track's hip centre moves little from one sampled frame to the
    # next (people here move < 30 px per frame; the two subjects stand > 250 px apart).
    max_step = 0.1 * tracks.meta.width
    for tid, seq in per_track.items():
        for (f0, p0), (f1, p1) in zip(seq, seq[1:], strict=False):
            assert np.linalg.norm(p1 - p0) / (f1 - f0) < max_step, f"track {tid} jumps at frame {f1}"
    a, b = (np.mean([p for _, p in v], axis=0) for v in long_tracks.values())
    assert np.linalg.norm(a - b) > 0.15 * tracks.meta.width


def test_stage_is_reusable_across_clips_and_after_cancel(stage, clips, single_run, multi_run):
    """Later clips on the same landmarker give exactly the results of the first run: nothing
    tracked in an earlier clip (or a cancelled one) leaks into the next."""
    first_single, _ = single_run
    ctx = RecordingContext(cancel_at_check=2)
    with pytest.raises(JobCancelled):
        stage.run(decode(clips["multi_cam01"]), ctx)
    assert ctx.checks == 2
    again = stage.run(decode(clips["single_cam01"]), RecordingContext())
    ref, new = landmark_arrays(first_single), landmark_arrays(again)
    assert [len(p) for p in ref] == [len(p) for p in new]
    for ref_people, new_people in zip(ref, new, strict=True):
        for (t0, l0), (t1, l1) in zip(ref_people, new_people, strict=True):
            assert t0 == t1
            np.testing.assert_allclose(l0, l1, atol=1e-3)


def test_missing_or_broken_model_is_model_unavailable(tmp_path: Path):
    with pytest.raises(ModelUnavailable, match="mediapipe_pose --out"):
        KeypointStage(tmp_path / "nowhere", max_people=1)
    broken = tmp_path / "pose_landmarker_full.task"
    broken.write_bytes(b"not a model")
    with pytest.raises(ModelUnavailable, match="--force"):
        KeypointStage(broken, max_people=1)


def test_build_is_idempotent_and_detects_tampering(pose_task: Path, tmp_path: Path):
    out_dir = pose_task.parent
    manifest = json.loads((out_dir / mediapipe_pose.MANIFEST_FILE).read_text())
    assert manifest["license"] == "Apache-2.0"
    assert manifest["source"]["wheel"].startswith("mediapipe-0.10.21-")
    assert len(manifest["source"]["wheel_sha256"]) == 64
    assert (out_dir / manifest["license_file"]).is_file()
    again = mediapipe_pose.build(out_dir, cache_dir=CACHE / "wheels")
    assert again.skipped and again.task_path == pose_task

    copy = tmp_path / "copy"
    shutil.copytree(out_dir, copy)
    assert mediapipe_pose.is_built(copy)
    data = bytearray((copy / mediapipe_pose.TASK_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / mediapipe_pose.TASK_FILE).write_bytes(bytes(data))
    assert not mediapipe_pose.is_built(copy)


def test_build_is_reproducible(pose_task: Path, tmp_path: Path):
    recorded = json.loads((pose_task.parent / mediapipe_pose.MANIFEST_FILE).read_text())
    result = mediapipe_pose.build(tmp_path / "mp", cache_dir=CACHE / "wheels", verify=False)
    assert not result.skipped
    assert result.manifest["output"]["sha256"] == recorded["output"]["sha256"]
    assert mediapipe_pose.task_path(tmp_path / "mp") == result.task_path
    assert mediapipe_pose.task_path(result.task_path) == result.task_path
    model_dir = pose_task.parent.parent  # the settings' model_dir
    assert mediapipe_pose.task_path(model_dir) == pose_task
