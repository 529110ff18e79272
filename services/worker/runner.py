"""Runs one job inside a worker: state transitions, progress, storage, errors, retention.

The Celery task only calls `JobRunner.process(job_id)`. Each start of a job is an attempt with
a number; progress and the final transition are accepted only from the attempt that owns the
job, so a stale duplicate delivery stops quietly instead of overwriting or purging a newer
run's results. Outputs are keyed by job id and written before the job is marked succeeded,
so a redelivered job (after a worker died) overwrites the same objects and the `succeeded`
transition happens exactly once.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from functools import lru_cache

import redis

from kinemesh.services.common.errors import (
    JobCancelled,
    JobTimedOut,
    KinemeshError,
    QueueUnavailable,
    WorkerLost,
)
from kinemesh.services.common.jobstore import JobStore, error_fields
from kinemesh.services.common.schemas import JobState
from kinemesh.services.common.settings import Settings, get_settings
from kinemesh.services.common.storage import RESULT_NAME, Storage, create_storage, job_key, job_prefix
from kinemesh.services.worker.pipeline import Pipeline

log = logging.getLogger("kinemesh.worker")

STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)


class Superseded(Exception):
    """Another attempt owns this job now (a duplicate delivery): stop without touching it."""


def _stop_for(state: str | None, job_id: str) -> Exception:
    if state in (None, JobState.cancelled.value):
        return JobCancelled(f"job {job_id} was {'deleted' if state is None else 'cancelled'}")
    return Superseded(f"job {job_id} is {state} under another attempt")


class JobContext:
    """StageContext bound to one attempt: progress into Redis, cancellation and deadline checks."""

    def __init__(self, store: JobStore, job_id: str, attempt: int, deadline: float,
                 min_interval_s: float = 0.2) -> None:
        self.store = store
        self.job_id = job_id
        self.attempt = attempt
        self.deadline = deadline
        self.min_interval_s = min_interval_s
        self._last: tuple[str, float] = ("", 0.0)

    def progress(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        if stage == self._last[0] and now - self._last[1] < self.min_interval_s and fraction < 1.0:
            return
        self._last = (stage, now)
        state = self.store.progress(self.job_id, self.attempt, stage, fraction)
        if state != JobState.running.value:
            raise _stop_for(state, self.job_id)

    def check_cancelled(self) -> None:
        if time.monotonic() > self.deadline:
            raise JobTimedOut("the job ran past KINEMESH_JOB_TIME_LIMIT_S")
        state = self.store.current(self.job_id, self.attempt)
        if state != JobState.running.value:
            raise _stop_for(state, self.job_id)


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
        """Run the job; returns normally for every outcome except a transient fault to retry.

        Redis faults surface as QueueUnavailable (transient): the task retries them.
        """
        try:
            self._process(job_id, final_attempt)
        except redis.RedisError as exc:
            raise QueueUnavailable(f"Redis error while running job {job_id}: {type(exc).__name__}") from exc

    def _process(self, job_id: str, final_attempt: bool) -> None:
        lost = WorkerLost(f"the job was started {self.settings.max_attempts} times and never finished; "
                          "its input may crash the worker", attempts=self.settings.max_attempts)
        prev, attempt = self.store.start(job_id, self.worker_name, self.settings.max_attempts, lost)
        if attempt == 0:
            log.info("job %s is %s; nothing to do", job_id, prev or "gone")
            return
        if prev == JobState.running.value:
            log.warning("job %s started again (attempt %d) after a retry or a lost worker", job_id, attempt)
        record = self.store.get(job_id)
        ctx = JobContext(self.store, job_id, attempt, time.monotonic() + self.settings.job_time_limit_s)
        try:
            with self.storage.open_local(record.input_key) as video_path:
                size = video_path.stat().st_size
                out = self.pipeline.run(video_path, record.doc.options, ctx, job_id=job_id, size_bytes=size)
            ctx.check_cancelled()
            for name, data in out.artifacts.items():
                self.storage.put_bytes(job_key(record.tenant, job_id, name), data)
            self.storage.put_bytes(job_key(record.tenant, job_id, RESULT_NAME),
                                   out.result.model_dump_json(exclude_none=True).encode())
            before = self.store.finish(job_id, JobState.succeeded, {
                "stage": "done", "progress": "1",
                "timings": json.dumps([t.model_dump() for t in out.result.timings]),
                "artifacts": json.dumps(sorted(out.artifacts)),
            }, attempt)
            if before != JobState.running.value:
                raise _stop_for(before, job_id)
            for t in out.result.timings:
                self.store.observe_stage(t.stage, t.seconds, STAGE_BUCKETS)
            self._schedule_retention(record.tenant, job_id, record.input_key)
        except Superseded as why:
            log.info("%s; this run stops", why)
        except JobCancelled as why:
            log.info("%s; stopping and purging", why)
            self._purge(record.tenant, job_id)
        except KinemeshError as err:
            if err.retryable and not final_attempt:
                raise
            log.info("job %s failed: %s (%s)", job_id, err.code, err.detail)
            self._fail(record.tenant, job_id, record.input_key, attempt, err)
        except redis.RedisError:
            raise
        except Exception as exc:  # a bug: record it, keep the worker alive
            log.exception("job %s crashed", job_id)
            err = KinemeshError(f"unexpected {type(exc).__name__} in the worker; the team has the traceback")
            self._fail(record.tenant, job_id, record.input_key, attempt, err)

    def _fail(self, tenant: str, job_id: str, input_key: str, attempt: int, err: KinemeshError) -> None:
        before = self.store.finish(job_id, JobState.failed, error_fields(err), attempt)
        if before in (None, JobState.cancelled.value):
            self._purge(tenant, job_id)
        elif before == JobState.running.value:
            self._schedule_retention(tenant, job_id, input_key)

    def _schedule_retention(self, tenant: str, job_id: str, input_key: str) -> None:
        self.store.schedule_deletion(input_key, self.settings.video_retention_s)
        self.store.schedule_deletion(job_prefix(tenant, job_id), self.settings.job_ttl_s)

    def _purge(self, tenant: str, job_id: str) -> None:
        self.storage.delete_prefix(job_prefix(tenant, job_id))

    def sweep(self) -> int:
        """Delete what retention says is due: raw uploads, then whole jobs once their record expired."""
        done = 0
        for key in self.store.due_deletions():
            try:
                if key.endswith("/"):
                    self.storage.delete_prefix(key)
                else:
                    self.storage.delete(key)
            except KinemeshError as err:
                log.warning("could not delete %s (%s); will try again", key, err.code)
                continue
            self.store.deleted(key)
            done += 1
        return done


class RetentionSweeper(threading.Thread):
    """Runs `JobRunner.sweep` every `interval_s` in the worker process, idle or busy."""

    def __init__(self, runner: JobRunner, interval_s: float) -> None:
        super().__init__(name="kinemesh-retention", daemon=True)
        self.runner = runner
        self.interval_s = interval_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                self.runner.sweep()
            except Exception:  # Redis down: try again next round
                log.warning("retention sweep failed", exc_info=True)


@lru_cache(maxsize=1)
def get_runner() -> JobRunner:
    settings = get_settings()
    return JobRunner(
        settings,
        JobStore.from_url(settings.redis_url, settings.key_prefix, settings.job_ttl_s),
        create_storage(settings),
        Pipeline(settings),
    )
