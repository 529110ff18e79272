"""REST v1: jobs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.routing import Route

from kinemesh.services.common.auth import Principal, extract_key
from kinemesh.services.common.bundle_check import check_bundle_dir
from kinemesh.services.common.errors import (
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InvalidRequest,
    JobNotFinished,
    NotFound,
    QueueUnavailable,
    TooManyFrames,
    UploadTooLarge,
)
from kinemesh.services.common.jobstore import (
    JobRecord,
    decode_record,
    document_json,
    event_from_record,
    new_job_id,
)
from kinemesh.services.common.media import probe
from kinemesh.services.common.queue import PROCESS_JOB_TASK
from kinemesh.services.common.schemas import ClipInfo, JobDocument, JobEvent, JobList, JobOptions, JobState
from kinemesh.services.common.storage import INPUT_NAME, RESULT_NAME, job_key, job_prefix
from kinemesh.services.gateway.upload import SpooledUpload, spool_multipart, spool_raw

router = APIRouter(prefix="/v1", tags=["jobs"])

IDEMPOTENCY_TTL_S = 24 * 3600
SSE_KEEPALIVE_S = 15.0
JSON = "application/json"


def services(request: Request):
    return request.app.state.services


async def authenticate(request: Request) -> Principal:
    """The caller's tenant from `Authorization: Bearer` or `X-API-Key`.

    Called directly rather than through FastAPI's dependency injection: the status endpoint is
    the hottest path and per-request dependency solving costs more than the check itself.
    """
    headers = request.headers
    return await services(request).auth.authenticate(
        extract_key(headers.get("authorization"), headers.get("x-api-key")))


def _doc_response(rec: JobRecord, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(rec.doc.model_dump_json(), status_code=status, media_type=JSON, headers=headers)


def _options(query: dict[str, object], form: dict[str, object]) -> JobOptions:
    merged = {**query, **form}
    if "outputs" in merged and isinstance(merged["outputs"], str):
        merged["outputs"] = [o for o in str(merged["outputs"]).split(",") if o]
    try:
        return JobOptions.model_validate(merged)
    except ValidationError as exc:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        raise InvalidRequest("invalid job options", errors=errors) from exc


def _query_options(request: Request) -> dict[str, object]:
    q = request.query_params
    out: dict[str, object] = {k: q[k] for k in ("target_fps", "max_people", "ik", "body_model") if k in q}
    if "outputs" in q:
        out["outputs"] = [o for v in q.getlist("outputs") for o in v.split(",") if o]
    unknown = set(q) - {"target_fps", "max_people", "outputs", "ik", "body_model"}
    if unknown:
        raise InvalidRequest(f"unknown query parameters: {', '.join(sorted(unknown))}")
    return out


@router.post("/jobs", status_code=202, response_model=JobDocument,
             responses={413: {"description": "Upload over the size limit"},
                        422: {"description": "Not a usable video, or invalid options"}})
async def create_job(
    request: Request,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Response:
    """Upload a clip (raw body or multipart `file` + JSON `options`) and queue a job."""
    caller = await authenticate(request)
    svc = services(request)
    settings = svc.settings
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 1024 * 1024:
        # A multipart envelope adds a little; anything this far over can be refused unread.
        raise UploadTooLarge.over(limit)
    query_opts = _query_options(request)
    spool_path = settings.spool_dir / f"{uuid.uuid4().hex}.upload"
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        upload = await spool_multipart(request.stream(), ctype, spool_path, limit)
    else:
        upload = await spool_raw(request.stream(), spool_path, limit)
    try:
        options = _options(query_opts, upload.options_json())
        if options.max_people > settings.max_people:
            raise InvalidRequest(f"max_people is at most {settings.max_people} on this server")
        if "body" in options.outputs:  # a body model this deployment cannot serve: refused before queueing
            await anyio.to_thread.run_sync(check_bundle_dir, settings.bundle_dir, options.body_model)
        return await _accept(svc, caller, upload, options, idempotency_key)
    finally:
        upload.path.unlink(missing_ok=True)


async def _accept(svc, caller: Principal, upload: SpooledUpload, options: JobOptions,
                  idempotency_key: str | None) -> Response:
    settings = svc.settings
    request_hash = hashlib.sha256(f"{upload.sha256}|{options.model_dump_json()}".encode()).hexdigest()
    job_id = new_job_id()
    if idempotency_key:
        owner = await svc.store.claim_idempotency(caller.tenant, idempotency_key, job_id, request_hash,
                                                  IDEMPOTENCY_TTL_S)
        if owner is not None:
            owner_id, owner_hash = owner
            if owner_hash != request_hash:
                raise IdempotencyKeyReused("this Idempotency-Key was used with a different video or options")
            return await _existing(svc, caller, owner_id)
    try:
        meta = await anyio.to_thread.run_sync(lambda: probe(
            upload.path, max_duration_s=settings.max_duration_s, max_pixels=settings.max_pixels,
            max_side=settings.max_side, min_frames=settings.min_frames))
        fps = min(options.target_fps or settings.default_target_fps, meta.source_fps)
        frames = int(meta.duration_s * fps)
        if frames > settings.max_frames:
            raise TooManyFrames(f"{meta.duration_s:.0f} s at {fps:g} fps is {frames} frames; one job may "
                                f"process {settings.max_frames} (lower target_fps or split the clip)",
                                frames=frames, max_frames=settings.max_frames)
        clip = ClipInfo(width=meta.width, height=meta.height, rotation_deg=meta.rotation_deg,
                        source_fps=round(meta.source_fps, 4), duration_s=round(meta.duration_s, 4),
                        source_frames=meta.source_frames, codec=meta.codec, container=meta.container,
                        size_bytes=upload.size)
        input_key = job_key(caller.tenant, job_id, INPUT_NAME)
        await anyio.to_thread.run_sync(svc.storage.put_file, input_key, upload.path)
        rec = await svc.store.create(caller.tenant, options, clip, input_key, request_hash, job_id,
                                     idempotency_key)
        try:
            await anyio.to_thread.run_sync(
                lambda: svc.celery.send_task(PROCESS_JOB_TASK, args=[job_id], queue=settings.queue))
        except Exception as exc:
            await svc.store.delete(job_id, caller.tenant)
            raise QueueUnavailable(f"could not queue the job: {type(exc).__name__}") from exc
    except BaseException:
        if idempotency_key:
            await svc.store.release_idempotency(caller.tenant, idempotency_key, job_id)
        await anyio.to_thread.run_sync(svc.storage.delete_prefix, job_prefix(caller.tenant, job_id))
        raise
    return _doc_response(rec, 202, {"Location": f"/v1/jobs/{job_id}"})


async def _existing(svc, caller: Principal, job_id: str) -> Response:
    """The job an Idempotency-Key already made; waits briefly if that request is still uploading."""
    for _ in range(50):
        try:
            rec = await svc.store.get(job_id, caller.tenant)
            return _doc_response(rec, 202, {"Location": f"/v1/jobs/{job_id}", "Idempotent-Replayed": "true"})
        except NotFound:
            await asyncio.sleep(0.1)
    raise IdempotencyKeyInFlight("a request with this Idempotency-Key is still being processed; retry shortly")


@router.get("/jobs", response_model=JobList)
async def list_jobs(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: str | None = None,
) -> Response:
    """The caller's jobs, newest first, paginated with an opaque cursor."""
    caller = await authenticate(request)
    before = None
    if cursor:
        try:
            before = float(base64.urlsafe_b64decode(cursor.encode()).decode())
        except ValueError as exc:
            raise InvalidRequest("invalid cursor") from exc
        if not math.isfinite(before):
            raise InvalidRequest("invalid cursor")
    records, nxt = await services(request).store.list(caller.tenant, limit, before)
    next_cursor = base64.urlsafe_b64encode(repr(nxt).encode()).decode() if nxt is not None else None
    body = JobList(items=[r.doc for r in records], next_cursor=next_cursor)
    return Response(body.model_dump_json(), media_type=JSON)


async def get_job(request: Request) -> Response:
    """State, stage, progress, timestamps and error of one job.

    The status endpoint is what clients poll, so it is a plain Starlette route (registered in
    app.py) that renders the document straight from the Redis hash; `status_doc_route`
    describes it in the OpenAPI document.
    """
    caller = await authenticate(request)
    raw = await services(request).store.get_raw(request.path_params["job_id"], caller.tenant)
    return Response(document_json(raw), media_type=JSON)


class _PlainRoute(Route):
    """A Starlette route that records itself in the scope (FastAPI's router only does so for its
    own routes), so metrics label it by its template."""

    async def handle(self, scope, receive, send) -> None:  # noqa: ANN001 - ASGI signature
        scope["route"] = self
        await super().handle(scope, receive, send)


status_route = _PlainRoute("/v1/jobs/{job_id}", get_job, methods=["GET"], name="get_job")


async def _get_job_documented(request: Request, job_id: str) -> Response:
    """State, stage, progress, timestamps, attempts, stage timings and typed error of one job."""
    return await get_job(request)


status_doc_route = APIRoute("/v1/jobs/{job_id}", _get_job_documented, methods=["GET"],
                            response_model=JobDocument, name="get_job", tags=["jobs"])


@router.get("/jobs/{job_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def job_events(request: Request, job_id: str) -> StreamingResponse:
    """Server-sent events (`event: progress`, JSON data = JobEvent) until the job ends."""
    caller = await authenticate(request)
    svc = services(request)
    await svc.store.get(job_id, caller.tenant)  # 404 before the stream starts

    async def stream() -> AsyncIterator[bytes]:
        pubsub = svc.redis.pubsub()
        await pubsub.subscribe(svc.store.keys.channel(job_id))
        try:
            # Read after subscribing, so no change between the two is missed.
            raw = await svc.store.get_raw(job_id, caller.tenant)
            ev, seen = event_from_record(decode_record(raw)), int(raw.get("seq") or 0)
            yield _sse(ev, seen)
            while not ev.state.terminal:
                if await request.is_disconnected():
                    return
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=SSE_KEEPALIVE_S)
                if msg is None:
                    try:  # quiet for a while: re-read (also notices an expired or deleted job)
                        raw = await svc.store.get_raw(job_id, caller.tenant)
                    except NotFound:
                        return
                    yield b": keepalive\n\n"
                    if int(raw.get("seq") or 0) > seen:
                        ev, seen = event_from_record(decode_record(raw)), int(raw.get("seq") or 0)
                        yield _sse(ev, seen)
                    continue
                data = json.loads(msg["data"])
                if int(data.get("seq") or 0) <= seen:
                    continue  # published before the snapshot we already sent
                seen = int(data["seq"])
                ev = JobEvent.model_validate({k: v for k, v in data.items() if k != "seq"})
                yield _sse(ev, seen)
        finally:
            await pubsub.unsubscribe()
            await pubsub.aclose()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _sse(ev: JobEvent, seq: int) -> bytes:
    """One SSE frame; `id` is the record's change counter, increasing with every change."""
    name = "end" if ev.state.terminal else "progress"
    return f"id: {seq}\nevent: {name}\ndata: {ev.model_dump_json()}\n\n".encode()


async def _require_succeeded(svc, job_id: str, caller: Principal) -> JobRecord:
    rec = await svc.store.get(job_id, caller.tenant)
    if rec.doc.state is not JobState.succeeded:
        raise JobNotFinished(f"job {job_id} is {rec.doc.state.value}", state=rec.doc.state.value)
    return rec


@router.get("/jobs/{job_id}/result", responses={200: {"content": {JSON: {}}}, 409: {}})
async def get_result(request: Request, job_id: str) -> Response:
    """The result JSON (see `kinemesh schema`)."""
    caller = await authenticate(request)
    svc = services(request)
    rec = await _require_succeeded(svc, job_id, caller)
    return await _stream_object(svc, job_key(rec.tenant, job_id, RESULT_NAME), JSON)


@router.get("/jobs/{job_id}/artifacts/{name}")
async def get_artifact(request: Request, job_id: str, name: str) -> StreamingResponse:
    """A binary artifact named in the job document's `artifacts`."""
    caller = await authenticate(request)
    svc = services(request)
    rec = await _require_succeeded(svc, job_id, caller)
    if name not in rec.doc.artifacts:
        raise NotFound(f"job {job_id} has no artifact {name!r}")
    media = "application/zip" if name.endswith(".npz") else "application/octet-stream"
    return await _stream_object(svc, job_key(rec.tenant, job_id, name), media,
                                {"Content-Disposition": f'attachment; filename="{Path(name).name}"'})


async def _stream_object(svc, key: str, media_type: str, headers: dict[str, str] | None = None) -> StreamingResponse:
    """Stream a stored object in chunks read off the event loop; never the whole object in memory."""
    size = await anyio.to_thread.run_sync(svc.storage.size, key)
    chunks = svc.storage.iter_chunks(key)

    async def body() -> AsyncIterator[bytes]:
        try:
            while (chunk := await anyio.to_thread.run_sync(next, chunks, None)) is not None:
                yield chunk
        finally:
            chunks.close()  # releases the file or the S3 connection if the client left early

    return StreamingResponse(body(), media_type=media_type,
                             headers={"Content-Length": str(size), **(headers or {})})


@router.delete("/jobs/{job_id}", status_code=202, responses={204: {"description": "Deleted"}})
async def delete_job(request: Request, job_id: str) -> Response:
    """Cancel a queued or running job and purge its video and results.

    An active job stays visible as `cancelled` (202); a finished one is deleted whole (204).
    """
    caller = await authenticate(request)
    svc = services(request)
    prev = await svc.store.cancel(job_id, caller.tenant)
    await anyio.to_thread.run_sync(svc.storage.delete_prefix, job_prefix(caller.tenant, job_id))
    if prev is not None and not prev.terminal:
        return _doc_response(await svc.store.get(job_id, caller.tenant), 202)
    await svc.store.delete(job_id, caller.tenant)
    return Response(status_code=204)
