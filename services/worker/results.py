"""Turn the keypoint stage's tracks into the result JSON and the NPZ artifact."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from kinemesh import __version__
from kinemesh.models.assets.mediapipe_hands import HAND_LANDMARKS
from kinemesh.models.biomech.opensim_model import degrees
from kinemesh.models.hands.skeleton import HAND_JOINTS
from kinemesh.models.rotations import matrix_to_axis_angle
from kinemesh.services.common.schemas import (
    LANDMARK_NAMES,
    ArtifactInfo,
    BodyFrame,
    BodyModelInfo,
    BodyScale,
    BodySummary,
    ClipInfo,
    CoordinateRange,
    FrameInfo,
    FrameQuality,
    GaitSummary,
    HandFrame,
    HandModelInfo,
    HandPose,
    Hands,
    JobOptions,
    KeypointModelInfo,
    KinematicsFrame,
    KinematicsModelInfo,
    KinematicsSummary,
    KinemeshResult,
    ResultSummary,
    Software,
    StageTiming,
    Track,
    TrackBody,
    TrackFrame,
)
from kinemesh.services.common.schemas import TrackKinematics as TrackKinematics_
from kinemesh.services.worker.stages.base import KeypointTracks, PoseObservation
from kinemesh.services.worker.stages.body import BodyResult, TrackBodies
from kinemesh.services.worker.stages.hands import HandPose as HandPoseResult
from kinemesh.services.worker.stages.hands import HandsResult
from kinemesh.services.worker.stages.kinematics import (
    CONVENTION,
    MODEL_SOURCE,
    ZERO_POSE,
    KinematicsResult,
    TrackKinematics,
)

VISIBLE = 0.5
LOW_SCORE = 0.5
# shoulders, hips, knees, ankles: a body is "partial" when one of these is not visible
CORE_LANDMARKS = (11, 12, 23, 24, 25, 26, 27, 28)
BORDER_PX = 2.0

HAND_MODEL = HandModelInfo(
    name="mediapipe-hand-landmarker-full",
    landmark_names=list(HAND_LANDMARKS),
    method="MediaPipe's hand landmarker (IMAGE mode, one hand) on a 256 x 256 crop around each tracked person's "
           "BlazePose wrist, pinky, index and thumb landmarks (half-side 3.5 x the largest wrist-to-finger distance), "
           "for each side whose wrist is visible; the side is the wrist's",
    source="MediaPipe palm_detection_full + hand_landmark_full (mediapipe 0.10.21 wheel, Apache-2.0)",
)

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
        elif name.endswith(tuple(KINEMATICS_ARTIFACTS)):
            media, what = KINEMATICS_ARTIFACTS[Path(name).suffix]
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


KINEMATICS_ARTIFACTS = {
    ".mot": ("text/plain", "Joint coordinates of one track as an OpenSim motion file (degrees, filtered)."),
    ".trc": ("text/plain", "The virtual markers of one track as an OpenSim marker file (metres)."),
    ".osim": ("application/xml", "The OpenSim model scaled to one track's person, markers placed."),
    ".csv": ("text/csv", "Joint coordinates of one track (degrees or metres, filtered)."),
    ".png": ("image/png", "Hip, knee and ankle flexion of one track over time."),
}


def _kinematics_frames(kin: KinematicsResult | None) -> dict[tuple[int, int], KinematicsFrame]:
    """(track id, frame index) -> KinematicsFrame."""
    out: dict[tuple[int, int], KinematicsFrame] = {}
    for tk in kin.tracks if kin else []:
        shown = degrees(tk.values, kin.rotational)
        for k, idx in enumerate(tk.frame_index.tolist()):
            out[(tk.track_id, idx)] = KinematicsFrame(
                coordinates=_round(shown[k], 3), marker_error_m=round(float(tk.marker_error_m[k]), 4),
                out_of_range=[n for n, bad in zip(kin.coordinate_names, tk.violations[k], strict=True) if bad])
    return out


def _track_kinematics(tk: TrackKinematics, kin: KinematicsResult) -> TrackKinematics_:
    shown = degrees(tk.values, kin.rotational)
    gait = None
    if tk.gait is not None:
        g = tk.gait
        frame = lambda idx: [int(tk.frame_index[i]) for i in idx]  # noqa: E731  rows -> sampled frame indices
        gait = GaitSummary(heel_strikes_left=frame(g.left.heel_strikes), heel_strikes_right=frame(g.right.heel_strikes),
                           toe_offs_left=frame(g.left.toe_offs), toe_offs_right=frame(g.right.toe_offs),
                           cadence_steps_per_min=round(g.cadence_steps_per_min, 2), step_time_s=round(g.step_time_s, 4),
                           step_length_m=round(g.step_length_m, 4),
                           walking_speed_m_s=None if g.walking_speed_m_s is None else round(g.walking_speed_m_s, 4))
    a = tk.artifacts
    return TrackKinematics_(
        frames=len(tk.frame_index), marker_error_rms_m=round(float(np.sqrt(np.mean(tk.marker_error_m**2))), 4),
        ranges=[CoordinateRange(name=n, min=round(float(shown[:, i].min()), 3), max=round(float(shown[:, i].max()), 3))
                for i, n in enumerate(kin.coordinate_names)],
        out_of_range_frames=int(tk.violations.any(1).sum()),
        scale_factors=[BodyScale(body=b, factor=round(f, 4)) for b, f in tk.scale_factors.items()],
        gait=gait, mot_artifact=a["mot"], trc_artifact=a["trc"], osim_artifact=a["osim"], csv_artifact=a["csv"],
        plot_artifact=a["png"])


def kinematics_model_info(kin: KinematicsResult) -> KinematicsModelInfo:
    ranges = degrees(kin.ranges.T, kin.rotational).T  # (C, 2)
    return KinematicsModelInfo(
        model=MODEL_SOURCE, method=kin.method, coordinate_names=kin.coordinate_names,
        coordinate_units=["deg" if r else "m" for r in kin.rotational],
        model_ranges=[CoordinateRange(name=n, min=round(float(lo), 3), max=round(float(hi), 3))
                      for n, (lo, hi) in zip(kin.coordinate_names, ranges, strict=True)],
        marker_names=kin.marker_names, fixed_coordinates=kin.fixed, fit_iterations=kin.fit_iterations,
        convention=CONVENTION, zero_pose=ZERO_POSE, filter=kin.filter,
        frame="pelvis translations in the camera's frame turned to OpenSim's axes: x towards the camera, "
              "y the camera's up, z the image's left")


def kinematics_summary(kin: KinematicsResult) -> KinematicsSummary:
    err = np.concatenate([t.marker_error_m for t in kin.tracks]) if kin.tracks else np.zeros(0)
    return KinematicsSummary(frames=len(err), marker_error_rms_m=round(float(np.sqrt(np.mean(err**2))), 4) if len(err) else 0.0,
                             out_of_range_frames=int(sum(t.violations.any(1).sum() for t in kin.tracks)))


def _hand_pose(pose: HandPoseResult | None) -> HandPose | None:
    if pose is None:
        return None
    aa = matrix_to_axis_angle(torch.from_numpy(np.concatenate([pose.orient[None], pose.fingers]))).numpy()
    return HandPose(orient=tuple(_round(aa[0], 5)), fingers=_round(aa[1:], 5), joints_3d=_round(pose.joints_3d, 4),
                    size=round(pose.size, 4))


def _hands(hands: HandsResult | None, tid: int, index: int) -> Hands | None:
    """One person's hands in one frame for the result, or None when none was found."""
    found = hands.hands.get((tid, index)) if hands is not None else None
    if not found:
        return None
    return Hands(**{side: HandFrame(keypoints_2d=_round(h.keypoints_2d, 2), keypoints_3d=_round(h.keypoints_3d, 4),
                                    score=float(np.clip(round(h.score, 4), 0.0, 1.0)), pose=_hand_pose(h.pose))
                    for side, h in found.items()})


def hand_model_info(stage_pose_model: str | None) -> HandModelInfo:
    """What found the hands and, when there is one, which model posed them."""
    return HAND_MODEL.model_copy(update={"pose_model": stage_pose_model,
                                         "joint_names": list(HAND_JOINTS) if stage_pose_model else []})


def build_result(tracks: KeypointTracks, options: JobOptions, clip: ClipInfo, timings: list[StageTiming],
                 seconds: float, job_id: str | None, body: BodyResult | None = None,
                 body_model: BodyModelInfo | None = None, artifacts: dict[str, bytes] | None = None,
                 kinematics: KinematicsResult | None = None, hands: HandsResult | None = None) -> KinemeshResult:
    want_2d = "keypoints_2d" in options.outputs
    want_3d = "keypoints_3d" in options.outputs
    bodies = _body_frames(body)
    track_bodies = {tb.track_id: _track_body(tb) for tb in body.tracks} if body else {}
    kin_frames = _kinematics_frames(kinematics)
    track_kin = {tk.track_id: _track_kinematics(tk, kinematics) for tk in kinematics.tracks} if kinematics else {}
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
                kinematics=kin_frames.get((tid, f.index)),
                hands=_hands(hands, tid, f.index),
            ))
    track_docs = [
        Track(track_id=tid, first_frame=tf[0].index, last_frame=tf[-1].index, frames=tf,
              body=track_bodies.get(tid), kinematics=track_kin.get(tid))
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
            kinematics=kinematics_summary(kinematics) if kinematics else None,
        ),
        timings=timings,
        frames=frames,
        tracks=track_docs,
        body_model=body_model,
        kinematics_model=kinematics_model_info(kinematics) if kinematics else None,
        hand_model=hand_model_info(hands.pose_model) if hands is not None else None,
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
