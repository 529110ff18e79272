"""Typed errors, mapped once to HTTP status, gRPC code and job error code.

Every failure a client can see is a `KinemeshError` subclass. The gateway turns it into an
RFC 9457 problem document, the worker stores it on the job record; both use `code`, which is
stable and documented. `retryable` marks transient faults the worker may retry; bad input is
never retried.
"""

from __future__ import annotations

from typing import Any, ClassVar


class KinemeshError(Exception):
    """Base of every typed error."""

    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal error"
    http_status: ClassVar[int] = 500
    grpc_status: ClassVar[str] = "INTERNAL"
    retryable: ClassVar[bool] = False

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        self.detail = detail or self.title
        self.extra = extra
        super().__init__(self.detail)

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        """The RFC 9457 problem document: the one form for HTTP responses and job records."""
        doc: dict[str, Any] = {"type": f"https://kinemesh.dev/problems/{self.code}", "title": self.title,
                               "status": self.http_status, "detail": self.detail, "code": self.code,
                               **self.extra}
        if instance:
            doc["instance"] = instance
        return doc


# --- client errors -------------------------------------------------------------------------


class Unauthenticated(KinemeshError):
    code, title, http_status, grpc_status = (
        "unauthenticated", "Missing or invalid API key", 401, "UNAUTHENTICATED")


class NotFound(KinemeshError):
    code, title, http_status, grpc_status = "not_found", "Not found", 404, "NOT_FOUND"


class InvalidRequest(KinemeshError):
    code, title, http_status, grpc_status = (
        "invalid_request", "Invalid request", 422, "INVALID_ARGUMENT")


class IdempotencyKeyReused(KinemeshError):
    code, title, http_status, grpc_status = (
        "idempotency_key_reused",
        "Idempotency-Key was already used with a different request",
        422,
        "INVALID_ARGUMENT",
    )


class IdempotencyKeyInFlight(KinemeshError):
    code, title, http_status, grpc_status = (
        "idempotency_key_in_flight", "A request with this Idempotency-Key is still being processed",
        409, "ABORTED")


class JobNotFinished(KinemeshError):
    code, title, http_status, grpc_status = (
        "job_not_finished", "The job has no result yet", 409, "FAILED_PRECONDITION")


class UploadTooLarge(KinemeshError):
    code, title, http_status, grpc_status = (
        "upload_too_large", "Upload exceeds the size limit", 413, "INVALID_ARGUMENT")

    @classmethod
    def over(cls, limit_bytes: int) -> UploadTooLarge:
        return cls(f"the upload exceeds {limit_bytes / 1024 / 1024:.0f} MB", limit_bytes=limit_bytes)


class MediaError(KinemeshError):
    """The upload is not a video this service can process; never retried."""

    code, title, http_status, grpc_status = (
        "invalid_media", "Unusable media", 422, "INVALID_ARGUMENT")


class EmptyUpload(MediaError):
    code, title = "empty_upload", "The request body is empty"


class NotAVideo(MediaError):
    code, title = "not_a_video", "The upload is not a readable media container"


class NoVideoStream(MediaError):
    code, title = "no_video_stream", "The container has no video stream"


class UnsupportedCodec(MediaError):
    code, title = "unsupported_codec", "The video codec is not supported"


class NoDecodableFrames(MediaError):
    code, title = "no_decodable_frames", "No frame of the video could be decoded"


class TooFewFrames(MediaError):
    code, title = "too_few_frames", "The video has too few frames"


class TooManyFrames(MediaError):
    code, title = "too_many_frames", "The clip has more frames than one job may process"


class DurationTooLong(MediaError):
    code, title = "duration_too_long", "The video is longer than the limit"


class ResolutionTooLarge(MediaError):
    code, title = "resolution_too_large", "The video resolution is above the limit"


class JobCancelled(KinemeshError):
    code, title, http_status, grpc_status = "job_cancelled", "The job was cancelled", 409, "CANCELLED"


class JobTimedOut(KinemeshError):
    code, title, http_status, grpc_status = (
        "job_timed_out", "The job ran past the time limit", 504, "DEADLINE_EXCEEDED")


class WorkerLost(KinemeshError):
    code, title, http_status, grpc_status = (
        "worker_lost", "The job stopped its worker too many times", 500, "INTERNAL")


class ModelUnavailable(KinemeshError):
    code, title, http_status, grpc_status = (
        "model_unavailable", "A model this job needs is not available", 503, "UNAVAILABLE")


class ModelUntrained(ModelUnavailable):
    """The bundle holds the model the job asks for, but with random weights (for tests and benchmarks):
    serving it would return meaningless output. The detail and `checkpoint` say what would fix it."""

    code, title = "model_untrained", "The model this job asks for has no trained weights"


# --- transient faults ----------------------------------------------------------------------


class TransientError(KinemeshError):
    """A fault outside the job's control (storage, broker); the worker retries it."""

    code, title, http_status, grpc_status = (
        "service_unavailable", "Temporarily unavailable", 503, "UNAVAILABLE")
    retryable = True


class StorageUnavailable(TransientError):
    code, title = "storage_unavailable", "Storage is temporarily unavailable"


class InferenceUnavailable(TransientError):
    code, title = "inference_unavailable", "The inference server is temporarily unavailable"


class QueueUnavailable(TransientError):
    code, title = "queue_unavailable", "The job queue is temporarily unavailable"


def all_error_types() -> list[type[KinemeshError]]:
    """Every error class, for the README table and tests that codes are unique."""
    seen: list[type[KinemeshError]] = []
    stack: list[type[KinemeshError]] = [KinemeshError]
    while stack:
        cls = stack.pop()
        seen.append(cls)
        stack.extend(cls.__subclasses__())
    return seen
