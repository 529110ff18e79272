"""Turn the keypoint stage's tracks into the result JSON and the NPZ artifact."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import numpy as np
import torch

from kinemesh import __version__
from kinemesh.models.rotations import matrix_to_axis_angle
from kinemesh.services.common.schemas import (
    LANDMARK_NAMES,
    ArtifactInfo,
    BodyFrame,
    BodyModelInfo,
    BodySummary,
    ClipInfo,
    FrameInfo,
    FrameQuality,
    JobOptions,
    KeypointModelInfo,
    KinemeshResult,
    ResultSummary,
    Software,
    StageTiming,
    Track,
    TrackBody,
    TrackFrame,
)
from kinemesh.services.worker.stages.base import KeypointTracks, PoseObservation
from kinemesh.services.worker.stages.body import BodyResult, TrackBodies

VISIBLE = 0.5
LOW_SCORE = 0.5
# shoulders, hips, knees, ankles: a body is "partial" when one of these is not visible
CORE_LANDMARKS = (11, 12, 23, 24, 25, 26, 27, 28)
BORDER_PX = 2.0

KEYPOINT_MODEL = KeypointModelInfo(
    name="mediapipe-blazepose-full",
    landmark_names=list(LANDMARK_NAMES),
    source="MediaPipe pose_detection + pose_landmark_full (mediapipe 0.10.21 wheel, Apache-2.0)",
)


def _round(a: np.ndarray, digits: int) -> list:
    return np.round(a.astype(np.float64), digits).tolist()


def _frame_flags(people: list[PoseObservation], width: int, height: int) -> list[str]:
    if not people:
        return ["no_person"]
    flags: list[str] = []
    if any(p.score < LOW_SCORE for p in people):
        flags.append("low_visibility")
    if any((p.visibility[list(CORE_LANDMARKS)] < VISIBLE).any() for p in people):
        flags.append("partial_body")
    for p in people:
        x0, y0, x1, y1 = p.bbox
        if x0 <= BORDER_PX or y0 <= BORDER_PX or x1 >= width - BORDER_PX or y1 >= height - BORDER_PX:
            flags.append("at_image_border")
            break
    if len(people) > 1:
        flags.append("multiple_people")
    return flags


def artifact_infos(artifacts: dict[str, bytes]) -> list[ArtifactInfo]:
    """Name, media type, size and meaning of each artifact, in name order."""
    infos = []
    for name in sorted(artifacts):
        if name.endswith(".glb"):
            media, what = "model/gltf-binary", "Animated mesh of one track (glTF 2.0 binary, skinned, camera frame)."
        elif name == "mesh.npz":
            media, what = "application/x-npz", ("Per-track body parameters, joints, translations, the mesh's "
                                                "skinning (rest vertices, node transforms per frame, weights) "
                                                "and, for tracks up to 150 frames, float16 posed vertices; faces.")
        elif name == "keypoints.npz":
            media, what = "application/x-npz", "Dense keypoint arrays (NaN where a track is absent)."
        else:
            media, what = "application/octet-stream", "Job artifact."
        infos.append(ArtifactInfo(name=name, media_type=media, size_bytes=len(artifacts[name]), description=what))
    return infos


def _body_frames(body: BodyResult | None) -> dict[tuple[int, int], BodyFrame]:
    """(track id, frame index) -> BodyFrame."""
    out: dict[tuple[int, int], BodyFrame] = {}
    for tb in body.tracks if body else []:
        aa = matrix_to_axis_angle(torch.from_numpy(tb.rotations[:, :22])).numpy()  # (T, 22, 3)
        for k, idx in enumerate(tb.frame_index.tolist()):
            out[(tb.track_id, idx)] = BodyFrame(
                global_orient=tuple(_round(aa[k, 0], 5)), body_pose=[tuple(r) for r in _round(aa[k, 1:], 5)],
                camera=tuple(_round(tb.camera[k], 5)), translation=tuple(_round(tb.translation[k], 4)),
                joints_3d=[tuple(r) for r in _round(tb.joints[k], 4)],
                reprojection_error_px=round(float(tb.reproj_after_px[k]), 3),
                reprojection_error_before_px=round(float(tb.reproj_before_px[k]), 3),
            )
    return out


def _track_body(tb: TrackBodies) -> TrackBody:
    return TrackBody(shape=_round(tb.shape, 4), frames_meshed=len(tb.frame_index),
                     reprojection_error_px_before=round(float(tb.reproj_before_px.mean()), 3),
                     reprojection_error_px_after=round(float(tb.reproj_after_px.mean()), 3),
                     mesh_artifact=f"mesh_track{tb.track_id}.glb")


def body_summary(body: BodyResult) -> BodySummary:
    """Means over every person-frame the body stage fitted."""
    cat = lambda attr: np.concatenate([getattr(t, attr) for t in body.tracks]) if body.tracks else np.zeros(0)  # noqa: E731
    before, after, height = cat("reproj_before_px"), cat("reproj_after_px"), cat("bbox_height_px")
    frac = lambda e: float((e / np.maximum(height, 1.0)).mean()) if len(e) else 0.0  # noqa: E731
    return BodySummary(
        frames_meshed=len(before),
        reprojection_error_px_before=round(float(before.mean()), 3) if len(before) else 0.0,
        reprojection_error_px_after=round(float(after.mean()), 3) if len(after) else 0.0,
        reprojection_error_bbox_frac_before=round(frac(before), 5),
        reprojection_error_bbox_frac_after=round(frac(after), 5),
    )


def build_result(tracks: KeypointTracks, options: JobOptions, clip: ClipInfo, timings: list[StageTiming],
                 seconds: float, job_id: str | None, body: BodyResult | None = None,
                 body_model: BodyModelInfo | None = None, artifacts: dict[str, bytes] | None = None) -> KinemeshResult:
    want_2d = "keypoints_2d" in options.outputs
    want_3d = "keypoints_3d" in options.outputs
    bodies = _body_frames(body)
    track_bodies = {tb.track_id: _track_body(tb) for tb in body.tracks} if body else {}
    w, h = tracks.meta.width, tracks.meta.height
    frames: list[FrameInfo] = []
    per_track: dict[int, list[TrackFrame]] = {}
    for f in tracks.frames:
        people = [obs for _, obs in f.people]
        frames.append(FrameInfo(
            index=f.index,
            timestamp_s=round(float(f.timestamp_s), 6),
            track_ids=[tid for tid, _ in f.people],
            quality=FrameQuality(person_detected=bool(people), people=len(people),
                                 flags=_frame_flags(people, w, h)),
        ))
        for tid, obs in f.people:
            kp2d = None
            if want_2d:
                kp2d = _round(np.concatenate(
                    [obs.landmarks_2d, obs.visibility[:, None], obs.presence[:, None]], axis=1), 3)  # (L, 4)
            per_track.setdefault(tid, []).append(TrackFrame(
                index=f.index,
                bbox=tuple(_round(obs.bbox, 2)),
                score=float(np.clip(round(obs.score, 4), 0.0, 1.0)),
                keypoints_2d=kp2d,
                keypoints_3d=_round(obs.world, 4) if want_3d else None,
                body=bodies.get((tid, f.index)),
            ))
    track_docs = [
        Track(track_id=tid, first_frame=tf[0].index, last_frame=tf[-1].index, frames=tf,
              body=track_bodies.get(tid))
        for tid, tf in sorted(per_track.items())
    ]
    return KinemeshResult(
        job_id=job_id,
        created_at=datetime.now(UTC),
        software=Software(version=__version__),
        options=options,
        clip=clip,
        keypoint_model=KEYPOINT_MODEL,
        summary=ResultSummary(
            frames=len(frames),
            frames_with_person=sum(1 for f in frames if f.quality.person_detected),
            tracks=len(track_docs),
            seconds=round(seconds, 4),
            body=body_summary(body) if body else None,
        ),
        timings=timings,
        frames=frames,
        tracks=track_docs,
        body_model=body_model,
        artifacts=artifact_infos(artifacts or {}),
    )


def keypoints_npz(tracks: KeypointTracks) -> bytes:
    """Dense arrays for numeric users: NaN where a track is absent.

    track_ids (K,), timestamps_s (T,), keypoints_2d (T, K, L, 4) [x, y, visibility, presence],
    keypoints_3d (T, K, L, 3) metres, bbox (T, K, 4).
    """
    ids = sorted({tid for f in tracks.frames for tid, _ in f.people})
    col = {tid: k for k, tid in enumerate(ids)}
    t, k, n_l = len(tracks.frames), len(ids), len(KEYPOINT_MODEL.landmark_names)
    kp2d = np.full((t, k, n_l, 4), np.nan, np.float32)  # (T, K, L, 4)
    kp3d = np.full((t, k, n_l, 3), np.nan, np.float32)  # (T, K, L, 3)
    bbox = np.full((t, k, 4), np.nan, np.float32)  # (T, K, 4)
    for i, f in enumerate(tracks.frames):
        for tid, obs in f.people:
            j = col[tid]
            kp2d[i, j, :, :2] = obs.landmarks_2d
            kp2d[i, j, :, 2] = obs.visibility
            kp2d[i, j, :, 3] = obs.presence
            kp3d[i, j] = obs.world
            bbox[i, j] = obs.bbox
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        track_ids=np.asarray(ids, np.int64),
        timestamps_s=np.asarray([f.timestamp_s for f in tracks.frames], np.float64),
        frame_index=np.asarray([f.index for f in tracks.frames], np.int64),
        keypoints_2d=kp2d,
        keypoints_3d=kp3d,
        bbox=bbox,
        landmark_names=np.asarray(KEYPOINT_MODEL.landmark_names),
    )
    return buf.getvalue()
