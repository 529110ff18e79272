"""Job records on a real Redis: transitions, races, listing, idempotency, counters."""

from __future__ import annotations

import asyncio
import threading

import pytest
import redis
import redis.asyncio as aredis

from kinemesh.services.common.errors import NotFound, UnsupportedCodec, WorkerLost
from kinemesh.services.common.jobstore import SUPERSEDED, AsyncJobStore, JobStore, error_fields, new_job_id
from kinemesh.services.common.schemas import ClipInfo, JobOptions, JobState

CLIP = ClipInfo(width=640, height=480, rotation_deg=0, source_fps=30, duration_s=1.0, source_frames=30,
                codec="h264", container="mov,mp4")


LOST = WorkerLost("lost")


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def stores(redis_url: str, key_prefix: str):
    sync = JobStore(redis.Redis.from_url(redis_url, decode_responses=True), key_prefix, 3600)

    def make_async() -> AsyncJobStore:
        return AsyncJobStore(aredis.Redis.from_url(redis_url, decode_responses=True), key_prefix, 3600)

    return sync, make_async


def _create(make_async, tenant: str = "acme") -> str:
    async def go() -> str:
        store = make_async()
        job_id = new_job_id()
        await store.create(tenant, JobOptions(), CLIP, f"tenants/{tenant}/jobs/{job_id}/input.video", "h", job_id)
        await store.r.aclose()
        return job_id

    return run(go())


def test_lifecycle_and_counters(stores) -> None:
    sync, make_async = stores
    job_id = _create(make_async)
    assert sync.get(job_id).doc.state is JobState.queued
    assert sync.start(job_id, "w1", 3, LOST) == ("queued", 1)
    assert sync.progress(job_id, 1, "keypoints", 0.5) == "running"
    doc = sync.get(job_id).doc
    assert (doc.state, doc.stage, doc.progress, doc.attempts) == (JobState.running, "keypoints", 0.5, 1)
    assert sync.finish(job_id, JobState.succeeded, {"stage": "done"}, 1) == "running"
    rec = sync.get(job_id)
    assert rec.doc.state is JobState.succeeded and rec.completions == 1
    assert rec.doc.result_url == f"/v1/jobs/{job_id}/result"
    assert rec.doc.finished_at >= rec.doc.started_at >= rec.doc.created_at
    # a second finish (a redelivered duplicate) changes nothing
    assert sync.finish(job_id, JobState.succeeded, {}, 1) == "succeeded"
    assert sync.get(job_id).completions == 1
    counts = run(make_async().state_counts())
    assert counts.get("succeeded") == 1 and counts.get("running", 0) == 0 and counts.get("queued", 0) == 0


def test_redelivery_restarts_a_running_job_and_cuts_off_the_stale_attempt(stores) -> None:
    sync, make_async = stores
    job_id = _create(make_async)
    sync.start(job_id, "w1", 3, LOST)
    assert sync.start(job_id, "w2", 3, LOST) == ("running", 2)  # the first worker was presumed dead
    assert sync.get(job_id).doc.attempts == 2
    # the first worker was only slow: it may neither report nor finish any more
    assert sync.progress(job_id, 1, "keypoints", 0.9) == SUPERSEDED
    assert sync.current(job_id, 1) == SUPERSEDED and sync.current(job_id, 2) == "running"
    assert sync.finish(job_id, JobState.succeeded, {}, 1) == SUPERSEDED
    assert sync.finish(job_id, JobState.succeeded, {}, 2) == "running"
    assert sync.get(job_id).completions == 1


def test_a_job_that_keeps_losing_its_worker_fails_typed(stores) -> None:
    sync, make_async = stores
    job_id = _create(make_async)
    assert [sync.start(job_id, "w", 2, LOST)[1] for _ in range(3)] == [1, 2, 0]
    doc = sync.get(job_id).doc
    assert doc.state is JobState.failed and doc.error.code == "worker_lost"
    assert run(make_async().state_counts()).get("running", 0) == 0


def test_cancel_beats_a_late_finish_exactly_once(stores) -> None:
    sync, make_async = stores
    job_id = _create(make_async)
    sync.start(job_id, "w1", 3, LOST)
    results: list = []

    def finisher() -> None:
        results.append(sync.finish(job_id, JobState.succeeded, {}, 1))

    async def canceller() -> None:
        results.append(await make_async().cancel(job_id, "acme"))

    t = threading.Thread(target=finisher)
    t.start()
    run(canceller())
    t.join()
    final = sync.get(job_id).doc.state
    assert sum(1 for r in results if r == "running") == 1, "exactly one transition wins"
    assert final in (JobState.succeeded, JobState.cancelled)
    assert sync.progress(job_id, 1, "keypoints", 0.9) == final.value  # a terminal job takes no progress


def test_failure_is_stored_as_a_problem(stores) -> None:
    sync, make_async = stores
    job_id = _create(make_async)
    sync.start(job_id, "w1", 3, LOST)
    sync.finish(job_id, JobState.failed, error_fields(UnsupportedCodec("theora is not supported")), 1)
    err = sync.get(job_id).doc.error
    assert err.code == "unsupported_codec" and err.status == 422 and "theora" in err.detail


def test_tenants_never_see_each_other(stores) -> None:
    _, make_async = stores
    job_id = _create(make_async, "acme")

    async def go() -> None:
        store = make_async()
        assert (await store.get(job_id, "acme")).doc.id == job_id
        with pytest.raises(NotFound):
            await store.get(job_id, "globex")
        with pytest.raises(NotFound):
            await store.cancel(job_id, "globex")
        items, _ = await store.list("globex", 10, None)
        assert items == []

    run(go())


def test_listing_pages_newest_first(stores) -> None:
    _, make_async = stores
    ids = [_create(make_async) for _ in range(5)]

    async def go() -> list[str]:
        store = make_async()
        seen, cursor = [], None
        while True:
            items, cursor = await store.list("acme", 2, cursor)
            seen += [r.doc.id for r in items]
            if cursor is None:
                return seen

    assert run(go()) == list(reversed(ids))


def test_idempotency_claims(stores) -> None:
    _, make_async = stores

    async def go() -> None:
        store = make_async()
        assert await store.claim_idempotency("acme", "k1", "job-a", "hash-a", 60) is None
        assert await store.claim_idempotency("acme", "k1", "job-b", "hash-b", 60) == ("job-a", "hash-a")
        assert await store.claim_idempotency("globex", "k1", "job-c", "hash-c", 60) is None  # per tenant
        await store.release_idempotency("acme", "k1", "job-b")  # not the owner: no effect
        assert await store.claim_idempotency("acme", "k1", "job-d", "x", 60) == ("job-a", "hash-a")
        await store.release_idempotency("acme", "k1", "job-a")
        assert await store.claim_idempotency("acme", "k1", "job-e", "x", 60) is None

    run(go())


def test_retention_queue(stores) -> None:
    sync, _ = stores
    sync.schedule_deletion("tenants/a/jobs/1/input.video", -1)
    sync.schedule_deletion("tenants/a/jobs/2/input.video", 3600)
    assert sync.due_deletions() == ["tenants/a/jobs/1/input.video"]
    assert sync.due_deletions() == ["tenants/a/jobs/1/input.video"], "due until confirmed deleted"
    sync.deleted("tenants/a/jobs/1/input.video")
    assert sync.due_deletions() == []


def test_delete_releases_counters_and_the_idempotency_key(stores) -> None:
    _, make_async = stores

    async def go() -> None:
        store = make_async()
        job_id = new_job_id()
        assert await store.claim_idempotency("acme", "k", job_id, "h", 60) is None
        await store.create("acme", JobOptions(), CLIP, "x", "h", job_id, idempotency_key="k")
        assert (await store.state_counts())["queued"] == 1
        await store.delete(job_id, "acme")
        assert (await store.state_counts())["queued"] == 0
        assert await store.claim_idempotency("acme", "k", "other", "h2", 60) is None

    run(go())


def test_fast_status_json_equals_the_validated_document(stores) -> None:
    """GET /v1/jobs/{id} renders straight from the hash; it must say exactly what the model says."""
    from kinemesh.services.common.jobstore import document_json
    from kinemesh.services.common.schemas import JobDocument

    sync, make_async = stores
    job_id = _create(make_async)
    states = []
    for step in ("queued", "started", "progress", "failed"):
        if step == "started":
            sync.start(job_id, "w1", 3, LOST)
        elif step == "progress":
            sync.progress(job_id, 1, "keypoints", 0.25)
        elif step == "failed":
            sync.finish(job_id, JobState.failed,
                        {**error_fields(UnsupportedCodec("x")), "timings": '[{"stage":"decode","seconds":0.5}]'}, 1)
        raw = sync.r.hgetall(sync.keys.job(job_id))
        assert JobDocument.model_validate_json(document_json(raw)) == sync.get(job_id).doc
        states.append(sync.get(job_id).doc.state)
    assert states == [JobState.queued, JobState.running, JobState.running, JobState.failed]
