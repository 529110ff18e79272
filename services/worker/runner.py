"""Runs one job inside a worker: state transitions, progress, storage, errors.

The Celery task only calls `JobRunner.process(job_id)`. Outputs are keyed by job id and
written before the job is marked succeeded, so a redelivered job (after a worker died)
overwrites the same objects and the `succeeded` transition happens exactly once.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from functools import lru_cache

from kinemesh.services.common.errors import (
    JobCancelled,
    JobTimedOut,
    KinemeshError,
)
from kinemesh.services.common.jobstore import JobStore, error_fields
from kinemesh.services.common.schemas import JobState
from kinemesh.services.common.settings import Settings, get_settings
from kinemesh.services.common.storage import RESULT_NAME, Storage, create_storage, job_key, job_prefix
from kinemesh.services.worker.pipeline import Pipeline

log = logging.getLogger("kinemesh.worker")

STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)


class JobContext:
    """StageContext bound to one job: progress into Redis, cancellation and deadline checks."""

    def __init__(self, store: JobStore, job_id: str, deadline: float, min_interval_s: float = 0.2) -> None:
        self.store = store
        self.job_id = job_id
        self.deadline = deadline
        self.min_interval_s = min_interval_s
        self._last: tuple[str, float] = ("", 0.0)

    def progress(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        if stage == self._last[0] and now - self._last[1] < self.min_interval_s and fraction < 1.0:
            return
        self._last = (stage, now)
        state = self.store.progress(self.job_id, stage, fraction)
        if state is not JobState.running:
            raise JobCancelled(f"job {self.job_id} is {state.value if state else 'gone'}")

    def check_cancelled(self) -> None:
        if time.monotonic() > self.deadline:
            raise JobTimedOut("the job ran past KINEMESH_JOB_TIME_LIMIT_S")
        state = self.store.state(self.job_id)
        if state is not JobState.running:
            raise JobCancelled(f"job {self.job_id} is {state.value if state else 'gone'}")


class JobRunner:
    def __init__(self, settings: Settings, store: JobStore, storage: Storage, pipeline: Pipeline,
                 worker_name: str | None = None) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.pipeline = pipeline
        self.worker_name = worker_name or f"{socket.gethostname()}:{os.getpid()}"

    def warm_up(self) -> None:
        t0 = time.perf_counter()
        self.pipeline.warm_up()
        log.info("models loaded in %.2f s", time.perf_counter() - t0)

    def announce_ready(self) -> None:
        """Record in Redis that this process has its models loaded (used by health checks and tests)."""
        self.store.r.set(self.store.keys.worker_ready(os.getpid()), self.worker_name, ex=24 * 3600)

    def process(self, job_id: str, final_attempt: bool = True) -> None:
        """Run the job; returns normally for every outcome except a transient error to retry."""
        prev = self.store.start(job_id, self.worker_name)
        if prev is None or prev.terminal:
            log.info("job %s is %s; nothing to do", job_id, prev.value if prev else "gone")
            return
        if prev is JobState.running:
            log.warning("job %s redelivered (a worker stopped mid-job); running it again", job_id)
        record = self.store.get(job_id)
        ctx = JobContext(self.store, job_id, time.monotonic() + self.settings.job_time_limit_s)
        try:
            with self.storage.open_local(record.input_key) as video_path:
                size = video_path.stat().st_size
                out = self.pipeline.run(video_path, record.doc.options, ctx, job_id=job_id, size_bytes=size)
            for name, data in out.artifacts.items():
                self.storage.put_bytes(job_key(record.tenant, job_id, name), data)
            self.storage.put_bytes(job_key(record.tenant, job_id, RESULT_NAME),
                                   out.result.model_dump_json(exclude_none=True).encode())
            timings = [t.model_dump() for t in out.result.timings]
            for t in out.result.timings:
                self.store.observe_stage(t.stage, t.seconds, STAGE_BUCKETS)
            before = self.store.finish(job_id, JobState.succeeded, {
                "stage": "done", "progress": "1", "timings": json.dumps(timings),
                "artifacts": json.dumps(sorted(out.artifacts)),
            })
            if before is not JobState.running:  # cancelled while we wrote the outputs
                self._purge(record.tenant, job_id)
            else:
                self.store.schedule_input_deletion(record.input_key, self.settings.video_retention_s)
        except JobCancelled:
            log.info("job %s cancelled; stopping", job_id)
            self._purge(record.tenant, job_id)
        except KinemeshError as err:
            if err.retryable and not final_attempt:
                self.store.progress(job_id, "retrying", 0.0)
                raise
            log.info("job %s failed: %s (%s)", job_id, err.code, err.detail)
            self.store.finish(job_id, JobState.failed, error_fields(err))
            self.store.schedule_input_deletion(record.input_key, self.settings.video_retention_s)
        except Exception as exc:  # a bug: record it, keep the worker alive
            log.exception("job %s crashed", job_id)
            err = KinemeshError(f"unexpected {type(exc).__name__} in the worker; the team has the traceback")
            self.store.finish(job_id, JobState.failed, error_fields(err))
            self.store.schedule_input_deletion(record.input_key, self.settings.video_retention_s)
        finally:
            self.sweep_inputs()

    def _purge(self, tenant: str, job_id: str) -> None:
        self.storage.delete_prefix(job_prefix(tenant, job_id))

    def sweep_inputs(self) -> None:
        """Delete uploads whose retention has passed (any worker may do it; deleting twice is harmless)."""
        for key in self.store.due_input_deletions():
            try:
                self.storage.delete(key)
            except KinemeshError:
                log.warning("could not delete expired input %s; will retry", key)
                self.store.schedule_input_deletion(key, 60)


@lru_cache(maxsize=1)
def get_runner() -> JobRunner:
    settings = get_settings()
    return JobRunner(
        settings,
        JobStore.from_url(settings.redis_url, settings.key_prefix, settings.job_ttl_s),
        create_storage(settings),
        Pipeline(settings),
    )
