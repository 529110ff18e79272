"""JobRunner in-process with real Redis, real storage and the real pipeline: retries, typed
failures, and a worker that survives its jobs' errors.

A storage that fails on demand stands in for an unreachable S3 (a fault this machine cannot
produce otherwise)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis
import redis.asyncio as aredis

from kinemesh.services.common.errors import StorageUnavailable
from kinemesh.services.common.jobstore import AsyncJobStore, JobStore, new_job_id
from kinemesh.services.common.schemas import ClipInfo, JobOptions, JobState
from kinemesh.services.common.settings import Settings
from kinemesh.services.common.storage import INPUT_NAME, RESULT_NAME, LocalStorage, job_key
from kinemesh.services.worker.pipeline import Pipeline
from kinemesh.services.worker.runner import JobRunner
from tests import media

pytestmark = pytest.mark.slow


class FlakyStorage(LocalStorage):
    """Local storage whose writes fail while `failures` is positive."""

    failures = 0

    def put_bytes(self, key: str, data: bytes) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise StorageUnavailable("injected: storage unreachable")
        super().put_bytes(key, data)


@pytest.fixture(scope="module")
def pipeline(model_dir: Path) -> Pipeline:
    p = Pipeline(Settings(model_dir=model_dir))
    p.warm_up()
    yield p
    p.close()


@pytest.fixture
def runner(redis_url: str, key_prefix: str, tmp_path: Path, pipeline: Pipeline) -> JobRunner:
    settings = Settings(redis_url=redis_url, key_prefix=key_prefix, storage_dir=tmp_path / "storage")
    store = JobStore(redis.Redis.from_url(redis_url, decode_responses=True), key_prefix, 3600)
    return JobRunner(settings, store, FlakyStorage(tmp_path / "storage"), pipeline, worker_name="test")


def _queue_job(runner: JobRunner, clip: Path) -> str:
    job_id = new_job_id()
    key = job_key("acme", job_id, INPUT_NAME)
    runner.storage.put_file(key, clip)
    clip_info = ClipInfo(width=1, height=1, rotation_deg=0, source_fps=1, duration_s=1, source_frames=1,
                         codec="h264", container="mp4")

    async def create() -> None:
        client = aredis.Redis.from_url(runner.settings.redis_url, decode_responses=True)
        await AsyncJobStore(client, runner.settings.key_prefix, 3600).create(
            "acme", JobOptions(target_fps=10), clip_info, key, "h", job_id)
        await client.aclose()

    asyncio.run(create())
    return job_id


def test_transient_fault_is_retried_then_succeeds(runner: JobRunner, tmp_path: Path) -> None:
    job_id = _queue_job(runner, media.make_video(tmp_path / "c.mp4", frames=8, size=(96, 96), fps=10))
    runner.storage.failures = 1
    with pytest.raises(StorageUnavailable):
        runner.process(job_id, final_attempt=False)  # the Celery task turns this into a retry
    assert runner.store.get(job_id).doc.state is JobState.running
    runner.process(job_id, final_attempt=False)
    rec = runner.store.get(job_id)
    assert rec.doc.state is JobState.succeeded and rec.doc.attempts == 2 and rec.completions == 1
    assert runner.storage.exists(job_key("acme", job_id, RESULT_NAME))


def test_transient_fault_on_the_last_attempt_fails_typed(runner: JobRunner, tmp_path: Path) -> None:
    job_id = _queue_job(runner, media.make_video(tmp_path / "c.mp4", frames=8, size=(96, 96), fps=10))
    runner.storage.failures = 10
    runner.process(job_id, final_attempt=True)
    doc = runner.store.get(job_id).doc
    assert doc.state is JobState.failed and doc.error.code == "storage_unavailable"


def test_bad_input_in_the_worker_fails_without_retry(runner: JobRunner, tmp_path: Path) -> None:
    """The worker validates again: an input that is not a video fails typed, and is never raised."""
    job_id = _queue_job(runner, media.make_random_bytes(tmp_path / "x.mp4", 5000))
    runner.process(job_id, final_attempt=False)
    doc = runner.store.get(job_id).doc
    assert doc.state is JobState.failed and doc.error.code == "not_a_video" and doc.error.status == 422


def test_unexpected_error_fails_the_job_and_the_runner_lives_on(runner: JobRunner, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = _queue_job(runner, media.make_video(tmp_path / "c.mp4", frames=8, size=(96, 96), fps=10))
    monkeypatch.setattr("kinemesh.services.worker.runner.Pipeline.run",
                        lambda *a, **k: (_ for _ in ()).throw(ZeroDivisionError("bug")))
    runner.process(job_id, final_attempt=False)
    doc = runner.store.get(job_id).doc
    assert doc.state is JobState.failed and doc.error.code == "internal_error"
    assert "ZeroDivisionError" in doc.error.detail
    monkeypatch.undo()
    next_job = _queue_job(runner, media.make_video(tmp_path / "d.mp4", frames=8, size=(96, 96), fps=10))
    runner.process(next_job)
    assert runner.store.get(next_job).doc.state is JobState.succeeded


def test_a_finished_job_is_not_run_again(runner: JobRunner, tmp_path: Path) -> None:
    job_id = _queue_job(runner, media.make_video(tmp_path / "c.mp4", frames=8, size=(96, 96), fps=10))
    runner.process(job_id)
    runner.process(job_id)  # a duplicate delivery
    rec = runner.store.get(job_id)
    assert rec.doc.attempts == 1 and rec.completions == 1


def test_retention_deletes_the_upload_then_the_results(runner: JobRunner, tmp_path: Path) -> None:
    job_id = _queue_job(runner, media.make_video(tmp_path / "c.mp4", frames=8, size=(96, 96), fps=10))
    runner.settings.video_retention_s = -1  # the upload is due as soon as the job ends
    runner.process(job_id)
    assert runner.sweep() == 1
    assert not runner.storage.exists(job_key("acme", job_id, INPUT_NAME))
    assert runner.storage.exists(job_key("acme", job_id, RESULT_NAME))
    runner.settings.job_ttl_s = -1  # now the record's lifetime ends too: results go with it
    job2 = _queue_job(runner, media.make_video(tmp_path / "d.mp4", frames=8, size=(96, 96), fps=10))
    runner.process(job2)
    runner.sweep()
    assert runner.storage.list_prefix(f"tenants/acme/jobs/{job2}/") == []


def test_a_stale_duplicate_run_never_purges_a_newer_result(runner: JobRunner, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker A is slow, the broker hands the job to worker B, which finishes first: A must
    stop quietly when it next reports, leaving B's result in place."""
    job_id = _queue_job(runner, media.make_video(tmp_path / "c.mp4", frames=40, size=(96, 96), fps=10))
    real_run = Pipeline.run
    calls = {"n": 0}

    def slow_first_run(self, path, options, ctx, **kw):
        calls["n"] += 1
        if calls["n"] == 1:  # attempt 1: before it gets anywhere, attempt 2 runs to the end
            monkeypatch.setattr(Pipeline, "run", real_run)
            runner.process(job_id)
        return real_run(self, path, options, ctx, **kw)

    monkeypatch.setattr(Pipeline, "run", slow_first_run)
    runner.process(job_id)
    rec = runner.store.get(job_id)
    assert rec.doc.state is JobState.succeeded and rec.doc.attempts == 2 and rec.completions == 1
    assert runner.storage.exists(job_key("acme", job_id, RESULT_NAME))
