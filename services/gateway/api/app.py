"""The FastAPI application: `uvicorn kinemesh.services.gateway.api.app:create_app --factory`."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
import redis.asyncio as aredis
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from kinemesh import __version__
from kinemesh.services.common.auth import Authenticator
from kinemesh.services.common.errors import InvalidRequest, KinemeshError, NotFound, QueueUnavailable
from kinemesh.services.common.jobstore import AsyncJobStore
from kinemesh.services.common.queue import make_celery
from kinemesh.services.common.settings import Settings, get_settings
from kinemesh.services.common.storage import Storage, create_storage
from kinemesh.services.gateway.api import health, jobs
from kinemesh.services.gateway.metrics import MetricsMiddleware

log = logging.getLogger("kinemesh.gateway")

PROBLEM_JSON = "application/problem+json"


@dataclass
class Services:
    """What request handlers need, created once per process in the lifespan."""

    settings: Settings
    redis: aredis.Redis
    store: AsyncJobStore
    auth: Authenticator
    storage: Storage
    celery: object


class _HttpError(KinemeshError):
    """Framework-level HTTP errors (405, ...), passed through with their status."""

    code, title = "http_error", "HTTP error"

    def __init__(self, detail: str, status: int) -> None:
        super().__init__(detail)
        self.http_status = status  # type: ignore[misc]


SPOOL_STALE_S = 3600


def _clean_spool(spool: Path) -> None:
    """Remove uploads left by a gateway that died mid-request (old ones only: the folder is shared
    by every gateway process on this host)."""
    spool.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - SPOOL_STALE_S
    for path in spool.glob("*.upload"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except FileNotFoundError:
            pass


def problem_response(err: KinemeshError, instance: str | None = None) -> JSONResponse:
    body = err.problem(instance)
    headers = {"WWW-Authenticate": "Bearer"} if err.http_status == 401 else None
    return JSONResponse(body, status_code=err.http_status, media_type=PROBLEM_JSON, headers=headers)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        client = aredis.Redis.from_url(settings.redis_url, decode_responses=True)
        store = AsyncJobStore(client, settings.key_prefix, settings.job_ttl_s)
        app.state.services = Services(
            settings=settings,
            redis=client,
            store=store,
            auth=Authenticator(client, store.keys, settings.api_key_pepper, settings.allow_dev_key),
            storage=create_storage(settings),
            celery=make_celery(settings),
        )
        _clean_spool(settings.spool_dir)
        yield
        await client.aclose()

    app = FastAPI(
        title="kinemesh",
        version=__version__,
        summary="Video of a person in; 3D keypoints, body mesh and biomechanical kinematics out.",
        lifespan=lifespan,
        # Prometheus metrics come from our own middleware; FastAPI's OpenTelemetry hooks cost per request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.add_middleware(MetricsMiddleware)

    @app.exception_handler(KinemeshError)
    async def _typed(request: Request, exc: KinemeshError) -> JSONResponse:
        return problem_response(exc, str(request.url.path))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return problem_response(InvalidRequest("the request does not validate", errors=errors), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return problem_response(NotFound(f"no route {request.url.path}"), request.url.path)
        return problem_response(_HttpError(str(exc.detail), status=exc.status_code), request.url.path)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> Response:
        # The client went away mid-upload: nobody reads this, and it is not a server fault.
        log.info("client disconnected during %s %s", request.method, request.url.path)
        return Response(status_code=499)

    @app.exception_handler(redis.RedisError)
    async def _redis_down(request: Request, exc: redis.RedisError) -> JSONResponse:
        log.warning("Redis error on %s: %s", request.url.path, type(exc).__name__)
        return problem_response(QueueUnavailable("the job store is unreachable; retry shortly"), request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return problem_response(KinemeshError("unexpected server error; it has been logged"), request.url.path)

    app.include_router(health.router)
    app.router.routes.append(jobs.status_route)
    app.include_router(jobs.router)

    def openapi() -> dict:
        """The generated schema plus the API-key security the handlers check themselves."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary,
                                 routes=[*app.routes, jobs.status_doc_route])
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
            for path, operations in schema["paths"].items():
                if path.startswith("/v1/"):
                    for op in operations.values():
                        op["security"] = [{"bearer": []}, {"apiKey": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
