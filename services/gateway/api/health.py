"""Liveness, readiness and metrics."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Request, Response

from kinemesh.services.common.errors import KinemeshError, QueueUnavailable
from kinemesh.services.gateway.metrics import render

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> dict[str, object]:
    """Redis answers and storage is writable; 503 problem otherwise."""
    svc = request.app.state.services
    try:
        await svc.redis.ping()
    except Exception as exc:
        raise QueueUnavailable(f"Redis is unreachable: {type(exc).__name__}") from exc
    try:
        await anyio.to_thread.run_sync(svc.storage.check_writable)
    except KinemeshError:
        raise
    return {"status": "ready", "checks": {"redis": "ok", "storage": "ok"}}


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus exposition: requests, jobs by state, queue depth, stage durations."""
    svc = request.app.state.services
    try:
        states = await svc.store.state_counts()
        depth = int(await svc.redis.llen(svc.settings.queue))
        stages = await svc.store.stage_histograms()
    except Exception:  # metrics must render even when Redis is down
        states, depth, stages = {}, -1, {}
    return Response(render(states, depth, stages), media_type="text/plain; version=0.0.4; charset=utf-8")
