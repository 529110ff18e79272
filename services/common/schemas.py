"""The wire format: every document the API accepts or returns, and the result JSON.

One module, pydantic models with descriptions. `protos/kinemesh/v1/*.proto` mirrors these.
The result JSON is versioned by `schema_version`; its JSON Schema is committed at
`services/common/result.schema.json` and checked by a test.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kinemesh.models.landmarks import BLAZEPOSE_LANDMARKS

RESULT_SCHEMA_VERSION = 3

LANDMARK_NAMES = BLAZEPOSE_LANDMARKS  # MediaPipe Pose order, 33 landmarks


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --- jobs ----------------------------------------------------------------------------------


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.succeeded, JobState.failed, JobState.cancelled)


OutputName = Literal["keypoints_2d", "keypoints_3d", "body", "kinematics", "hands"]
IkMethod = Literal["neurik", "opensim"]
BodyModelChoice = Literal["genhmr", "mq-hmr"]


class JobOptions(_Doc):
    """What the caller asks of a job. Sent as query parameters or a multipart `options` part."""

    target_fps: float | None = Field(
        None, gt=0, le=240, description="Sampling rate in frames per second; at most the clip's own rate. "
        "Default: the server's KINEMESH_DEFAULT_TARGET_FPS."
    )
    max_people: int = Field(1, ge=1, le=8, description="Most people tracked per frame.")
    outputs: list[OutputName] = Field(
        default_factory=lambda: ["keypoints_2d", "keypoints_3d", "body", "kinematics"],
        min_length=1,
        description="Which outputs the result carries; `body` runs the body stage (parameters, 3D joints, "
        "mesh artifacts); `kinematics` the kinematics stage on the bodies (OpenSim joint coordinates, "
        ".mot/.trc/.osim/CSV/PNG artifacts, gait events) and needs `body`; `hands` (not in the default) "
        "21 keypoints per hand of each tracked person.",
    )

    body_model: BodyModelChoice = Field(
        "genhmr", description="Which body model turns each person into a mesh: `genhmr` (GenHMR's masked "
        "pose-token transformer on the 2D keypoints; the default, trained by the project) or `mq-hmr` "
        "(BioPose's multi-query transformer on person crops; needs a bundle with a trained MQ-HMR checkpoint, "
        "else the job fails with `model_untrained`).",
    )
    ik: IkMethod = Field(
        "neurik", description="How the kinematics stage turns the virtual markers into joint coordinates: "
        "`neurik` (BioPose's learned inverse kinematics, one batched network call per track) or `opensim` "
        "(OpenSim's InverseKinematicsTool: the reference NeurIK is trained against, about 100x slower).",
    )

    @model_validator(mode="after")
    def _kinematics_needs_body(self) -> JobOptions:
        if "kinematics" in self.outputs and "body" not in self.outputs:
            raise ValueError("output `kinematics` is computed from the body mesh: ask for `body` too")
        return self


class Problem(_Doc):
    """RFC 9457 problem details, with a stable machine-readable `code`."""

    model_config = ConfigDict(extra="allow")

    type: str = Field("about:blank", description="URI naming the problem type.")
    title: str = Field(..., description="Short human summary of the problem type.")
    status: int | None = Field(None, description="HTTP status code.")
    detail: str | None = Field(None, description="Explanation of this occurrence.")
    instance: str | None = Field(None, description="URI of the request or job this occurred on.")
    code: str = Field(..., description="Stable error code, e.g. `unsupported_codec`.")


class ClipInfo(_Doc):
    """What the gateway and the worker found in the uploaded clip."""

    width: int = Field(..., description="Upright frame width, pixels.")
    height: int = Field(..., description="Upright frame height, pixels.")
    rotation_deg: int = Field(..., description="Clockwise rotation applied from the container's display matrix.")
    source_fps: float = Field(..., description="Average frame rate of the video stream.")
    target_fps: float | None = Field(None, description="Rate the pipeline sampled at.")
    duration_s: float = Field(..., description="Duration of the video stream, seconds.")
    source_frames: int = Field(..., description="Frames in the stream (container count or estimate).")
    codec: str = Field(..., description="Video codec name (FFmpeg).")
    container: str = Field(..., description="Container format name (FFmpeg).")
    size_bytes: int | None = Field(None, description="Size of the upload in bytes.")


class StageTiming(_Doc):
    stage: str = Field(..., description="Stage name.")
    seconds: float = Field(..., description="Wall time spent in the stage.")


class JobDocument(_Doc):
    """A job as the API shows it."""

    id: str = Field(..., description="Job id.")
    state: JobState = Field(..., description="Lifecycle state.")
    stage: str | None = Field(None, description="Stage running now (or last run).")
    progress: float = Field(0.0, ge=0, le=1, description="Progress of the whole job in [0, 1].")
    created_at: datetime = Field(..., description="When the job was accepted.")
    started_at: datetime | None = Field(None, description="When a worker first started it.")
    finished_at: datetime | None = Field(None, description="When it reached a terminal state.")
    updated_at: datetime = Field(..., description="Last change of this document.")
    attempts: int = Field(0, description="Times a worker started this job (more than 1 after a redelivery).")
    options: JobOptions = Field(..., description="Options the job was submitted with.")
    clip: ClipInfo | None = Field(None, description="The uploaded clip, as probed.")
    error: Problem | None = Field(None, description="Why the job failed, for state `failed`.")
    timings: list[StageTiming] = Field(default_factory=list, description="Per-stage wall times.")
    result_url: str | None = Field(None, description="Where the result JSON is, once succeeded.")
    artifacts: list[str] = Field(default_factory=list, description="Names of downloadable artifacts.")


class JobList(_Doc):
    items: list[JobDocument] = Field(..., description="Jobs, newest first.")
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page; null at the end.")


class JobEvent(_Doc):
    """One server-sent event on /v1/jobs/{id}/events."""

    id: str = Field(..., description="Job id.")
    state: JobState
    stage: str | None = None
    progress: float = Field(0.0, ge=0, le=1)
    error: Problem | None = None


# --- result JSON ---------------------------------------------------------------------------

Keypoint2D = Annotated[
    tuple[float, float, float, float],
    Field(description="x, y in pixels of the upright frame (origin top-left, y down), visibility, presence."),
]
Keypoint3D = Annotated[
    tuple[float, float, float], Field(description="x, y, z in metres, MediaPipe world frame (hip-centred).")
]


class FrameQuality(_Doc):
    person_detected: bool = Field(..., description="At least one person was found.")
    people: int = Field(..., ge=0, description="People found in this frame.")
    flags: list[Literal["no_person", "low_visibility", "partial_body", "at_image_border", "multiple_people"]] = (
        Field(default_factory=list, description="Quality flags; empty when the frame is clean.")
    )


class FrameInfo(_Doc):
    index: int = Field(..., ge=0, description="Index on the sampled timeline.")
    timestamp_s: float = Field(..., ge=0, description="Presentation time in the clip, seconds.")
    track_ids: list[int] = Field(..., description="Tracks present in this frame.")
    quality: FrameQuality


Vec3 = tuple[float, float, float]


class BodyFrame(_Doc):
    """The body model fitted to one person in one frame, after refinement.

    Camera frame: x right, y up, z towards the viewer (the camera looks down -z), metres; a pinhole
    camera with the focal length in `body_model.focal_length_px`.
    """

    global_orient: Vec3 = Field(..., description="Root orientation in the camera frame, axis-angle, radians.")
    body_pose: list[Vec3] = Field(..., min_length=21, max_length=21,
                                  description="Axis-angle (radians) of the 21 body joints below the root, "
                                  "parent-relative, in the order of body_model.joint_names[1:22].")
    camera: Vec3 = Field(..., description="Weak-perspective camera (s, tx, ty) in person-box units; after "
                         "refinement the one equivalent to the pinhole placement at the root's depth.")
    translation: Vec3 = Field(..., description="Root translation in the camera frame, metres.")
    joints_3d: list[Vec3] = Field(..., min_length=24, max_length=24,
                                  description="The 24 body-model joints in the camera frame, metres.")
    reprojection_error_px: float = Field(..., ge=0, description="Mean 2D error of the confident landmarks "
                                         "after refinement, pixels.")
    reprojection_error_before_px: float = Field(..., ge=0, description="The same before refinement, pixels.")


class TrackBody(_Doc):
    """What the body stage found for one track as a whole."""

    shape: list[float] = Field(..., description="Body shape coefficients, one set for the track.")
    frames_meshed: int = Field(..., ge=0, description="Frames of this track with a fitted body.")
    reprojection_error_px_before: float = Field(..., ge=0, description="Mean over frames, before refinement.")
    reprojection_error_px_after: float = Field(..., ge=0, description="Mean over frames, after refinement.")
    mesh_artifact: str | None = Field(None, description="Name of this track's animated mesh artifact (GLB).")


class KinematicsFrame(_Doc):
    """The person's joint coordinates in one frame (OpenSim inverse kinematics on the virtual markers)."""

    coordinates: list[float] = Field(..., description="One value per kinematics_model.coordinate_names: degrees "
                                     "for rotational coordinates, metres for translational ones; low-pass filtered.")
    marker_error_m: float = Field(..., ge=0, description="RMS distance between the virtual markers and the "
                                  "model's markers in this frame, metres (before filtering).")
    out_of_range: list[str] = Field(default_factory=list, description="Joint coordinates outside the model's "
                                    "range in this frame (the pelvis's global position and orientation are "
                                    "not checked: they are in the camera's frame).")


class CoordinateRange(_Doc):
    name: str = Field(..., description="OpenSim coordinate name.")
    min: float = Field(..., description="Smallest value, degrees or metres.")
    max: float = Field(..., description="Largest value, degrees or metres.")


class BodyScale(_Doc):
    body: str = Field(..., description="OpenSim body name.")
    factor: float = Field(..., gt=0, description="Uniform scale factor of the generic model's body.")


class GaitSummary(_Doc):
    """Gait events (Zeni et al. 2008: heel furthest ahead of, toe furthest behind the pelvis) and
    spatiotemporal parameters, when the track is a walk."""

    heel_strikes_left: list[int] = Field(..., description="Frame indices (sampled timeline).")
    heel_strikes_right: list[int] = Field(..., description="Frame indices (sampled timeline).")
    toe_offs_left: list[int] = Field(..., description="Frame indices (sampled timeline).")
    toe_offs_right: list[int] = Field(..., description="Frame indices (sampled timeline).")
    cadence_steps_per_min: float = Field(..., gt=0)
    step_time_s: float = Field(..., gt=0)
    step_length_m: float = Field(..., ge=0)
    walking_speed_m_s: float | None = Field(None, description="Pelvis speed along the direction of travel.")


class TrackKinematics(_Doc):
    """What the kinematics stage found for one track as a whole."""

    frames: int = Field(..., ge=0, description="Frames of this track with coordinates.")
    marker_error_rms_m: float = Field(..., ge=0, description="RMS marker error over the track, metres.")
    ranges: list[CoordinateRange] = Field(..., description="Range of motion of each coordinate over the track.")
    out_of_range_frames: int = Field(..., ge=0, description="Frames with at least one coordinate outside its range.")
    scale_factors: list[BodyScale] = Field(..., description="How the generic model was scaled to this person.")
    gait: GaitSummary | None = Field(None, description="Gait events and parameters, when the track is a walk.")
    mot_artifact: str = Field(..., description="Coordinates as an OpenSim motion file (.mot, degrees).")
    trc_artifact: str = Field(..., description="The virtual markers as an OpenSim marker file (.trc, metres).")
    osim_artifact: str = Field(..., description="The OpenSim model scaled to this person (.osim).")
    csv_artifact: str = Field(..., description="Coordinates as CSV (degrees or metres).")
    plot_artifact: str = Field(..., description="PNG plot of hip, knee and ankle flexion over time.")


class HandPose(_Doc):
    """The hand model's pose of one hand (MMHMR's method: the 21 keypoints through the hand
    transformer and its tokenizer)."""

    orient: Vec3 = Field(..., description="The wrist's orientation in the camera frame (x right, y up, z towards "
                         "the viewer), axis-angle, radians.")
    fingers: list[Vec3] = Field(..., min_length=15, max_length=15, description="Axis-angle (radians) of the 15 "
                                "finger joints, parent-relative, in the order of hand_model.joint_names[1:].")
    joints_3d: list[Vec3] = Field(..., min_length=21, max_length=21, description="The posed hand's 21 keypoints "
                                  "(hand_model.landmark_names), metres, wrist at the origin, camera axes.")
    size: float = Field(..., gt=0, description="The hand's size over the model skeleton's (wrist to middle "
                        "knuckle 9 cm).")


class HandFrame(_Doc):
    """One hand of one person in one frame: MediaPipe's hand landmarker on a crop around the person's
    BlazePose wrist and fingers (see hand_model)."""

    keypoints_2d: list[tuple[float, float]] = Field(..., min_length=21, max_length=21, description="21 hand "
                                                    "landmarks (hand_model.landmark_names), x, y in pixels of the "
                                                    "upright frame.")
    keypoints_3d: list[Vec3] = Field(..., min_length=21, max_length=21, description="The same in metres, "
                                     "MediaPipe's hand world frame (origin near the hand's centre).")
    score: float = Field(..., ge=0, le=1, description="The landmarker's confidence in the hand.")
    pose: HandPose | None = Field(None, description="The hand model's pose (when the served bundle has it).")


class Hands(_Doc):
    """A person's hands in one frame; a side is null where it was not found (or its wrist not visible)."""

    left: HandFrame | None = Field(None, description="The person's left hand (BlazePose's left wrist).")
    right: HandFrame | None = Field(None, description="The person's right hand.")


class TrackFrame(_Doc):
    """One person in one frame."""

    index: int = Field(..., ge=0, description="Frame index on the sampled timeline.")
    bbox: tuple[float, float, float, float] = Field(..., description="x0, y0, x1, y1 in pixels.")
    score: float = Field(..., ge=0, le=1, description="Mean landmark visibility.")
    keypoints_2d: list[Keypoint2D] | None = Field(
        None, min_length=33, max_length=33, description="33 BlazePose landmarks in the image (see landmark_names)."
    )
    keypoints_3d: list[Keypoint3D] | None = Field(
        None, min_length=33, max_length=33, description="33 BlazePose world landmarks, metres."
    )
    body: BodyFrame | None = Field(None, description="The fitted body in this frame (when `body` was asked for).")
    kinematics: KinematicsFrame | None = Field(None, description="Joint coordinates in this frame (when "
                                               "`kinematics` was asked for).")
    hands: Hands | None = Field(None, description="The person's hands in this frame (when `hands` was asked for "
                                "and one was found).")


class Track(_Doc):
    track_id: int = Field(..., ge=0, description="Identity persisting across frames.")
    first_frame: int = Field(..., ge=0)
    last_frame: int = Field(..., ge=0)
    frames: list[TrackFrame] = Field(..., description="Frames where this person was seen, in order.")
    body: TrackBody | None = Field(None, description="Track-level body results (when `body` was asked for).")
    kinematics: TrackKinematics | None = Field(None, description="Track-level kinematics (when `kinematics` "
                                               "was asked for and the track has enough frames).")


class KeypointModelInfo(_Doc):
    name: str = Field(..., description="Keypoint model id.")
    landmark_names: list[str] = Field(..., description="Order of the 33 landmarks.")
    source: str = Field(..., description="Where the model files came from, with licence.")


class HandModelInfo(_Doc):
    name: str = Field(..., description="Hand keypoint model id.")
    landmark_names: list[str] = Field(..., description="Order of the 21 landmarks in each hand's keypoints.")
    method: str = Field(..., description="How hands are found.")
    source: str = Field(..., description="Where the model files came from, with licence.")
    pose_model: str | None = Field(None, description="Architecture of the hand pose model; null when the bundle "
                                   "has none (keypoints only).")
    joint_names: list[str] = Field(default_factory=list, description="The hand model's 16 joints: the wrist, then "
                                   "three per finger (thumb first); HandPose.fingers are joints 1..15.")


class BodyModelInfo(_Doc):
    name: str = Field(..., description="Body model id, e.g. anny-core24-s32.")
    pose_model: str = Field(..., description="Architecture that predicted the bodies.")
    bundle: str = Field(..., description="Model bundle, name@version.")
    trained: bool = Field(..., description="Whether every graph used carries trained weights.")
    joint_names: list[str] = Field(..., description="Order of joints_3d; body_pose is joints 1..21.")
    shape_components: int = Field(..., ge=0, description="Length of each track's shape.")
    focal_length_px: float = Field(..., gt=0, description="Assumed pinhole focal length: max(width, height).")
    decoding_iterations: int = Field(..., ge=1, description="Masked-token decoding iterations.")
    refinement_steps: int = Field(..., ge=0, description="2D-informed refinement steps per track.")


class KinematicsModelInfo(_Doc):
    model: str = Field(..., description="The OpenSim model and marker set, with source and licence.")
    method: str = Field(..., description="How coordinates were computed: `neurik` (BioPose's learned IK "
                        "on the virtual markers, then `fit_iterations` steps of a least-squares marker fit from "
                        "its output) or `opensim_ik` (OpenSim's InverseKinematicsTool on them).")
    fit_iterations: int = Field(0, ge=0, description="Levenberg-Marquardt steps of the marker fit after NeurIK "
                                "(OpenSim IK's objective and bounds); 0 = the network's output as it is, and for "
                                "`opensim_ik`.")
    coordinate_names: list[str] = Field(..., description="Order of KinematicsFrame.coordinates (OpenSim names).")
    coordinate_units: list[str] = Field(..., description="`deg` or `m` for each coordinate.")
    model_ranges: list[CoordinateRange] = Field(..., description="Each coordinate's range in the model.")
    marker_names: list[str] = Field(..., description="Virtual markers on the body mesh used for IK and scaling.")
    fixed_coordinates: list[str] = Field(..., description="Coordinates held at the model's default (zero): no "
                                         "virtual marker moves them (toes, neck, wrists).")
    convention: str = Field(..., description="Units and sign convention.")
    zero_pose: str = Field(..., description="The pose in which every angle is zero.")
    filter: str = Field(..., description="Low-pass filter applied to the coordinates.")
    frame: str = Field(..., description="Frame of the pelvis translations.")


class KinematicsSummary(_Doc):
    frames: int = Field(..., ge=0, description="Person-frames with coordinates.")
    marker_error_rms_m: float = Field(..., ge=0, description="RMS marker error over them, metres.")
    out_of_range_frames: int = Field(..., ge=0, description="Person-frames with a coordinate outside its range.")


class BodySummary(_Doc):
    frames_meshed: int = Field(..., ge=0, description="Person-frames with a fitted body.")
    reprojection_error_px_before: float = Field(..., ge=0, description="Mean 2D error before refinement, pixels.")
    reprojection_error_px_after: float = Field(..., ge=0, description="Mean 2D error after refinement, pixels.")
    reprojection_error_bbox_frac_before: float = Field(..., ge=0, description="Before, over the person's "
                                                       "bounding-box height.")
    reprojection_error_bbox_frac_after: float = Field(..., ge=0, description="After, over the person's "
                                                      "bounding-box height.")


class ArtifactInfo(_Doc):
    name: str = Field(..., description="Artifact name; fetch it at /v1/jobs/{job_id}/artifacts/{name}.")
    media_type: str = Field(..., description="MIME type.")
    size_bytes: int = Field(..., ge=0)
    description: str


class ResultSummary(_Doc):
    frames: int = Field(..., ge=0, description="Sampled frames processed.")
    frames_with_person: int = Field(..., ge=0, description="Frames with at least one person.")
    tracks: int = Field(..., ge=0, description="Distinct person tracks.")
    seconds: float = Field(..., ge=0, description="Processing wall time of the pipeline.")
    body: BodySummary | None = Field(None, description="Body-stage figures (when `body` was asked for).")
    kinematics: KinematicsSummary | None = Field(None, description="Kinematics figures (when `kinematics` was "
                                                 "asked for).")


class Software(_Doc):
    name: Literal["kinemesh"] = "kinemesh"
    version: str


class KinemeshResult(_Doc):
    """The result JSON of a job (schema_version 3)."""

    schema_version: Literal[3] = Field(RESULT_SCHEMA_VERSION, description="Version of this document's schema.")
    job_id: str | None = Field(None, description="Job id; null for `kinemesh run`.")
    created_at: datetime = Field(..., description="When the result was produced.")
    software: Software
    options: JobOptions
    clip: ClipInfo
    keypoint_model: KeypointModelInfo
    summary: ResultSummary
    timings: list[StageTiming]
    frames: list[FrameInfo] = Field(..., description="One entry per sampled frame, including frames with nobody.")
    tracks: list[Track] = Field(..., description="Per-person tracks.")
    body_model: BodyModelInfo | None = Field(None, description="The body model and conventions (when `body` "
                                             "was asked for).")
    kinematics_model: KinematicsModelInfo | None = Field(None, description="The biomechanical model, method and "
                                                         "conventions (when `kinematics` was asked for).")
    hand_model: HandModelInfo | None = Field(None, description="The hand keypoint model (when `hands` was asked for).")
    artifacts: list[ArtifactInfo] = Field(default_factory=list, description="Binary artifacts of the job.")


def result_json_schema() -> dict:
    """The committed JSON Schema of the result document."""
    schema = KinemeshResult.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://kinemesh.dev/schemas/result/v{RESULT_SCHEMA_VERSION}.json"
    return schema
