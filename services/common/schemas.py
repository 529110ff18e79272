"""The wire format: every document the API accepts or returns, and the result JSON.

One module, pydantic models with descriptions. `protos/kinemesh/v1/*.proto` mirrors these.
The result JSON is versioned by `schema_version`; its JSON Schema is committed at
`services/common/result.schema.json` and checked by a test.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from kinemesh.models.landmarks import BLAZEPOSE_LANDMARKS

RESULT_SCHEMA_VERSION = 1

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


OutputName = Literal["keypoints_2d", "keypoints_3d"]


class JobOptions(_Doc):
    """What the caller asks of a job. Sent as query parameters or a multipart `options` part."""

    target_fps: float | None = Field(
        None, gt=0, le=240, description="Sampling rate in frames per second; at most the clip's own rate. "
        "Default: the server's KINEMESH_DEFAULT_TARGET_FPS."
    )
    max_people: int = Field(1, ge=1, le=8, description="Most people tracked per frame.")
    outputs: list[OutputName] = Field(
        default_factory=lambda: ["keypoints_2d", "keypoints_3d"],
        min_length=1,
        description="Which outputs the result carries.",
    )


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


class Track(_Doc):
    track_id: int = Field(..., ge=0, description="Identity persisting across frames.")
    first_frame: int = Field(..., ge=0)
    last_frame: int = Field(..., ge=0)
    frames: list[TrackFrame] = Field(..., description="Frames where this person was seen, in order.")


class KeypointModelInfo(_Doc):
    name: str = Field(..., description="Keypoint model id.")
    landmark_names: list[str] = Field(..., description="Order of the 33 landmarks.")
    source: str = Field(..., description="Where the model files came from, with licence.")


class ResultSummary(_Doc):
    frames: int = Field(..., ge=0, description="Sampled frames processed.")
    frames_with_person: int = Field(..., ge=0, description="Frames with at least one person.")
    tracks: int = Field(..., ge=0, description="Distinct person tracks.")
    seconds: float = Field(..., ge=0, description="Processing wall time of the pipeline.")


class Software(_Doc):
    name: Literal["kinemesh"] = "kinemesh"
    version: str


class KinemeshResult(_Doc):
    """The result JSON of a job (schema_version 1)."""

    schema_version: Literal[1] = Field(RESULT_SCHEMA_VERSION, description="Version of this document's schema.")
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


def result_json_schema() -> dict:
    """The committed JSON Schema of the result document."""
    schema = KinemeshResult.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://kinemesh.dev/schemas/result/v{RESULT_SCHEMA_VERSION}.json"
    return schema
