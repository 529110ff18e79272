"""Settings from the environment (prefix KINEMESH_), one object for gateway, worker and CLI."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_TOKEN_SECRET = "dev-only-not-secret"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KINEMESH_", env_file=None, extra="ignore")

    environment: Literal["development", "test", "production"] = Field(
        "development", description="Deployment environment; production refuses unsafe defaults."
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Job store, broker and results backend.")
    broker_url: str | None = Field(None, description="Celery broker; defaults to redis_url.")
    queue: str = Field("kinemesh.gpu", description="Celery queue the gateway sends jobs to.")
    key_prefix: str = Field("kinemesh", description="Prefix of every Redis key; lets tests share a server.")

    storage_backend: Literal["local", "s3"] = Field("local", description="Where uploads and results live.")
    storage_dir: Path = Field(Path("var/storage"), description="Root folder of the local storage backend.")
    s3_bucket: str | None = Field(None, description="Bucket of the S3-compatible backend.")
    s3_endpoint_url: str | None = Field(None, description="Endpoint of an S3-compatible store (MinIO, R2...).")
    s3_region: str | None = Field(None, description="Region of the S3 bucket.")
    s3_prefix: str = Field("kinemesh/", description="Key prefix inside the bucket.")

    max_upload_mb: float = Field(500.0, description="Uploads past this size are refused with 413.")
    max_duration_s: float = Field(600.0, description="Longest accepted clip, seconds.")
    max_pixels: int = Field(3840 * 2160, description="Largest accepted frame area (width x height).")
    max_side: int = Field(4096, description="Largest accepted frame side, pixels.")
    min_frames: int = Field(
        2, ge=1, description="Fewest decodable frames a clip needs (one frame shows no motion)."
    )

    default_target_fps: float = Field(30.0, description="Sampling rate when a job does not ask for one.")
    max_people: int = Field(4, ge=1, le=8, description="Most people per frame a job may ask for.")
    batch_frames: int = Field(16, description="Frames per batch; cancellation is checked between batches.")
    decode_threads: int = Field(0, description="PyAV decoder threads; 0 lets FFmpeg choose.")

    model_dir: Path = Field(Path("var/models"), description="Folder of the built model files.")
    bundle: str = Field("default", description="Model bundle served, a folder name under model_dir/bundle "
                        "or a path to a bundle folder.")
    refine_steps: int = Field(20, ge=0, le=200, description="2D-informed refinement steps per track (0 = off).")
    neurik_fit_iterations: int = Field(10, ge=0, le=100, description="Least-squares marker-fit steps after "
                                       "NeurIK (the kinematics stage's default ik=neurik); 0 = the network's output.")
    inference_threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads; 0 lets it choose.")
    inference_backend: Literal["onnxruntime", "triton"] = Field(
        "onnxruntime", description="Where the worker runs the bundle's graphs: in-process ONNX Runtime, or a Triton "
        "server whose model repository is the same bundle (KINEMESH_TRITON_URL).")
    triton_url: str = Field("127.0.0.1:8001", description="Triton's gRPC endpoint (host:port) for inference_backend=triton.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the worker's PyTorch work (decoding loop, refinement) and in-process ONNX Runtime "
        "run: cuda when both PyTorch and onnxruntime see a GPU (auto), else cpu; with `cuda` and no GPU the models "
        "do not load (a worker exits at start).")
    cuda_device: int = Field(0, ge=0, description="The GPU a worker uses when device is cuda (one worker process per GPU).")
    decode_rate_hz: float = Field(15.0, ge=0, description="With refinement on, pose tokens are decoded for "
                                  "keyframes at about this rate and refinement fits every frame; 0 = every frame.")
    job_ttl_s: int = Field(7 * 24 * 3600, description="How long job records and results are kept.")
    video_retention_s: int = Field(24 * 3600, description="Raw uploads are deleted this long after the job ends.")
    job_time_limit_s: int = Field(3600, description="Hard limit for one job; the visibility timeout is above it.")
    visibility_margin_s: int = Field(
        300, description="Broker visibility timeout = job_time_limit_s + this; an unacked job is redelivered after it."
    )
    max_retries: int = Field(3, description="Retries of a job after a transient fault.")
    max_attempts: int = Field(
        6, description="Starts of one job (retries and redeliveries) before it fails as `worker_lost`."
    )
    retention_sweep_s: float = Field(60.0, description="How often each worker deletes expired uploads and results.")
    max_frames: int = Field(
        36_000, description="Most sampled frames one job may process (duration x target fps); more gets 422."
    )

    api_key_pepper: str = Field(
        DEV_TOKEN_SECRET, description="Server-side secret mixed into API-key hashes; set it in production."
    )
    allow_dev_key: bool = Field(False, description="Accept the key `dev` for tenant `dev` (development only).")
    log_level: str = Field("INFO", description="Log level of gateway and worker.")

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.environment == "production":
            if self.api_key_pepper == DEV_TOKEN_SECRET:
                raise ValueError("KINEMESH_API_KEY_PEPPER must be set in production")
            if self.allow_dev_key:
                raise ValueError("KINEMESH_ALLOW_DEV_KEY must be off in production")
        if self.max_attempts <= self.max_retries:
            raise ValueError("KINEMESH_MAX_ATTEMPTS must exceed KINEMESH_MAX_RETRIES")
        if self.storage_backend == "s3" and not self.s3_bucket:
            raise ValueError("KINEMESH_S3_BUCKET is required with the s3 storage backend")
        return self

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def bundle_dir(self) -> Path:
        """The bundle folder: `bundle` itself when it is a path, else model_dir/bundle/<bundle>."""
        path = Path(self.bundle)
        return path if path.is_absolute() or len(path.parts) > 1 else self.model_dir / "bundle" / self.bundle

    @property
    def spool_dir(self) -> Path:
        """Where uploads stream to before they are probed: beside the local storage root."""
        return self.storage_dir.parent / "spool"

    @property
    def visibility_timeout_s(self) -> int:
        return self.job_time_limit_s + self.visibility_margin_s

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or self.redis_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
